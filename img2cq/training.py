"""The training loop shared by train_vision_encoder_decoder.py (basic) and enhanced_train.py.

``train`` reads top to bottom: check arguments -> data -> model -> optimiser -> resume -> the loop
(``run_loop``: epochs of steps; log, evaluate, checkpoint, stop on budget) -> final
``save_pretrained`` into ``--output-dir``. The loop's position lives in one ``TrainState``, which is
what a checkpoint stores besides accelerate's state (``img2cq.training_records``: checkpoints and the
run log); what the loop works with is one ``Run``. ``accelerate`` handles devices, mixed
precision and multi-GPU (``accelerate launch enhanced_train.py ...``) without code changes.
Arguments: ``img2cq.training_args`` (dataclasses read by ``HfArgumentParser``).

Output directory layout:

    OUTPUT_DIR/                  final model (load with img2cq.modeling.load_pretrained)
    OUTPUT_DIR/best/             best model by eval IoU (or eval loss when IoU is not computed)
    OUTPUT_DIR/checkpoints/      step-N/ resumable states (model, optimiser, scheduler, RNG, step)
    OUTPUT_DIR/logs/             train_log.csv, TensorBoard events, train.log

A checkpoint is written to a temporary folder and renamed into place, so ``kill -9`` at any moment
leaves the previous checkpoint intact and ``--resume`` loses at most ``--save-steps`` steps. The data
order is a function of the seed and the epoch alone, so a resumed run sees exactly the batches the
interrupted one would have seen next.
"""

from __future__ import annotations

import platform
import random
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter
from torch.utils.data import DataLoader, IterableDataset, Subset
from tqdm.auto import tqdm

from img2cq.console import StopRequest, fail, show_notes
from img2cq.data import DOWNLOAD_HINT, DataError, load_split
from img2cq.framing import jpeg_copy
from img2cq.modeling import (ModelError, build_model, build_pretrained, count_parameters, load_pretrained,
                             model_input_frame, prompt_prefix, save_pretrained)
from img2cq.tokenizer import encode_program
from img2cq.training_args import TrainingArguments, TrainingError
from img2cq.training_records import RunLog, TrainState, find_checkpoints, save_checkpoint

__all__ = ["TrainingArguments", "TrainingError", "Collator", "make_collator", "augment_image", "train", "evaluate"]


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
        image = jpeg_copy(image, rng.randint(40, 90))
    return image


class Collator:
    """Rows {"image", "cadquery"} -> {"pixel_values", "decoder_input_ids", "labels", "decoder_attention_mask"}.

    The decoder reads ``modeling.prompt_prefix`` (bos, or with a row's "prompt" program: bos, its
    tokens, bos) then the program; labels are the program and eos, -100 on the prefix and padding."""

    def __init__(self, tokenizer, processor, *, max_tokens: int, augment: bool = False, seed: int = 0):
        self.tokenizer, self.processor, self.augment = tokenizer, processor, augment
        self.rng = random.Random(seed)
        self.max_tokens = max_tokens

    def __call__(self, rows: list[dict]) -> dict:
        images = [model_input_frame(row["image"], self.processor) for row in rows]
        if self.augment:
            images = [augment_image(im, self.rng) for im in images]
        pixel_values = self.processor(images, return_tensors="pt")["pixel_values"]
        prefixes = [prompt_prefix(self.tokenizer, row.get("prompt")) for row in rows]
        targets = [encode_program(self.tokenizer, row["cadquery"])[: self.max_tokens - len(prefix)] + [self.tokenizer.eos_token_id]
                   for row, prefix in zip(rows, prefixes)]
        width = max(len(p) + len(t) - 1 for p, t in zip(prefixes, targets))
        inputs = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (prefix, target) in enumerate(zip(prefixes, targets)):
            sequence = prefix + target[:-1]   # right padding: input k is real exactly where label k is
            inputs[i, :len(sequence)] = torch.tensor(sequence)
            labels[i, len(prefix) - 1:len(sequence)] = torch.tensor(target)
            mask[i, :len(sequence)] = 1
        return {"pixel_values": pixel_values, "decoder_input_ids": inputs, "labels": labels,
                "decoder_attention_mask": mask}


