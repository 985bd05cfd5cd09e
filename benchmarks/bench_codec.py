"""What the program codec loses and what it saves: round-trip IoU and tokens per program.

    python benchmarks/bench_codec.py [--sampler 500] [--real ../shared/reference/gencad-code-train-sample.jsonl]

For sampler programs (seed ``--seed``) and, where the file is present, the real GenCAD-Code sample,
every program goes program -> canonical form -> program (``img2cq.codec``). Both versions run in
the sandboxed executor; the table gives, over the programs whose original builds a valid solid,
the share whose round trip still builds one and the IoU between the two (an invalid round trip
scores 0): median, 5th percentile, worst. A second table counts tokens per program with the codec
tokenizer and with the shipped byte-level BPE. ``--sketch-levels`` measures another sketch grid.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REAL = ROOT.parent / "shared" / "reference" / "gencad-code-train-sample.jsonl"


def _sampler_programs(n: int, seed: int) -> list[str]:
    import numpy as np

    from img2cq.sampler import sample_program

    rng = np.random.default_rng(seed)
    return [sample_program(rng) for _ in range(n)]


def _round_trip_rows(name: str, programs: list[str], executor) -> tuple[dict, list]:
    import numpy as np

    from img2cq import codec
    from metrics.best_iou import iou_from_results

    canonical, outside = [], []
    for p in programs:
        try:
            canonical.append(codec.canonical_program(p))
        except codec.CodecError as e:
            canonical.append(None)
            outside.append(str(e))
    kept = [i for i, c in enumerate(canonical) if c is not None]
    results = executor.map([programs[i] for i in kept] + [canonical[i] for i in kept],
                           progress=f"executing {name}", mesh=True, brep=True)
    originals, trips = results[:len(kept)], results[len(kept):]
    ious, failures, scored = [], [], []
    for i, a, b in zip(kept, originals, trips):
        if not a.ok:
            continue
        if not b.ok:
            ious.append(0.0)
            failures.append(f"{name} #{i}: {b.error_kind}: {b.message}")
            continue
        ious.append(iou_from_results(a, b, executor=executor))
        scored.append((ious[-1], i))
    failures += [f"{name} #{i}: IoU {iou:.4f}" for iou, i in sorted(scored)[:5]]
    ious = np.array(ious)
    exact = sum(c == p for c, p in zip(canonical, programs))
    row = {"set": name, "programs": len(programs), "outside grammar": len(outside),
           "valid originals": len(ious), "still valid": float(np.mean(ious > 0)) if len(ious) else float("nan"),
           "median IoU": float(np.median(ious)), "p5 IoU": float(np.percentile(ious, 5)),
           "worst IoU": float(ious.min()), "text unchanged": exact}
    return row, failures + [f"{name}: outside grammar: {e}" for e in outside]


def _token_row(name: str, programs: list[str], codec_tok, bpe_tok) -> dict:
    import numpy as np

    from img2cq import codec
    from img2cq.tokenizer import encode_program

    inside = []
    for p in programs:
        try:
            codec.parse(p)
            inside.append(p)
        except codec.CodecError:
            pass
    stats = {}
    for label, tok in (("codec", codec_tok), ("bpe", bpe_tok)):
        counts = np.array([len(encode_program(tok, p)) for p in inside])
        stats[label] = counts
    ratio = stats["bpe"] / stats["codec"]
    return {"set": name, **{f"{label} {k}": f(v) for label, v in stats.items()
                            for k, f in (("median", np.median), ("mean", np.mean),
                                         ("p95", lambda x: np.percentile(x, 95)), ("max", np.max))},
            "bpe/codec median ratio": float(np.median(ratio)), "bpe/codec total ratio": float(stats["bpe"].sum() / stats["codec"].sum())}


def _print_table(rows: list[dict]) -> None:
    keys = list(rows[0])
    width = max(len(k) for k in keys)
    for k in keys:
        cells = [f"{r[k]:.4f}" if isinstance(r[k], float) else str(r[k]) for r in rows]
        print(f"{k:<{width}}  " + "  ".join(f"{c:>12}" for c in cells))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sampler", type=int, default=500, help="sampler programs to measure")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--real", default=str(DEFAULT_REAL), help="jsonl of real GenCAD-Code programs (field cadquery)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--sketch-levels", type=int, default=None, help="measure another per-sketch grid")
    parser.add_argument("--distance-levels", type=int, default=None,
                        help="measure another grid for plane origins and extrusion distances (steps per unit)")
    parser.add_argument("--failures", action="store_true", help="list every failed round trip")
    args = parser.parse_args(argv)

    from img2cq import codec
    from img2cq.sandbox import Executor
    from img2cq.tokenizer import load_codec_tokenizer, load_tokenizer

    if args.sketch_levels:
        codec.SKETCH_LEVELS = args.sketch_levels
    if args.distance_levels:
        codec.DISTANCE_LEVELS, codec.NUMBER_RANGE = args.distance_levels, 2 * args.distance_levels
    variant = args.sketch_levels or args.distance_levels
    sets = [("sampler", _sampler_programs(args.sampler, args.seed))]
    if Path(args.real).is_file():
        sets.append(("real", [json.loads(line)["cadquery"] for line in open(args.real)]))
    else:
        print(f"note: {args.real} not found; measuring sampler programs only")
    print(f"sketch grid: {codec.SKETCH_LEVELS} steps per sketch scale; origins and distances: "
          f"{codec.DISTANCE_LEVELS} steps per unit; load {os.getloadavg()[0]:.2f}")
    rows, failures = [], []
    with Executor(workers=args.workers) as ex:
        for name, programs in sets:
            row, fails = _round_trip_rows(name, programs, ex)
            rows.append(row)
            failures += fails
    print("\nround trip program -> canonical -> program")
    _print_table(rows)
    if not variant:  # the shipped tokenizer holds the default grids only
        codec_tok, bpe_tok = load_codec_tokenizer(), load_tokenizer()
        print("\ntokens per program (programs inside the grammar, no bos/eos)")
        _print_table([_token_row(name, programs, codec_tok, bpe_tok) for name, programs in sets])
    if failures:
        print(f"\n{len(failures)} failures and lowest IoUs" + (":" if args.failures else " (--failures lists them)"))
        for f in failures if args.failures else []:
            print("  " + f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
