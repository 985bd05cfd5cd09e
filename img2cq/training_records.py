"""What a training run writes besides the model: resumable checkpoints and the run log.

A checkpoint (``OUTPUT_DIR/checkpoints/step-N/``) is accelerate's state (model, optimiser,
scheduler, RNG) plus ``trainer_state.json``, the loop's position (``TrainState``); it is written to
a temporary folder and renamed into place, so ``kill -9`` at any moment leaves the previous one
intact. The run log (``OUTPUT_DIR/logs/``) is train_log.csv, TensorBoard events and train.log.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

logger = logging.getLogger(__name__)  # its lines go to train.log only


# ---------------------------------------------------------------------------------------------
# Checkpoints

@dataclass
class TrainState:
    """Where the loop is; saved as trainer_state.json in every checkpoint."""

    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    best_metric: float | None = None   # eval IoU, or -eval loss without IoU
    stream_next_index: int = 0         # --stream: first draw a resumed run may use
    train_seconds: float = 0.0         # loop time summed over this run and the runs it resumes
    train_cpu_seconds: float = 0.0     # CPU time of the training process (all its threads), summed likewise:
                                       # unlike the wall time, none passes while the run is paused (SIGSTOP)

    @classmethod
    def load(cls, checkpoint: Path) -> TrainState:
        saved = json.loads((checkpoint / "trainer_state.json").read_text())
        return cls(**{f.name: saved[f.name] for f in fields(cls) if f.name in saved})


def find_checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints under ``out/checkpoints``, oldest first."""
    found = [p for p in (out / "checkpoints").glob("step-*") if p.is_dir() and (p / "trainer_state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def save_checkpoint(accelerator, out: Path, state: TrainState, keep: int, stream=None) -> Path:
    """Write a resumable state atomically: temporary folder, then rename, then prune old ones.

    For a stream (``img2cq.training.StreamDataset``), the state records the furthest draw index any
    process reached.
    """
    if stream is not None:
        reached = accelerator.gather(torch.tensor([stream.next_index], device=accelerator.device))
        state.stream_next_index = int(reached.max())
    final = out / "checkpoints" / f"step-{state.step}"
    tmp = out / "checkpoints" / f".tmp-step-{state.step}"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=False)
    if accelerator.is_main_process:
        (tmp / "trainer_state.json").write_text(json.dumps(asdict(state), indent=2))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in find_checkpoints(out)[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


# ---------------------------------------------------------------------------------------------
# Logging

class RunLog:
    """One row per logging step in logs/train_log.csv, the same scalars in TensorBoard and train.log."""

    FIELDS = ["step", "epoch", "loss", "lr", "samples_per_s", "eval_loss", "eval_vsr", "eval_iou", "elapsed_s"]

    def __init__(self, out: Path, enabled: bool):
        self.enabled, self.started = enabled, time.time()
        if not enabled:
            return
        logs = out / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self.csv_path = logs / "train_log.csv"
        new = not self.csv_path.exists()
        self.csv_file = open(self.csv_path, "a", newline="")
        self.writer = csv.DictWriter(self.csv_file, fieldnames=self.FIELDS)
        if new:
            self.writer.writeheader()
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(logs / "tensorboard"))
        self.handler = logging.FileHandler(logs / "train.log")
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        logger.addHandler(self.handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False  # train.log only: the console shows the progress bar

    def write(self, state: TrainState, values: dict) -> None:
        if not self.enabled or not values:
            return
        row = {"step": state.step, "epoch": state.epoch, **values, "elapsed_s": round(time.time() - self.started, 1)}
        self.writer.writerow({k: row.get(k, "") for k in self.FIELDS})
        self.csv_file.flush()
        for k, v in row.items():
            if k not in ("step", "epoch") and isinstance(v, (int, float)):
                self.tb.add_scalar(k, v, row["step"])
        self.tb.flush()
        logger.info(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))

    def info(self, message: str, *args) -> None:
        """A line in train.log (from the main process)."""
        if self.enabled:
            logger.info(message, *args)

    def close(self) -> None:
        if self.enabled:
            self.csv_file.close()
            self.tb.close()
            logger.removeHandler(self.handler)
            self.handler.close()