def make_collator(model, tokenizer, processor, augment: bool = False, seed: int = 0) -> Collator:
    """The one way training and evaluation build a collator: programs cut to the model's position table."""
    return Collator(tokenizer, processor, max_tokens=model.config.decoder.n_positions, augment=augment, seed=seed)


# ---------------------------------------------------------------------------------------------
# Data order: batches of similar program length

def program_lengths(programs, tokenizer) -> list[int]:
    """Token count of each program (what the collator pads to within a batch)."""
    return [len(encode_program(tokenizer, p)) for p in tqdm(programs, desc="measuring programs", unit="program",
                                                            leave=False, mininterval=2)]


def length_grouped_order(indices, lengths, batch_size: int, group_batches: int, generator) -> list[int]:
    """``indices`` shuffled, cut to whole batches, sorted by length within groups of ``group_batches``
    batches, and the batches shuffled: each batch holds programs of similar length (little padding)
    while batch order stays random. The same generator state gives the same order."""
    shuffled = [indices[i] for i in torch.randperm(len(indices), generator=generator).tolist()]
    shuffled = shuffled[: len(shuffled) // batch_size * batch_size]
    group = batch_size * group_batches
    batches = []
    for start in range(0, len(shuffled), group):
        by_length = sorted(shuffled[start:start + group], key=lambda i: lengths[i])
        batches += [by_length[i:i + batch_size] for i in range(0, len(by_length), batch_size)]
    return [i for b in torch.randperm(len(batches), generator=generator).tolist() for i in batches[b]]


def epoch_order(usable: list[int], lengths, args: TrainingArguments, epoch: int) -> list[int]:
    """The training rows of one epoch in the order they are batched: fixed by seed and epoch."""
    generator = torch.Generator().manual_seed(args.seed + epoch)
    if not args.group_by_length:
        return [usable[i] for i in torch.randperm(len(usable), generator=generator).tolist()]
    return length_grouped_order(usable, lengths, args.batch_size, args.length_group_batches, generator)


class StreamDataset(IterableDataset):
    """Fresh procedural samples for ever (``library.stream_built_samples``: ``data.stream_samples``'s,
    built and rendered in long-lived build workers), optionally length-grouped,
    and with a ``library`` each prompted with the program of its nearest part there (retrieve-and-edit:
    what a new picture is prompted with at generation time, ``editing.prompt_programs``).

    With ``group_batches``, samples are gathered into a buffer of ``group_batches * batch_size`` and
    handed out in ``length_grouped_order``, so every batch the DataLoader cuts is one length group.
    ``next_index`` is the draw index after the last sample taken from the stream (into the buffer or
    handed out); a checkpoint stores it, so a resumed run starts past every draw already used: the
    rest of a buffer and a prefetched batch are skipped, never replayed. It is only updated when the
    DataLoader iterates in this process (``num_workers=0``).
    """

    def __init__(self, seed: int, workers: int, start: int, tokenizer, batch_size: int,
                 max_program_tokens: int | None = None, group_batches: int | None = None, library=None):
        self.seed, self.workers, self.start, self.next_index = seed, workers, start, start
        self.tokenizer, self.batch_size = tokenizer, batch_size
        self.max_program_tokens, self.group_batches, self.library = max_program_tokens, group_batches, library

    def __iter__(self):
        from img2cq.editing import prompt_programs
        from img2cq.library import stream_built_samples

        buffer = []
        size = self.batch_size * self.group_batches if self.group_batches else 1
        for row in stream_built_samples(seed=self.seed, workers=self.workers, start=self.start):
            self.next_index = row["index"] + 1
            if self.max_program_tokens or self.group_batches:
                row["program_tokens"] = len(encode_program(self.tokenizer, row["cadquery"]))
                if self.max_program_tokens and row["program_tokens"] > self.max_program_tokens:
                    continue
            buffer.append(row)
            if len(buffer) < size:
                continue
            if self.library is not None:  # one pass over the library for the whole buffer
                for r, prompt in zip(buffer, prompt_programs(self.library, [r["image"] for r in buffer])):
                    r["prompt"] = prompt
            if self.group_batches:  # the decoder's length: prompt prefix and program
                lengths = [len(prompt_prefix(self.tokenizer, r.get("prompt"))) + r["program_tokens"] for r in buffer]
                generator = torch.Generator().manual_seed(self.seed * 1_000_003 + buffer[0]["index"])
                order = length_grouped_order(range(size), lengths, self.batch_size, self.group_batches, generator)
                buffer = [buffer[i] for i in order]
            yield from buffer
            buffer = []


def load_rows(path: str | None, limit: int | None = None, what: str = "training",
              exclude_programs_in: str | None = None):
    """A split (``img2cq.data.load_split``: without the programs of the split ``exclude_programs_in``),
    at most ``limit`` rows; DataError naming the command that creates a missing one."""
    if path is None or not Path(path).is_file():
        raise DataError(f"no {what} data at {path}: create it with `{DOWNLOAD_HINT}`")
    if exclude_programs_in is not None and not Path(exclude_programs_in).is_file():
        raise DataError(f"no split at {exclude_programs_in} to leave out of training (--exclude-programs-in)")
    rows = load_split(path, exclude_programs_in=exclude_programs_in)
    if len(rows) == 0:
        raise DataError(f"{path} holds no samples")
    if limit:
        rows = rows.select(range(min(limit, len(rows))))
    return rows


def programs_of(rows) -> list[str]:
    """The program column of a ``datasets.Dataset`` (images stay undecoded) or of a list of dicts."""
    return list(rows["cadquery"]) if hasattr(rows, "column_names") else [row["cadquery"] for row in rows]


# ---------------------------------------------------------------------------------------------
# Model and optimiser

def build(args: TrainingArguments):
    """(model, tokenizer, processor): a preset from scratch, pretrained encoder + decoder, or a saved
    model (``--init-from``). A model trained on the library (``--library-build``) says in its config
    that it reads library thumbnails and whether it is prompted (``retrieval_prompt``); one trained on
    prompted streamed samples (``--stream-prompts``) is prompted and reads full pictures."""
    if args.init_from:
        generator = load_pretrained(args.init_from, device="cpu")
        model, tokenizer, processor = generator.model.train(), generator.tokenizer, generator.processor
    elif args.encoder:
        model, tokenizer, processor = build_pretrained(args.encoder, args.decoder, args.image_size)
    else:
        model, tokenizer, processor = build_model(args.model_size, args.image_size)
    model.config.retrieval_prompt = (bool(args.library_build) and args.retrieval_prompt) or args.stream_prompts
    model.config.library_pictures = bool(args.library_build)
    return model, tokenizer, processor


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: matrices, convolutions and embeddings decay; biases and norm weights (the 1-D
    tensors) do not, since shrinking a scale or an offset towards 0 only fights the fit."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


def resolve_precision(mixed_precision: str) -> str:
    """``auto``: bf16 where the GPU supports it, else fp16; fp32 (``no``) without a GPU."""
    if mixed_precision != "auto":
        return mixed_precision
    if not torch.cuda.is_available():
        return "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def provenance(args: TrainingArguments, command: str | None, n_train: int | None) -> dict:
    """The run's settings, command and versions, as the model card shows them. Settings that decided
    nothing are recorded as None: the preset's sizes when the model came from ``--init-from`` or
    pretrained parts, the split and epochs when the samples were streamed."""
    import accelerate
    import transformers

    record = {
        **asdict(args),
        "command": command or " ".join(sys.argv),
        "train_samples_available": n_train,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "accelerate": accelerate.__version__},
    }
    if args.init_from or args.encoder:
        record["model_size"] = None
    if args.init_from:
        record["image_size"] = None
    if args.stream:
        record.update(train_json=None, epochs=None)
    return record


