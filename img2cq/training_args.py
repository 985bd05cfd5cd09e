"""Training arguments as dataclasses, read by transformers' ``HfArgumentParser``, and the reading
every script's dataclass arguments share (``parse_cli``; the evaluation scripts' arguments are
``img2cq.evaluation_args``).

This module imports nothing heavy, so ``--help`` and a bad flag answer before torch loads. Arguments
come from flags, from a JSON file given first (``enhanced_train.py configs/cpu_default.json``; keys
are the field names), or both: flags after the file win. ``BasicTrainingArguments`` holds the
options the basic script shows; ``TrainingArguments`` adds the rest. A field whose metadata says
``"positional": True`` is a positional argument instead of a ``--flag``; a list field whose metadata
gives ``"nargs": "*"`` is an option that may be given with no value.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from types import UnionType
from typing import Literal, Union, get_args, get_origin

from img2cq.console import fail


class ArgumentError(ValueError):
    """Bad arguments (a flag, a value, a config file): one error line and exit 2."""


class TrainingError(ArgumentError):
    """Bad arguments or inputs of a training run: reported as one line by the scripts."""


@dataclass
class BasicTrainingArguments:
    output_dir: str = field(default="models/basic", metadata={
        "help": "where the final model goes (checkpoints/, best/ and logs/ inside it)"})
    train_json: str = field(default="data/train.jsonl", metadata={
        "help": "training split (JSONL from scripts/download_hf_dataset.py)"})
    eval_json: str | None = field(default="data/test.jsonl", metadata={
        "help": "evaluation split; 'none' to skip evaluation"})
    model_size: str = field(default="small", metadata={
        "help": "preset: tiny (tests), cpu (~4M, the CPU-trained default), compact (~24M), small (~40M), base (~200M)"})
    image_size: int | None = field(default=None, metadata={"help": "input resolution (default: the preset's)"})
    epochs: int = field(default=3, metadata={"help": "passes over the training split"})
    max_steps: int | None = field(default=None, metadata={
        "help": "stop after this many optimiser steps (overrides --epochs)"})
    batch_size: int = field(default=4, metadata={"help": "samples per micro-batch and process"})
    learning_rate: float = field(default=3e-4, metadata={"help": "peak learning rate"})
    train_samples: int | None = field(default=None, metadata={"help": "use only the first N training samples"})
    exclude_programs_in: str | None = field(default=None, metadata={
        "help": "a split (e.g. the test split) whose programs are left out of training"})
    save_steps: int = field(default=500, metadata={"help": "write a resumable checkpoint every N steps"})
    resume: bool = field(default=False, metadata={"help": "continue from the latest checkpoint in --output-dir"})
    seed: int = field(default=42, metadata={"help": "seed of initialisation, data order and augmentation"})

    def __post_init__(self):
        if self.eval_json in ("none", ""):
            self.eval_json = None


@dataclass
class TrainingArguments(BasicTrainingArguments):
    encoder: str | None = field(default=None, metadata={
        "help": "pretrained ViT checkpoint (hub name or local dir); needs --decoder"})
    decoder: str | None = field(default=None, metadata={
        "help": "pretrained GPT-2 checkpoint (hub name or local dir), its tokenizer is used"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimiser step"})
    weight_decay: float = field(default=0.01, metadata={
        "help": "AdamW weight decay of matrices and embeddings (never of biases and norms)"})
    warmup_steps: int = field(default=100, metadata={"help": "linear warm-up steps before the cosine decay"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm"})
    mixed_precision: Literal["no", "bf16", "fp16", "auto"] = field(default="no", metadata={
        "help": "autocast on a GPU (auto: bf16 where supported, else fp16; fp32 on a CPU)"})
    augment: bool = field(default=False, metadata={
        "help": "render-style augmentation (scale/shift, line width, contrast, noise, JPEG; never flips)"})
    max_program_tokens: int | None = field(default=None, metadata={
        "help": "train only on programs of at most N tokens (short runs on a CPU); default: all"})
    group_by_length: bool = field(default=True, metadata={
        "help": "batches of programs of similar token length (less padding); --no-group-by-length: random"})
    length_group_batches: int = field(default=50, metadata={
        "help": "batches per length-sorted group (a shuffled stretch of data, or a buffer of streamed samples)"})
    eval_steps: int | None = field(default=None, metadata={"help": "evaluate every N steps (default: every epoch)"})
    eval_samples: int = field(default=16, metadata={
        "help": "images generated and scored for VSR/IoU at each evaluation (0: loss only)"})
    keep_checkpoints: int = field(default=2, metadata={"help": "resumable checkpoints kept"})
    max_minutes: float | None = field(default=None, metadata={
        "help": "wall-clock budget of this run: then checkpoint, save the model and stop (go on with --resume)"})
    stream: bool = field(default=False, metadata={"help": "train on fresh procedural samples (needs --max-steps)"})
    stream_workers: int = field(default=1, metadata={
        "help": "build workers drawing and rendering streamed samples (the stream ignores --dataloader-workers)"})
    log_steps: int = field(default=10, metadata={"help": "log every N steps"})
    dataloader_workers: int = field(default=0, metadata={"help": "DataLoader worker processes"})
    library_build: str | None = field(default=None, metadata={
        "help": "train retrieve-and-edit: the shipped part library's parts, their pictures read from this work "
                "folder of the build that made it, each prompted with its nearest other part (replaces "
                "--train-json and --eval-json)"})
    retrieval_prompt: bool = field(default=True, metadata={
        "help": "with --library-build: each row prompted with its nearest other part; --no-retrieval-prompt: "
                "the same rows and pictures without prompts (the plain model, to compare at equal cost)"})
    stream_prompts: bool = field(default=False, metadata={
        "help": "with --stream: train retrieve-and-edit on fresh samples, each prompted with its nearest part of "
                "the shipped part library (what a new picture gets), the model reading full pictures"})
    init_from: str | None = field(default=None, metadata={
        "help": "start from the weights of this saved model (its sizes, tokenizer and image processor)"})

    def __post_init__(self):
        super().__post_init__()
        if self.stream and not self.max_steps:
            raise TrainingError("--stream needs --max-steps (a stream has no epochs)")
        if bool(self.encoder) != bool(self.decoder):
            raise TrainingError("--encoder and --decoder go together")
        if self.init_from and self.encoder:
            raise TrainingError("--init-from and --encoder/--decoder are two ways to start: give one")
        if not self.retrieval_prompt and not self.library_build:
            raise TrainingError("--no-retrieval-prompt goes with --library-build (the library's rows without prompts)")
        if self.stream_prompts and not self.stream:
            raise TrainingError("--stream-prompts prompts streamed samples: it goes with --stream")
        if self.library_build and self.stream:
            raise TrainingError("--library-build trains on the library's parts: it does not go with --stream")
        if self.mixed_precision not in ("no", "bf16", "fp16", "auto"):
            raise TrainingError(f"--mixed-precision must be no, bf16, fp16 or auto, got {self.mixed_precision!r}")
        if self.length_group_batches < 1:
            raise TrainingError("--length-group-batches must be at least 1")


CONFIG_HELP = "JSON file of arguments (keys: the option names with '_'); flags given after it win"


def read_config(path: str, arguments_class) -> dict:
    """The arguments in a JSON config file, refusing keys the script does not know."""
    try:
        config = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise TrainingError(f"no config file at {path}") from None
    except (OSError, json.JSONDecodeError) as e:
        raise TrainingError(f"cannot read the config file {path}: {e}") from None
    if not isinstance(config, dict):
        raise TrainingError(f"{path} must hold one JSON object of arguments")
    unknown = sorted(set(config) - {f.name for f in fields(arguments_class)})
    if unknown:
        raise TrainingError(f"{path}: unknown argument(s) {', '.join(unknown)} (see --help)")
    return config


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's default after its help, unless the help names its own; a description of several
    lines (a script's docstring) kept as written, a one-line one wrapped."""

    def _get_help_string(self, action):
        if "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)

    def _fill_text(self, text, width, indent):
        if "\n" in text.strip():
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def _option_type(annotation):
    """The type argparse converts a value with: ``X`` for ``X | None`` and for ``list[X]``."""
    if get_origin(annotation) in (Union, UnionType, list):
        return next(a for a in get_args(annotation) if a is not type(None))
    return annotation


