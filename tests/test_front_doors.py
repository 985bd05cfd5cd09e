"""The front doors read their arguments one way (``img2cq.training_args.parse_cli``): the dashed
flags users type, ``--help`` before anything heavy loads, and a refused value as one error line."""

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from img2cq.training_args import ArgumentError, parse_arguments

ROOT = Path(__file__).resolve().parents[1]

# (command, a flag its --help lists, arguments one of its checks refuses, the message)
FRONT_DOORS = [
    (["scripts/build_library.py"], "--exclude-programs-in", ["--dims", "0"], "1 <= --dims <= 1024"),
    (["scripts/train_comparator.py"], "--queries-per-step", ["--queries", "3"], "need --queries >= 50"),
    (["scripts/train_comparator.py"], "--earlier", ["--earlier", "no-such-folder:7000"], "no pair files of seed 7000"),
    (["scripts/train_comparator.py"], "--candidates", ["--candidates", "parts"], "--candidates is 'shortlists' or 'variants'"),
    (["scripts/train_comparator.py"], "--init", ["--init", "no-such-comparator"], "no comparator in no-such-comparator"),
    (["scripts/train_comparator.py"], "--join", ["--join", "models/agreement"], "--join takes two or more"),
    (["scripts/download_hf_dataset.py"], "--view-jitter-deg", ["--size", "8"], "--size >= 16"),
    (["scripts/export_model.py"], "--split-mib", ["only-a-model-dir"], "MODEL_DIR and OUT_DIR are needed"),
    (["scripts/render_programs.py"], "--id-prefix", ["a.jsonl", "out", "--workers", "0"], "need --workers >= 1"),
    (["-m", "img2cq.fidelity"], "--check", ["--n", "0"], "need --n >= 1"),
    (["-m", "img2cq.fitcheck"], "--min-share", ["no-such-split.jsonl"], "no such split file"),
    (["-m", "metrics.valid_syntax_rate"], "--field", ["x.py", "--timeout", "0"], "--timeout > 0"),
    (["-m", "metrics.best_iou"], "--pred-field", ["x.py", "y.py", "--timeout", "0"], "no such file or folder"),
]


def run(command, *args):
    return subprocess.run([sys.executable, *command, *args], capture_output=True, text=True, cwd=ROOT, timeout=120)


@pytest.mark.parametrize("command, flag, refused, message", FRONT_DOORS, ids=[c[0][-1] for c in FRONT_DOORS])
def test_help_lists_the_dashed_flags_and_a_refused_value_is_one_line(command, flag, refused, message):
    shown = run(command, "--help")
    assert shown.returncode == 0 and flag in shown.stdout.split("usage:")[1].split("\n\n")[0], shown.stdout[:2000]
    out = run(command, *refused)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith("error: ") and out.stderr.count("\n") == 1 and message in out.stderr, out.stderr


def test_help_loads_no_torch():
    probe = ("import runpy, sys; sys.argv = ['export_model.py', '--help']\n"
             "try:\n    runpy.run_path('scripts/export_model.py', run_name='__main__')\n"
             "except SystemExit:\n    pass\nprint('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0 and out.stdout.strip().endswith("False"), out.stderr[-2000:]


@dataclass
class Example:
    source: str = field(metadata={"positional": True, "help": "a file"})
    target: str | None = field(default=None, metadata={"positional": True})
    exclude_programs_in: list[str] = field(default_factory=list, metadata={"nargs": "*"})
    no_progress: bool = False

    def __post_init__(self):
        if self.source == "bad":
            raise ArgumentError("refused")


def test_positionals_lists_that_may_be_empty_and_both_spellings():
    args = parse_arguments(Example, "", ["a", "--exclude-programs-in", "--no-progress"], config=False)
    assert (args.source, args.target, args.exclude_programs_in, args.no_progress) == ("a", None, [], True)
    args = parse_arguments(Example, "", ["a", "b", "--exclude_programs_in", "x", "y"], config=False)
    assert (args.target, args.exclude_programs_in, args.no_progress) == ("b", ["x", "y"], False)
    with pytest.raises(ArgumentError, match="refused"):
        parse_arguments(Example, "", ["bad"], config=False)
    with pytest.raises(SystemExit):  # an unknown flag is refused before the arguments' own checks
        parse_arguments(Example, "", ["bad", "--no-such-flag"], config=False)