# ---------------------------------------------------------------------------------------------
# Evaluation during training

@torch.no_grad()
def evaluate(model, tokenizer, processor, eval_rows, args: TrainingArguments, device) -> dict:
    """Eval loss on every eval row; VSR and IoU of greedy programs on the first ``eval_samples``."""
    from img2cq.evaluation import score_programs
    from img2cq.modeling import Img2CQ

    model.eval()
    collate = make_collator(model, tokenizer, processor)
    losses = []
    for start in range(0, len(eval_rows), args.batch_size):
        batch = collate([eval_rows[i] for i in range(start, min(start + args.batch_size, len(eval_rows)))])
        losses.append(model(**{k: v.to(device) for k, v in batch.items()}).loss.item())
    metrics = {"eval_loss": float(np.mean(losses))}
    if args.eval_samples:
        generator = Img2CQ(model, tokenizer, processor, device=device)
        n = min(args.eval_samples, len(eval_rows))
        rows = [eval_rows[i] for i in range(n)]
        predictions = []
        for start in range(0, n, args.batch_size):
            batch_rows = rows[start:start + args.batch_size]
            prompts = [r["prompt"] for r in batch_rows] if "prompt" in batch_rows[0] else None
            predictions += generator.generate([r["image"] for r in batch_rows], prompts=prompts)
        scores = score_programs([r["cadquery"] for r in rows], predictions)
        metrics.update(eval_vsr=scores["vsr"], eval_iou=scores["iou"])
    model.train()
    return metrics


