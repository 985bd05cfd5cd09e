"""The training loop shared by train_vision_encoder_decoder.py (basic) and enhanced_train.py.

Read top to bottom: arguments -> data -> model -> optimiser -> loop (log, evaluate, checkpoint) ->
final ``save_pretrained`` into ``--output-dir``. ``accelerate`` handles devices, mixed precision and
multi-GPU (``accelerate launch enhanced_train.py ...``) without code changes.

Output directory layout:

    OUTPUT_DIR/                  final model (load with img2cq.modeling.load_pretrained)
    OUTPUT_DIR/best/             best model by eval IoU (or eval loss when IoU is not computed)
    OUTPUT_DIR/checkpoints/      step-N/ resumable states (model, optimiser, scheduler, RNG, step)
    OUTPUT_DIR/logs/             train_log.csv, TensorBoard events, train.log

A checkpoint is written to a temporary folder and renamed into place, so ``kill -9`` at any moment
leaves the previous checkpoint intact and ``--resume`` loses at most ``--save-steps`` steps.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import platform
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter
from torch.utils.data import DataLoader, IterableDataset, Subset
from tqdm.auto import tqdm

from img2cq.framing import frame_silhouette
from img2cq.modeling import MAX_PROGRAM_TOKENS, build_model, build_pretrained, count_parameters, save_pretrained
from img2cq.tokenizer import encode_program

logger = logging.getLogger("img2cq.training")
DOWNLOAD_HINT = "python scripts/download_hf_dataset.py --source synthetic --out data"


class TrainingError(ValueError):
    """Bad arguments or inputs: reported as one line by the scripts."""


@dataclass
class TrainingArguments:
    output_dir: str = "models/basic"
    train_json: str = "data/train.jsonl"
    eval_json: str | None = "data/test.jsonl"
    model_size: str = "small"
    image_size: int | None = None
    encoder: str | None = None
    decoder: str | None = None
    epochs: int = 3
    max_steps: int | None = None
    batch_size: int = 4
    grad_accum: int = 1
    learning_rate: float = 3e-4
    weight_decay: float = 0.01
    warmup_steps: int = 100
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"  # no | bf16 | fp16 | auto (bf16 or fp16 on a GPU, fp32 on a CPU)
    augment: bool = False
    train_samples: int | None = None
    max_program_tokens: int | None = None  # train only on programs of at most this many tokens
    eval_steps: int | None = None  # None: evaluate at the end of every epoch
    eval_samples: int = 16  # images generated and scored (VSR / IoU) at each evaluation; 0: loss only
    save_steps: int = 500
    keep_checkpoints: int = 2
    resume: bool = False
    max_minutes: float | None = None  # wall-clock budget: checkpoint, save and stop once it is spent
    stream: bool = False
    stream_workers: int = 1
    log_steps: int = 10
    dataloader_workers: int = 0
    seed: int = 42


# ---------------------------------------------------------------------------------------------
# Augmentation: changes how the picture is drawn, never what it shows from where (no flips or
# rotations: the GenCAD camera always looks from (1, -1, 1), so a flipped render is another part).

def augment_image(image: Image.Image, rng: random.Random) -> Image.Image:
    image = image.convert("RGB")
    w, h = image.size
    if rng.random() < 0.5:  # small zoom and shift, white fill
        scale = rng.uniform(0.92, 1.05)
        dx, dy = rng.uniform(-0.03, 0.03) * w, rng.uniform(-0.03, 0.03) * h
        cx, cy = w / 2, h / 2
        coeffs = (1 / scale, 0, cx - (cx + dx) / scale, 0, 1 / scale, cy - (cy + dy) / scale)
        image = image.transform((w, h), Image.Transform.AFFINE, coeffs, Image.Resampling.BILINEAR,
                                fillcolor=(255, 255, 255))
    if rng.random() < 0.3:  # thicker edges (a min filter spreads dark pixels)
        image = image.filter(ImageFilter.MinFilter(3))
    if rng.random() < 0.5:
        image = ImageEnhance.Contrast(image).enhance(rng.uniform(0.75, 1.25))
    if rng.random() < 0.3:
        noise = np.random.default_rng(rng.getrandbits(32)).normal(0, rng.uniform(2, 8), (h, w, 1))
        image = Image.fromarray(np.clip(np.asarray(image, np.float32) + noise, 0, 255).astype(np.uint8))
    if rng.random() < 0.3:
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=rng.randint(40, 90))
        image = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return image


class Collator:
    """Rows {"image", "cadquery"} -> {"pixel_values", "labels"}; labels end in eos, padding is -100."""

    def __init__(self, tokenizer, processor, augment: bool = False, seed: int = 0,
                 max_tokens: int = MAX_PROGRAM_TOKENS):
        self.tokenizer, self.processor, self.augment = tokenizer, processor, augment
        self.rng = random.Random(seed)
        self.max_tokens = max_tokens

    def __call__(self, rows: list[dict]) -> dict:
        images = [frame_silhouette(row["image"]) for row in rows]
        if self.augment:
            images = [augment_image(im, self.rng) for im in images]
        pixel_values = self.processor(images, return_tensors="pt")["pixel_values"]
        ids = [encode_program(self.tokenizer, row["cadquery"])[: self.max_tokens - 1] + [self.tokenizer.eos_token_id]
               for row in rows]
        labels = torch.full((len(ids), max(map(len, ids))), -100, dtype=torch.long)
        for i, seq in enumerate(ids):
            labels[i, : len(seq)] = torch.tensor(seq)
        # right padding: decoder input i (bos or label i-1) is real exactly where label i is
        return {"pixel_values": pixel_values, "labels": labels, "decoder_attention_mask": (labels != -100).long()}


class StreamDataset(IterableDataset):
    """Fresh procedural samples for ever (``img2cq.data.stream_samples``).

    ``next_index`` is the draw index after the last sample handed out; a checkpoint stores it so a
    resumed run starts past every draw already used (a prefetched batch is skipped, never replayed).
    It is only updated when the DataLoader iterates in this process (``num_workers=0``).
    """

    def __init__(self, seed: int, workers: int, start: int = 0, keep=None):
        self.seed, self.workers, self.start, self.keep = seed, workers, start, keep
        self.next_index = start

    def __iter__(self):
        from img2cq.data import stream_samples

        for row in stream_samples(seed=self.seed, workers=self.workers, start=self.start):
            self.next_index = row["index"] + 1
            if self.keep is None or self.keep(row["cadquery"]):
                yield row


def load_rows(path: str | None, limit: int | None = None, what: str = "training"):
    """A split as a ``datasets.Dataset``, with a clear error when it is missing."""
    from img2cq.data import load_split

    if path is None or not Path(path).is_file():
        raise TrainingError(f"no {what} data at {path}: create it with `{DOWNLOAD_HINT}`")
    rows = load_split(path)
    if len(rows) == 0:
        raise TrainingError(f"{path} holds no samples")
    if limit:
        rows = rows.select(range(min(limit, len(rows))))
    return rows


# ---------------------------------------------------------------------------------------------
# Checkpoints

def _checkpoints(out: Path) -> list[Path]:
    found = [p for p in (out / "checkpoints").glob("step-*") if p.is_dir() and (p / "trainer_state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def save_checkpoint(accelerator, out: Path, state: dict, keep: int) -> Path:
    """Write a resumable state atomically: temporary folder, then rename, then prune old ones."""
    final = out / "checkpoints" / f"step-{state['step']}"
    tmp = out / "checkpoints" / f".tmp-step-{state['step']}"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=False)
    if accelerator.is_main_process:
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in _checkpoints(out)[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


# ---------------------------------------------------------------------------------------------
# Logging

class RunLog:
    """One row per logging step in logs/train_log.csv, the same scalars in TensorBoard."""

    FIELDS = ["step", "epoch", "loss", "lr", "samples_per_s", "eval_loss", "eval_vsr", "eval_iou", "elapsed_s"]

    def __init__(self, out: Path, enabled: bool):
        self.enabled = enabled
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
        handler = logging.FileHandler(logs / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        self.writer.writerow({k: row.get(k, "") for k in self.FIELDS})
        self.csv_file.flush()
        for k, v in row.items():
            if k not in ("step", "epoch") and isinstance(v, (int, float)):
                self.tb.add_scalar(k, v, row["step"])
        self.tb.flush()
        logger.info(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))

    def close(self) -> None:
        if self.enabled:
            self.csv_file.close()
            self.tb.close()


def provenance(args: TrainingArguments, command: str | None, n_train: int | None) -> dict:
    import accelerate
    import transformers

    return {
        **asdict(args),
        "command": command or " ".join(sys.argv),
        "train_samples_available": n_train,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "accelerate": accelerate.__version__},
    }


# ---------------------------------------------------------------------------------------------
# Evaluation during training

@torch.no_grad()
def evaluate(model, tokenizer, processor, eval_rows, args: TrainingArguments, device) -> dict:
    """Eval loss on every eval row; VSR and IoU of greedy programs on the first ``eval_samples``."""
    model.eval()
    collate = Collator(tokenizer, processor)
    losses = []
    for start in range(0, len(eval_rows), args.batch_size):
        batch = collate([eval_rows[i] for i in range(start, min(start + args.batch_size, len(eval_rows)))])
        losses.append(model(**{k: v.to(device) for k, v in batch.items()}).loss.item())
    metrics = {"eval_loss": float(np.mean(losses))}
    if args.eval_samples:
        from img2cq.evaluation import score_programs
        from img2cq.modeling import Img2CQ

        generator = Img2CQ(model, tokenizer, processor, device=device)
        n = min(args.eval_samples, len(eval_rows))
        rows = [eval_rows[i] for i in range(n)]
        predictions = []
        for start in range(0, n, args.batch_size):
            predictions += generator.generate([r["image"] for r in rows[start:start + args.batch_size]])
        scores = score_programs([r["cadquery"] for r in rows], predictions)
        metrics.update(eval_vsr=scores["vsr"], eval_iou=scores["iou"])
    model.train()
    return metrics


# ---------------------------------------------------------------------------------------------
# The loop

def train(args: TrainingArguments, command: str | None = None, train_rows=None, eval_rows=None) -> dict:
    """Train, evaluate, checkpoint; write the final model to ``args.output_dir``. Returns last metrics.

    ``train_rows`` / ``eval_rows`` (sequences of {"image": PIL image, "cadquery": str}) replace the
    JSONL splits, e.g. for samples held in memory.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from transformers import get_cosine_schedule_with_warmup

    run_started = time.time()  # the --max-minutes budget counts from here: start-up is part of a command
    if args.stream and not args.max_steps:
        raise TrainingError("--stream needs --max-steps (a stream has no epochs)")
    if args.mixed_precision not in ("no", "bf16", "fp16", "auto"):
        raise TrainingError(f"--mixed-precision must be no, bf16, fp16 or auto, got {args.mixed_precision!r}")
    out = Path(args.output_dir)
    previous = _checkpoints(out)
    if previous and not args.resume:
        raise TrainingError(f"{out} already holds checkpoints: pass --resume to continue, or another --output-dir")

    precision = args.mixed_precision
    if precision == "auto":
        precision = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if torch.cuda.is_available() else "no"
    accelerator = Accelerator(mixed_precision=precision, gradient_accumulation_steps=args.grad_accum)
    set_seed(args.seed)

    # data
    if train_rows is None and not args.stream:
        train_rows = load_rows(args.train_json, args.train_samples)
    if eval_rows is None and args.eval_json:
        eval_rows = load_rows(args.eval_json, max(args.eval_samples, 32), what="evaluation")

    # model
    if args.encoder or args.decoder:
        if not (args.encoder and args.decoder):
            raise TrainingError("--encoder and --decoder go together")
        model, tokenizer, processor = build_pretrained(args.encoder, args.decoder, args.image_size)
    else:
        model, tokenizer, processor = build_model(args.model_size, args.image_size)
    collate = Collator(tokenizer, processor, augment=args.augment, seed=args.seed + accelerator.process_index,
                       max_tokens=model.config.decoder.n_positions)
    short_enough = None
    if args.max_program_tokens:
        def short_enough(program: str) -> bool:
            return len(encode_program(tokenizer, program)) <= args.max_program_tokens

        if train_rows is not None:
            before = len(train_rows)
            train_rows = train_rows.filter(short_enough, input_columns="cadquery")
            accelerator.print(f"--max-program-tokens {args.max_program_tokens} keeps {len(train_rows)} "
                              f"of {before} training samples")

    per_step = args.batch_size * args.grad_accum * accelerator.num_processes
    if train_rows is not None and len(train_rows) < per_step:
        raise TrainingError(f"{len(train_rows)} training samples cannot fill one step of {per_step} "
                            "(--batch-size x --grad-accum x processes)")
    total_steps = args.max_steps or args.epochs * (len(train_rows) // per_step)

    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(
        optimizer, num_warmup_steps=min(args.warmup_steps, total_steps // 10) * accelerator.num_processes,
        num_training_steps=total_steps * accelerator.num_processes)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)

    state = {"step": 0, "epoch": 0, "batches_in_epoch": 0, "best_metric": None, "stream_next_index": 0}
    if args.resume and previous:
        accelerator.load_state(str(previous[-1]))
        state = json.loads((previous[-1] / "trainer_state.json").read_text())
        accelerator.print(f"resumed from {previous[-1]} (step {state['step']})")
    elif args.resume:
        accelerator.print(f"no checkpoint in {out}/checkpoints; starting from scratch")

    record = provenance(args, command, None if train_rows is None else len(train_rows))
    log = RunLog(out, accelerator.is_main_process)
    if accelerator.is_main_process:
        logger.info("start: %s parameters, %s steps, %s", f"{count_parameters(model):,}", total_steps, record["command"])

    stream = None

    def loader_for(epoch: int):
        nonlocal stream
        if args.stream:
            # each process its own stream; a resumed run starts past the draws already consumed.
            # The executor renders in parallel, so the DataLoader stays in this process (next_index).
            stream = data = StreamDataset(seed=args.seed + accelerator.process_index, workers=args.stream_workers,
                                          start=state.get("stream_next_index", 0), keep=short_enough)
            loader = DataLoader(data, batch_size=args.batch_size, collate_fn=collate, num_workers=0)
            return accelerator.prepare(loader)
        # a fixed permutation per epoch, so a resumed run sees the same order
        order = torch.randperm(len(train_rows), generator=torch.Generator().manual_seed(args.seed + epoch))
        data = Subset(train_rows, order.tolist())
        loader = DataLoader(data, batch_size=args.batch_size, collate_fn=collate, shuffle=False,
                            num_workers=args.dataloader_workers, drop_last=True)
        return accelerator.prepare(loader)

    def evaluate_and_keep_best() -> dict:
        """Eval metrics on the main process (empty without eval data); saves best/ on improvement."""
        if eval_rows is None:
            return {}
        accelerator.wait_for_everyone()
        metrics = {}
        if accelerator.is_main_process:
            unwrapped = accelerator.unwrap_model(model)
            metrics = evaluate(unwrapped, tokenizer, processor, eval_rows, args, accelerator.device)
            score = metrics.get("eval_iou", -metrics["eval_loss"])
            if state["best_metric"] is None or score > state["best_metric"]:
                state["best_metric"] = score
                save_pretrained(out / "best", unwrapped, tokenizer, processor,
                                {**record, "step": state["step"]}, metrics)
        accelerator.wait_for_everyone()
        return metrics

    def train_seconds() -> float:
        """Loop time of this run plus that of the runs it resumes (a --max-minutes chain)."""
        return round(resumed_seconds + time.time() - started, 1)

    def checkpoint() -> None:
        """Save a resumable state; for a stream, with the furthest draw index any process reached."""
        state["train_seconds"] = train_seconds()
        if stream is not None:
            reached = accelerator.gather(torch.tensor([stream.next_index], device=accelerator.device))
            state["stream_next_index"] = int(reached.max())
        save_checkpoint(accelerator, out, state, args.keep_checkpoints)

    def out_of_time() -> bool:
        """True on every process once the main one has spent --max-minutes (processes stop together)."""
        spent = time.time() - run_started
        if args.max_minutes is not None and accelerator.is_main_process and spent > 60 * args.max_minutes:
            accelerator.set_trigger()
        return accelerator.check_trigger()

    def log_row(row: dict) -> None:
        if row:
            log.write({"step": state["step"], "epoch": state["epoch"], **row, "elapsed_s": round(time.time() - started, 1)})

    model.train()
    bar = tqdm(total=total_steps, initial=state["step"], desc="training", unit="step",
               disable=not accelerator.is_main_process)
    started, seen, running_loss, last_metrics = time.time(), 0, [], {}
    resumed_seconds = state.get("train_seconds", 0.0)
    evaluated_at = saved_at = None
    timed_out = False
    try:
        while state["step"] < total_steps and not timed_out:
            loader = loader_for(state["epoch"])
            if state["batches_in_epoch"] and not args.stream:
                loader = accelerator.skip_first_batches(loader, state["batches_in_epoch"])
            for batch in loader:
                with accelerator.accumulate(model):
                    loss = model(**batch).loss
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad()
                state["batches_in_epoch"] += 1
                seen += batch["labels"].shape[0] * accelerator.num_processes
                running_loss.append(loss.item())
                if not accelerator.sync_gradients:
                    continue
                state["step"] += 1
                bar.update(1)
                bar.set_postfix(loss=f"{running_loss[-1]:.3f}")
                if state["step"] % args.log_steps == 0:
                    log_row({"loss": float(np.mean(running_loss)), "lr": scheduler.get_last_lr()[0],
                             "samples_per_s": seen / (time.time() - started)})
                    running_loss = []
                if args.eval_steps and state["step"] % args.eval_steps == 0:
                    last_metrics, evaluated_at = evaluate_and_keep_best(), state["step"]
                    log_row(last_metrics)
                if state["step"] % args.save_steps == 0:
                    checkpoint()
                    saved_at = state["step"]
                timed_out = out_of_time()
                if state["step"] >= total_steps or timed_out:
                    break
            else:  # the epoch ran out: next permutation, evaluate once per epoch unless --eval-steps
                state["epoch"] += 1
                state["batches_in_epoch"] = 0
                if not args.eval_steps:
                    last_metrics, evaluated_at = evaluate_and_keep_best(), state["step"]
                    log_row(last_metrics)
        if timed_out:  # no evaluation: the budget is spent; the next --resume run goes on
            accelerator.print(f"--max-minutes {args.max_minutes} spent at step {state['step']}/{total_steps}")
        elif evaluated_at != state["step"]:
            last_metrics = evaluate_and_keep_best()
            log_row(last_metrics)
        if saved_at != state["step"]:
            checkpoint()
    finally:
        bar.close()
        log.close()

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        record.update(steps=state["step"], finished=state["step"] >= total_steps,
                      train_seconds=train_seconds())
        save_pretrained(out, accelerator.unwrap_model(model), tokenizer, processor, record, last_metrics)
        accelerator.print(f"saved the final model to {out}")
    return last_metrics


# ---------------------------------------------------------------------------------------------
# Command line (both scripts build their parser here; the basic one shows fewer flags)

BASIC_FLAGS = ("output_dir", "train_json", "eval_json", "model_size", "image_size", "epochs", "max_steps",
               "batch_size", "learning_rate", "train_samples", "save_steps", "resume", "seed")

HELP = {
    "output_dir": "where the final model goes (checkpoints/, best/ and logs/ inside it)",
    "train_json": "training split (JSONL from scripts/download_hf_dataset.py)",
    "eval_json": "evaluation split; 'none' to skip evaluation",
    "model_size": "preset: tiny (tests), compact (~24M, the shipped default), small (~40M), base (~200M)",
    "image_size": "input resolution (default: the preset's)",
    "encoder": "pretrained ViT checkpoint (hub name or local dir); needs --decoder",
    "decoder": "pretrained GPT-2 checkpoint (hub name or local dir), its tokenizer is used",
    "max_steps": "stop after this many optimiser steps (overrides --epochs)",
    "grad_accum": "micro-batches per optimiser step",
    "warmup_steps": "linear warm-up steps before the cosine decay",
    "max_grad_norm": "gradient clipping norm",
    "mixed_precision": "no | bf16 | fp16 | auto (bf16/fp16 on a GPU, fp32 on a CPU)",
    "augment": "render-style augmentation (scale/shift, line width, contrast, noise, JPEG; never flips)",
    "train_samples": "use only the first N training samples",
    "max_program_tokens": "train only on programs of at most N tokens (short runs on a CPU); default: all",
    "eval_steps": "evaluate every N steps (default: every epoch)",
    "eval_samples": "images generated and scored for VSR/IoU at each evaluation (0: loss only)",
    "save_steps": "write a resumable checkpoint every N steps",
    "keep_checkpoints": "resumable checkpoints kept",
    "resume": "continue from the latest checkpoint in --output-dir",
    "max_minutes": "wall-clock budget of this run: then checkpoint, save the model and stop (go on with --resume)",
    "stream": "train on fresh procedural samples (needs --max-steps)",
    "stream_workers": "processes rendering streamed samples (the stream ignores --dataloader-workers)",
    "log_steps": "log every N steps",
    "dataloader_workers": "DataLoader worker processes",
}


def build_parser(description: str, basic: bool):
    import argparse

    parser = argparse.ArgumentParser(description=description)
    defaults = TrainingArguments()
    for name, value in asdict(defaults).items():
        if basic and name not in BASIC_FLAGS:
            continue
        flag = "--" + name.replace("_", "-")
        kind = TrainingArguments.__dataclass_fields__[name].type
        if isinstance(value, bool):
            parser.add_argument(flag, action="store_true", help=HELP.get(name))
        else:
            convert = int if "int" in kind else float if "float" in kind else str
            parser.add_argument(flag, type=convert, default=value, help=HELP.get(name, "") + f" (default: {value})")
    return parser


def parse_args(parser, argv=None) -> TrainingArguments:
    ns = vars(parser.parse_args(argv))
    if ns.get("eval_json") in ("none", ""):
        ns["eval_json"] = None
    return TrainingArguments(**ns)


def main(description: str, basic: bool, argv=None) -> int:
    """Entry point of both training scripts: one clear error line and exit code 2 on bad input."""
    from img2cq.modeling import ModelError

    args = parse_args(build_parser(description, basic), argv)
    try:
        train(args, command=" ".join(["python", Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]))
    except (TrainingError, ModelError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted: continue with the same command plus --resume ({args.output_dir}/checkpoints)",
              file=sys.stderr)
        return 130
    return 0
