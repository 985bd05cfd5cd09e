"""Valid Syntax Rate (VSR): the share of programs that run and produce a solid.

A program counts as valid when the sandboxed executor runs it without error and its result
(`solid`, else the other usual names, else the last assigned shape) holds at least one solid
that passes the B-rep validity check and has a positive volume. Programs run through
`img2cq.scoring` with the same executor options as the IoU and every evaluation, so a program
valid here is valid everywhere. Every failure is reported as "kind: message" with the
executor's error kind (syntax, runtime, timeout, empty, ...).

    python -m metrics.valid_syntax_rate predictions.jsonl --field prediction
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

from img2cq.console import fail
from img2cq.data import DataError, read_programs
from img2cq.sandbox import ProgramRunner
from img2cq.scoring import execute, executor_or_new
from img2cq.training_args import parse_cli

CODE_FIELDS = ("cadquery", "code", "prediction")


def load_programs(path: str | os.PathLike, field: str | None = None) -> dict[str, str]:
    """Programs keyed by id from a .py file, a folder of .py files, or a JSONL file.

    A .py file's id is its stem. A JSONL row's id is its "id" field, else its line number; its code
    is `field`, else the first of "cadquery", "code", "prediction" present. A file or folder that
    cannot be used raises `img2cq.data.DataError`, naming the line.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.py"))
        if not files:
            raise DataError(f"{path}: folder holds no .py files")
        return {f.stem: _read_program(f) for f in files}
    if not path.is_file():
        raise DataError(f"{path}: no such file or folder")
    if path.suffix == ".py":
        return {path.stem: _read_program(path)}
    programs: dict[str, str] = {}
    for line, row, code in read_programs(path, (field,) if field else CODE_FIELDS):
        key = str(row.get("id", line))
        if key in programs:
            raise DataError(f"{path}:{line}: duplicate id {key!r}")
        programs[key] = code
    return programs


def _read_program(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path}: {e}") from None


def evaluate_syntax_rate(codes: dict[str, str], verbose: bool = False, executor: ProgramRunner | None = None,
                         workers: int | None = None, timeout: float | None = None) -> dict:
    """Run every program in the sandbox (as `img2cq.scoring` does for IoU); count those that build a valid solid.

    Uses `executor` if given, else a temporary one with `workers` (default: CPU count) and
    `timeout` seconds per program (default: the executor's).
    """
    ids = list(codes)
    results = []
    if ids:
        with executor_or_new(executor, min(workers or os.cpu_count() or 1, len(ids)), timeout) as ex:
            results = execute([codes[i] for i in ids], ex, progress="VSR" if verbose else False)
    failures = {i: r.reason for i, r in zip(ids, results) if not r.ok}
    total, invalid = len(ids), len(failures)
    return {"total": total, "valid": total - invalid, "invalid": invalid,
            "vsr": (total - invalid) / total if total else 0.0, "failures": failures}


def evaluate_syntax_rate_simple(codes: dict[str, str]) -> float:
    """Just the VSR in [0, 1]."""
    return evaluate_syntax_rate(codes)["vsr"]


@dataclasses.dataclass
class VsrArguments:  # dataclasses.field: the option --field shadows a bare field() in this body
    path: str = dataclasses.field(metadata={
        "positional": True, "help": "a .py file, a folder of .py files, or a JSONL file"})
    field: str | None = dataclasses.field(default=None, metadata={
        "help": f"JSONL field holding the code (default: first of {', '.join(CODE_FIELDS)})"})
    workers: int = os.cpu_count() or 1
    timeout: float = dataclasses.field(default=10.0, metadata={"help": "seconds per program"})
    verbose: bool = dataclasses.field(default=False, metadata={"help": "show a progress bar"})


def main(argv: list[str] | None = None) -> int:
    args = parse_cli(VsrArguments, "Share of CadQuery programs that run and produce a solid.", argv, config=False,
                     prog="python -m metrics.valid_syntax_rate")
    if args.workers < 1 or args.timeout <= 0:
        return fail("--workers must be >= 1 and --timeout > 0")
    try:
        codes = load_programs(args.path, args.field)
    except DataError as e:
        return fail(e)
    report = evaluate_syntax_rate(codes, verbose=args.verbose, workers=args.workers, timeout=args.timeout)
    for i, reason in report["failures"].items():
        print(f"{i}: {reason}")
    print(f"valid: {report['valid']}/{report['total']}  VSR: {report['vsr']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