def evaluate_and_keep_best(accelerator, model, tokenizer, processor, eval_rows, args: TrainingArguments,
                           state: TrainState, out: Path, record: dict, log: RunLog) -> dict:
    """Eval metrics from the main process (empty without eval data), logged; saves best/ on improvement."""
    if eval_rows is None:
        return {}
    accelerator.wait_for_everyone()
    metrics = {}
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        metrics = evaluate(unwrapped, tokenizer, processor, eval_rows, args, accelerator.device)
        score = metrics.get("eval_iou", -metrics["eval_loss"])
        if state.best_metric is None or score > state.best_metric:
            state.best_metric = score
            save_pretrained(out / "best", unwrapped, tokenizer, processor, {**record, "step": state.step}, metrics)
    accelerator.wait_for_everyone()
    log.write(state, metrics)
    return metrics


def epoch_loader(accelerator, train_rows, order: list[int], collate, args: TrainingArguments, skip: int):
    """The batches of one epoch in ``order``, without the first ``skip`` (already trained on)."""
    loader = accelerator.prepare(DataLoader(Subset(train_rows, order), batch_size=args.batch_size, collate_fn=collate,
                                            shuffle=False, drop_last=True, num_workers=args.dataloader_workers))
    return accelerator.skip_first_batches(loader, skip) if skip else loader


def train_step(accelerator, model, optimizer, scheduler, batch: dict, max_grad_norm: float) -> float:
    """Forward, backward and (once per ``--grad-accum`` micro-batches) an optimiser step; the loss."""
    with accelerator.accumulate(model):
        loss = model(**batch).loss
        accelerator.backward(loss)
        if accelerator.sync_gradients:
            accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    return loss.item()


def time_to_stop(accelerator, run_started: float, max_minutes: float | None, stop: StopRequest) -> bool:
    """True on every process once the main one has spent ``max_minutes`` or was asked to stop (processes
    stop together)."""
    spent = max_minutes is not None and time.time() - run_started > 60 * max_minutes
    if accelerator.is_main_process and (spent or stop.requested):
        accelerator.set_trigger()
    return accelerator.check_trigger()


