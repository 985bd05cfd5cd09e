"""Evaluation arguments as dataclasses, read by transformers' ``HfArgumentParser`` as the training
scripts' are (``img2cq.training_args.parse_cli``).

``EvaluationArguments``: enhanced_eval.py (a trained model); ``BaselineArguments``: baseline_eval.py.
The evaluation functions take them whole (``img2cq.evaluation``). This module imports nothing heavy,
so ``--help`` and a bad flag answer before torch or the evaluation code loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from img2cq.training_args import ArgumentError

CLUSTER_HELP = ("run the programs on a Dask cluster (scheduler address, auto = $DASK_SCHEDULER_ADDRESS, "
                "local = a cluster of --workers processes here)")


def _at_least_one(args, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ArgumentError(f"{name.replace('_', '-')} must be at least 1")


@dataclass
class EvaluationArguments:
    model_dir: str = field(metadata={"positional": True, "help": "directory written by a training script"})
    samples: int = field(default=50, metadata={"help": "test images to evaluate (the first N)"})
    eval_json: str = field(default="data/test.jsonl", metadata={"help": "test split (JSONL)"})
    num_beams: int = field(default=1, metadata={"help": "1: greedy; >1: beam search"})
    best_of: int | None = field(default=None, metadata={
        "help": "also sample N-1 programs per image and keep the first that builds a valid solid"})
    batch_size: int = field(default=8, metadata={"help": "images per generate() call"})
    workers: int = field(default=2, metadata={"help": "sandbox processes running programs"})
    cluster: str | None = field(default=None, metadata={"metavar": "ADDRESS|auto|local", "help": CLUSTER_HELP})
    max_new_tokens: int | None = field(default=None, metadata={"help": "default: the model's maximum length"})
    results_csv: str = field(default="results.csv", metadata={})
    output_dir: str | None = field(default=None, metadata={
        "help": "where the per-sample predictions go (default: runs/eval/<model directory name>)"})
    candidates: int = field(default=1, metadata={
        "help": "> 1: test-time search: the model proposes N programs per image (greedy, beam, sampled), "
                "the part library its nearest parts, and the one whose render agrees best is kept"})
    refine: float = field(default=0.0, metadata={
        "metavar": "SECONDS", "help": "test-time search: then edit the kept program (proportions, holes, "
                                      "sketches) for SECONDS per image"})
    shortlist: int | None = field(default=None, metadata={
        "help": "test-time search: library parts rendered and re-ranked per image (default 24 when "
                "--refine refines the best alone, under 2 s; else 64; 0: none)"})
    train_json: str | None = field(default=None, metadata={
        "help": "retrieve from this split's pictures instead of the part library (its library is "
                "built once and saved beside it)"})
    library: str | None = field(default=None, metadata={
        "metavar": "DIR", "help": "part library to retrieve from (default: the shipped one)"})

    def __post_init__(self):
        _at_least_one(self, ("samples", "num_beams", "best_of", "batch_size", "workers", "max_new_tokens"))
        if self.candidates < 1 or self.refine < 0 or (self.shortlist is not None and self.shortlist < 0):
            raise ArgumentError("--candidates must be >= 1, --refine and --shortlist >= 0")
        if self.searching and (self.num_beams > 1 or (self.best_of or 1) > 1):
            raise ArgumentError("--candidates/--refine replace --num-beams/--best-of: pass one or the other")

    @property
    def searching(self) -> bool:
        """Test-time search (``img2cq.search``) instead of plain decoding."""
        return self.candidates > 1 or self.refine > 0


@dataclass
class BaselineArguments:
    samples: int = field(default=50, metadata={"positional": True, "help": "test samples to score (the first N)"})
    eval_json: str = field(default="data/test.jsonl", metadata={"help": "test split (JSONL)"})
    train_json: str = field(default="data/train.jsonl", metadata={
        "help": "training split searched by the nearest-image baseline"})
    train_samples: int | None = field(default=None, metadata={"help": "search only the first N training images"})
    exclude_programs_in: str | None = field(default=None, metadata={
        "metavar": "SPLIT",
        "help": "leave out training images whose program is in this split (as the model's training did)"})
    no_train: bool = field(default=False, metadata={
        "help": "skip the nearest-training-image baseline (e.g. on a benchmark without a training split)"})
    library: str | None = field(default=None, metadata={
        "metavar": "DIR", "help": "part library of the nearest-library-part baseline (default: the shipped one)"})
    no_library: bool = field(default=False, metadata={"help": "skip the nearest-library-part baseline"})
    workers: int = field(default=2, metadata={"help": "sandbox processes running programs"})
    cluster: str | None = field(default=None, metadata={"metavar": "ADDRESS|auto|local", "help": CLUSTER_HELP})
    results_csv: str = field(default="results.csv", metadata={})
    output_dir: str | None = field(default=None, metadata={
        "help": "where the per-sample predictions go (default: runs/eval/baselines)"})

    def __post_init__(self):
        _at_least_one(self, ("samples", "train_samples", "workers"))