def parse_arguments(arguments_class, description: str, argv: list[str], config: bool = True,
                    prog: str | None = None):
    """Flags (with ``config``, optionally after a JSON config file) into one ``arguments_class`` instance."""
    from transformers import HfArgumentParser  # ~0.6 s, but no torch: --help stays quick

    class Parser(HfArgumentParser):
        @staticmethod
        def _parse_dataclass_field(parser, field):
            kwargs = {k: v for k, v in field.metadata.items() if k != "positional"}
            if field.metadata.get("positional"):
                if field.default is not MISSING:
                    kwargs.update(nargs="?", default=field.default)
                parser.add_argument(field.name, type=_option_type(field.type), **kwargs)
            elif "nargs" in kwargs:  # a list option that may be given empty (nargs="*"), which the base refuses
                names = dict.fromkeys([f"--{field.name}", f"--{field.name.replace('_', '-')}"])
                default = field.default_factory() if field.default_factory is not MISSING else field.default
                parser.add_argument(*names, type=_option_type(field.type), default=default, **kwargs)
            else:
                HfArgumentParser._parse_dataclass_field(parser, field)

    parser = Parser(arguments_class, description=description, prog=prog, formatter_class=_HelpFormatter)
    for action in parser._actions:  # usage and help show the dashed spelling first: --max-mb, then --max_mb
        action.option_strings.sort(key=lambda option: "_" in option)
    if config:
        parser.add_argument("config", nargs="?", help=CONFIG_HELP)
        known, _ = parser.parse_known_args(argv)
        if known.config:
            parser.set_defaults(**read_config(known.config, arguments_class))
    namespace, unknown = parser.parse_known_args(argv)
    if unknown:  # before the arguments' own checks run
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return arguments_class(**{f.name: getattr(namespace, f.name) for f in fields(arguments_class) if f.init})


def parse_cli(arguments_class, description: str, argv: list[str] | None = None, config: bool = True,
              prog: str | None = None):
    """A script's arguments as one ``arguments_class`` instance (flags, with ``config`` optionally
    after a JSON config file); bad input is one error line and exit code 2. ``prog``: the command
    shown in the usage line (default: the script's file name)."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        return parse_arguments(arguments_class, description, argv, config, prog)
    except ArgumentError as e:
        raise SystemExit(fail(e)) from None


def parse_training_cli(arguments_class, description: str, argv: list[str] | None = None) -> TrainingArguments:
    """The training scripts' arguments: every option, the basic script's subset at its values."""
    args = parse_cli(arguments_class, description, argv)
    try:
        return TrainingArguments(**asdict(args))
    except ArgumentError as e:
        raise SystemExit(fail(e)) from None