# ---------------------------------------------------------------------------------------------
# The loop

def resume_state(accelerator, args: TrainingArguments, out: Path, previous: list[Path]) -> TrainState:
    """With ``--resume``, the latest checkpoint loaded into the prepared model, optimiser and scheduler
    and its loop position; else a fresh position."""
    if args.resume and previous:
        try:
            accelerator.load_state(str(previous[-1]))
        except (ValueError, RuntimeError) as e:  # another model or optimiser layout than this command builds
            raise TrainingError(f"cannot resume from {previous[-1]}: {str(e).splitlines()[0]}") from e
        state = TrainState.load(previous[-1])
        accelerator.print(f"resumed from {previous[-1]} (step {state.step})")
        return state
    if args.resume:
        accelerator.print(f"no checkpoint in {out}/checkpoints; starting from scratch")
    return TrainState()


def open_stream(accelerator, args: TrainingArguments, state: TrainState, tokenizer, collate):
    """--stream: (this process's stream, its prepared DataLoader); a resumed run starts past the draws
    already used."""
    from img2cq.library import PartLibrary

    stream = StreamDataset(seed=args.seed + accelerator.process_index, workers=args.stream_workers,
                           start=state.stream_next_index, tokenizer=tokenizer, batch_size=args.batch_size,
                           max_program_tokens=args.max_program_tokens,
                           group_batches=args.length_group_batches if args.group_by_length else None,
                           library=PartLibrary.load() if args.stream_prompts else None)
    return stream, accelerator.prepare(DataLoader(stream, batch_size=args.batch_size, collate_fn=collate,
                                                  num_workers=0))


@dataclass
class Run:
    """What the loop works with, set up once by ``train``, and its counters (not saved in checkpoints).

    ``batches(state)`` gives the batches of the current epoch from where it stands (a stream: all of it).
    """

    args: TrainingArguments
    accelerator: object
    model: torch.nn.Module
    tokenizer: object
    processor: object
    optimizer: torch.optim.Optimizer
    scheduler: object
    batches: Callable[[TrainState], Iterable[dict]]
    stream: StreamDataset | None
    eval_rows: object
    total_steps: int
    out: Path
    record: dict
    log: RunLog
    started: float                  # the --max-minutes budget counts from here
    loop_started: float = 0.0       # this run's loop: wall clock and process CPU time (time.process_time)
    loop_cpu_started: float = 0.0
    resumed: tuple[float, float] = (0.0, 0.0)   # the same, spent by the runs this one resumes
    stop: StopRequest = field(default_factory=lambda: StopRequest("stopping after this step with a checkpoint and the final model"))
    samples_since_log: int = 0      # since the last log line, written at logged_at: the rate it shows
    logged_at: float = field(default_factory=time.time)
    losses: list[float] = field(default_factory=list)
    last_metrics: dict = field(default_factory=dict)
    evaluated_at: int | None = None
    saved_at: int | None = None

    def evaluate(self, state: TrainState) -> None:
        self.last_metrics = evaluate_and_keep_best(self.accelerator, self.model, self.tokenizer, self.processor,
                                                   self.eval_rows, self.args, state, self.out, self.record, self.log)
        self.evaluated_at = state.step

    def checkpoint(self, state: TrainState) -> None:
        state.train_seconds = round(self.resumed[0] + time.time() - self.loop_started, 1)
        state.train_cpu_seconds = round(self.resumed[1] + time.process_time() - self.loop_cpu_started, 1)
        save_checkpoint(self.accelerator, self.out, state, self.args.keep_checkpoints, self.stream)
        self.saved_at = state.step


