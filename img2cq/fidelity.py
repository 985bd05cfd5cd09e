"""How closely a set of GenCAD-style programs matches real GenCAD-Code, statistic by statistic.

    python -m img2cq.fidelity --n 2000 [--seed 0]     # fresh sampler programs (the training data's draws)
    python -m img2cq.fidelity FILE.jsonl              # any programs: rows with a `cadquery` field

Prints sketch-plane normals, symmetric extrusions, union : cut : intersect, the curve mix, the
one-sketch share and the median program length beside the real dataset's figures (pooled over 289
public GenCAD-Code programs, see DATASET.md), each marked ok or OFF against a tolerance, so the
sampler's resemblance to the real data is measured rather than assumed. `--check` exits 1 when a
row is OFF.
"""
from __future__ import annotations

import re
import statistics
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from img2cq.console import fail
from img2cq.training_args import ArgumentError, parse_cli


NORMALS = ("+Z", "-Y", "+X", "+Y", "tilted", "-Z", "-X")
OPS = ("union", "cut", "intersect")
CURVES = ("lineTo", "threePointArc", "circle")

# Real GenCAD-Code, pooled over 289 programs of public samples (131 train + 158 test rows), with
# the tolerance within which a set of programs counts as matching. Shares are fractions.
REAL = {"normal +Z": 0.51, "normal -Y": 0.33, "normal +X": 0.12, "normal +Y": 0.03, "normal tilted": 0.014,
        "normal -Z": 0.0, "normal -X": 0.0, "both=True per sketch": 0.07,
        "union share of ops": 0.66, "cut share of ops": 0.34, "intersect share of ops": 0.0,
        "curve lineTo": 0.74, "curve threePointArc": 0.12, "curve circle": 0.14,
        "one-sketch parts": 0.63, "median characters": 600.0}
TOLERANCE = {"normal +Z": 0.08, "normal -Y": 0.08, "normal +X": 0.05, "normal +Y": 0.03, "normal tilted": 0.02,
             "normal -Z": 0.02, "normal -X": 0.02, "both=True per sketch": 0.03,
             "union share of ops": 0.08, "cut share of ops": 0.08, "intersect share of ops": 0.02,
             "curve lineTo": 0.06, "curve threePointArc": 0.05, "curve circle": 0.05,
             "one-sketch parts": 0.06, "median characters": 110.0}

_PLANE = re.compile(r"cq\.Plane\(\s*cq\.Vector\([^)]*\)\s*,\s*cq\.Vector\([^)]*\)\s*,\s*cq\.Vector\(([^)]*)\)\s*\)")


def normal_key(components: list[float]) -> str:
    """'+Z', '-Y', ... for an axis-aligned normal, else 'tilted'."""
    axis = max(range(3), key=lambda i: abs(components[i]))
    v = components[axis]
    return ("+" if v > 0 else "-") + "XYZ"[axis] if abs(abs(v) - 1) < 1e-6 else "tilted"


def program_statistics(codes: list[str]) -> dict[str, float]:
    """The fidelity statistics of a list of programs (shares as fractions, length in characters)."""
    if not codes:
        raise ValueError("no programs")
    normals, ops, curves = Counter(), Counter(), Counter()
    sketches, both = [], 0
    for code in codes:
        planes = _PLANE.findall(code)
        sketches.append(len(planes))
        for vector in planes:
            normals[normal_key([float(x) for x in vector.split(",")])] += 1
        both += len(re.findall(r"both\s*=\s*True", code))
        for op in OPS:
            ops[op] += len(re.findall(rf"\.{op}\(", code))
        for curve in CURVES:
            curves[curve] += len(re.findall(rf"\.{curve}\(", code))
    n_normals, n_ops, n_curves = (max(1, sum(c.values())) for c in (normals, ops, curves))
    stats = {f"normal {k}": normals[k] / n_normals for k in NORMALS}
    stats["both=True per sketch"] = both / max(1, sum(sketches))
    stats.update({f"{op} share of ops": ops[op] / n_ops for op in OPS})
    stats.update({f"curve {c}": curves[c] / n_curves for c in CURVES})
    stats["one-sketch parts"] = sum(k == 1 for k in sketches) / len(codes)
    stats["median characters"] = float(statistics.median(len(c) for c in codes))
    return stats


def off_rows(stats: dict[str, float]) -> list[str]:
    """The statistics farther from the real figure than their tolerance."""
    return [k for k, v in stats.items() if abs(v - REAL[k]) > TOLERANCE[k]]


def format_table(stats: dict[str, float], label: str, n: int) -> str:
    """The statistics beside the real column, one row each."""
    off = set(off_rows(stats))
    show = lambda k, v: f"{v:.0f}" if k == "median characters" else f"{100 * v:.1f}%"
    tol = lambda k: f"{TOLERANCE[k]:.0f}" if k == "median characters" else f"{100 * TOLERANCE[k]:.0f} pts"
    lines = [f"{'statistic':<26} {label + f' (n={n})':>22} {'real GenCAD-Code':>17} {'tolerance':>10}  match"]
    for k, v in stats.items():
        lines.append(f"{k:<26} {show(k, v):>22} {show(k, REAL[k]):>17} {tol(k):>10}  {'OFF' if k in off else 'ok'}")
    return "\n".join(lines)


def sampler_programs(n: int, seed: int) -> list[str]:
    """The first n training draws of the sampler for this seed, exactly as the data engine draws them."""
    from img2cq.data import draw_rng
    from img2cq.sampler import sample_program

    return [sample_program(draw_rng(seed, "train", i)) for i in range(n)]


@dataclass
class FidelityArguments:
    jsonl: Path | None = field(default=None, metadata={
        "positional": True, "help": "programs to measure (rows with `cadquery`)"})
    n: int = field(default=2000, metadata={"help": "sampler programs to draw when no file is given"})
    seed: int = field(default=0, metadata={"help": "sampler seed (default 0)"})
    check: bool = field(default=False, metadata={"help": "exit 1 if any statistic is OFF"})

    def __post_init__(self):
        if self.n < 1 or self.seed < 0:
            raise ArgumentError("need --n >= 1 and --seed >= 0")


def main(argv=None) -> int:
    args = parse_cli(FidelityArguments, __doc__, argv, config=False, prog="python -m img2cq.fidelity")
    from img2cq.data import DataError, read_programs  # here: importing this module loads no numpy

    try:
        if args.jsonl is not None:
            codes, label = [p.code for p in read_programs(args.jsonl)], args.jsonl.name
        else:
            codes, label = sampler_programs(args.n, args.seed), f"sampler seed {args.seed}"
    except DataError as e:
        return fail(e)
    stats = program_statistics(codes)
    print(format_table(stats, label, len(codes)))
    off = off_rows(stats)
    print(("OFF: " + ", ".join(off)) if off else "all statistics within tolerance of the real dataset")
    return 1 if args.check and off else 0


if __name__ == "__main__":
    sys.exit(main())