def after_step(run: Run, state: TrainState, bar) -> bool:
    """Log, evaluate and checkpoint where due after an optimiser step; True once the time budget is spent
    or a stop was asked for."""
    args = run.args
    bar.update(1)
    bar.set_postfix(loss=f"{run.losses[-1]:.3f}")
    if state.step % args.log_steps == 0:
        now = time.time()
        run.log.write(state, {"loss": float(np.mean(run.losses)), "lr": run.scheduler.get_last_lr()[0],
                              "samples_per_s": run.samples_since_log / (now - run.logged_at)})
        run.losses, run.samples_since_log, run.logged_at = [], 0, now
    if args.eval_steps and state.step % args.eval_steps == 0:
        run.evaluate(state)
    if state.step % args.save_steps == 0:
        run.checkpoint(state)
    return time_to_stop(run.accelerator, run.started, args.max_minutes, run.stop)


def train_epoch(run: Run, state: TrainState, bar) -> bool:
    """Train on the rest of the current epoch until the last step, the time budget or a stop request (True
    for those two); an epoch that runs out moves on to the next, evaluated once per epoch unless --eval-steps."""
    for batch in run.batches(state):
        run.losses.append(train_step(run.accelerator, run.model, run.optimizer, run.scheduler, batch,
                                     run.args.max_grad_norm))
        state.batches_in_epoch += 1
        run.samples_since_log += batch["labels"].shape[0] * run.accelerator.num_processes
        if not run.accelerator.sync_gradients:
            continue
        state.step += 1
        stopped = after_step(run, state, bar)
        if state.step >= run.total_steps or stopped:
            return stopped
    state.epoch += 1
    state.batches_in_epoch = 0
    if not run.args.eval_steps:
        run.evaluate(state)
    return False


def run_loop(run: Run, state: TrainState) -> dict:
    """Epochs until the last step, the time budget or a stop request (Ctrl-C, SIGTERM), then a last
    evaluation (unless stopped early: the next --resume run goes on) and checkpoint where not just
    done. Returns the last metrics."""
    run.model.train()
    bar = tqdm(total=run.total_steps, initial=state.step, desc="training", unit="step",
               disable=not run.accelerator.is_main_process)
    run.loop_started, run.loop_cpu_started = time.time(), time.process_time()
    run.resumed = (state.train_seconds, state.train_cpu_seconds)
    stopped = False
    try:
        while state.step < run.total_steps and not stopped:
            stopped = train_epoch(run, state, bar)
        if stopped:
            why = "stopped on request" if run.stop.requested else f"--max-minutes {run.args.max_minutes} spent"
            run.accelerator.print(f"{why} at step {state.step}/{run.total_steps}; go on with --resume")
        elif run.evaluated_at != state.step:
            run.evaluate(state)
        if run.saved_at != state.step:
            run.checkpoint(state)
    finally:
        bar.close()
        run.log.close()
    return run.last_metrics


def save_final_model(run: Run, state: TrainState, last_metrics: dict) -> None:
    """The model, its card and its record (steps, seconds) in ``--output-dir``, by the main process."""
    run.accelerator.wait_for_everyone()
    if run.accelerator.is_main_process:
        run.record.update(steps=state.step, finished=state.step >= run.total_steps, train_seconds=state.train_seconds,
                          train_cpu_seconds=state.train_cpu_seconds)
        save_pretrained(run.out, run.accelerator.unwrap_model(run.model), run.tokenizer, run.processor, run.record,
                        last_metrics)
        run.accelerator.print(f"saved the final model to {run.out}")


def train(args: TrainingArguments, command: str | None = None, train_rows=None, eval_rows=None) -> dict:
    """Train, evaluate, checkpoint; write the final model to ``args.output_dir``. Returns last metrics.

    ``train_rows`` / ``eval_rows`` (sequences of {"image": PIL image, "cadquery": str}) replace the
    JSONL splits, e.g. for samples held in memory.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from transformers import get_cosine_schedule_with_warmup

    run_started = time.time()  # the --max-minutes budget counts from here: start-up is part of a command
    out = Path(args.output_dir)
    previous = find_checkpoints(out)
    if previous and not args.resume:
        raise TrainingError(f"{out} already holds checkpoints: pass --resume to continue, or another --output-dir")
    accelerator = Accelerator(mixed_precision=resolve_precision(args.mixed_precision),
                              gradient_accumulation_steps=args.grad_accum)
    set_seed(args.seed)

    # data
    if args.library_build and train_rows is None:
        from img2cq.editing import library_rows

        train_rows, eval_rows = library_rows(args.library_build, prompted=args.retrieval_prompt,
                                             progress=accelerator.is_main_process)
    if train_rows is None and not args.stream:
        train_rows = load_rows(args.train_json, args.train_samples, exclude_programs_in=args.exclude_programs_in)
    if eval_rows is None and args.eval_json and not args.library_build:
        eval_rows = load_rows(args.eval_json, max(args.eval_samples, 32), what="evaluation")

    # model
    model, tokenizer, processor = build(args)
    collate = make_collator(model, tokenizer, processor, augment=args.augment, seed=args.seed + accelerator.process_index)

    # which training rows, and how many steps
    lengths = usable = None
    if not args.stream:
        if args.group_by_length or args.max_program_tokens:
            lengths = getattr(train_rows, "lengths", None) or program_lengths(programs_of(train_rows), tokenizer)
        usable = list(range(len(train_rows)))
        if args.max_program_tokens:
            usable = [i for i in usable if lengths[i] <= args.max_program_tokens]
            accelerator.print(f"--max-program-tokens {args.max_program_tokens} keeps {len(usable)} "
                              f"of {len(train_rows)} training samples")
    per_step = args.batch_size * args.grad_accum * accelerator.num_processes
    if usable is not None and len(usable) < per_step:
        raise TrainingError(f"{len(usable)} training samples cannot fill one step of {per_step} "
                            "(--batch-size x --grad-accum x processes)")
    total_steps = args.max_steps or args.epochs * (len(usable) // per_step)

    # optimiser: AdamW, linear warm-up then cosine decay
    optimizer = torch.optim.AdamW(parameter_groups(model, args.weight_decay), lr=args.learning_rate)
    scheduler = get_cosine_schedule_with_warmup(
        optimizer, num_warmup_steps=min(args.warmup_steps, total_steps // 10) * accelerator.num_processes,
        num_training_steps=total_steps * accelerator.num_processes)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)

    # resume, record, the batches
    state = resume_state(accelerator, args, out, previous)
    record = provenance(args, command, None if usable is None else len(usable))
    log = RunLog(out, accelerator.is_main_process)
    log.info("start: %s parameters, %s steps, %s", f"{count_parameters(model):,}", total_steps, record["command"])
    stream = None
    if args.stream:  # each process its own stream
        stream, stream_loader = open_stream(accelerator, args, state, tokenizer, collate)
        batches = lambda state: stream_loader  # noqa: E731
    else:
        batches = lambda state: epoch_loader(accelerator, train_rows, epoch_order(usable, lengths, args, state.epoch),  # noqa: E731
                                             collate, args, skip=state.batches_in_epoch)

    # the loop, then the final model
    run = Run(args, accelerator, model, tokenizer, processor, optimizer, scheduler, batches, stream, eval_rows,
              total_steps, out, record, log, started=run_started)
    with run.stop:  # a stop request lets the loop end and the final model be saved
        last_metrics = run_loop(run, state)
        save_final_model(run, state, last_metrics)
    return last_metrics


def main(args: TrainingArguments, argv: list[str] | None = None) -> int:
    """Run the training scripts' job: one clear error line and exit code 2 on bad input."""
    argv = sys.argv[1:] if argv is None else argv
    show_notes()
    try:
        train(args, command=" ".join(["python", Path(sys.argv[0]).name, *argv]))
    except (TrainingError, DataError, ModelError, FileNotFoundError) as e:
        return fail(e)
    except KeyboardInterrupt:
        print(f"\ninterrupted: continue with the same command plus --resume ({args.output_dir}/checkpoints)",
              file=sys.stderr)
        return 130
    return 0
