"""How much would number edits of the kept parts buy, and does any judge find it?

For each picture of a split and the program a search kept for it (a ``bench_search.py`` cache),
every single-number variant of the kept structure on a grid (``structured.number_variants``: each
sketch's extrusion depth and scale by 0.5-2, its aspect by 0.79-1.26, its plane offset along the
normal by ±0.12-0.5 of the depth, each circle's radius by 0.63-1.59) is built (``img2cq.build``), rendered, and measured
against the picture's own program by the project's 3D IoU. Printed: the kept part's IoU; the best
variant's (the oracle: what a perfect judge would pick); and the variant each judge picks (the
kept part among them): the hand-made agreement at 112 and 448 px, the learned one, their mean.
``--oracle-rounds N`` then climbs the true IoU N rounds (the best variant of the best variant...):
the ceiling of number edits alone. ``--cache DIR`` keeps each picture's measured variants, so that
judges (``--also``: more saved comparators) are compared again in seconds.

    python benchmarks/bench_search.py --eval-json benchmarks/real_dev/test.jsonl --settings 8:64:7
    python benchmarks/bench_number_edits.py --eval-json benchmarks/real_dev/test.jsonl \\
        --kept runs/bench_search/real_dev-test-models_img2cq-cpu-greedy+cand8+short64+refine7+top7+blend.jsonl
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def true_ious(pool, truth: list, structures: list[list]) -> np.ndarray:
    """3D IoU of each structure with ``truth`` (0 where it does not build), one job each."""
    from img2cq.build import structure_ious

    return np.array([(r[0] or 0.0) if r else 0.0 for r in pool.map(structure_ious, [(truth, [s]) for s in structures])])


def measured_variants(pool, truth: list, structures: list[list], picture_views: np.ndarray) -> dict:
    """Of the kept structure and its number variants (``structures``), those that build: their index,
    true IoU, views at the agreement's resolution (packed) and hand-made agreement at 448 px."""
    from img2cq import agreement
    from img2cq.build import structure_views

    views = [None if v is None else agreement.unpack_views(v) for v in pool.map(structure_views, structures)]
    built = [k for k, v in enumerate(views) if v is not None]
    views = [views[k] for k in built]
    reduced = [np.stack(agreement.reduce_views(v, agreement.RESOLUTION)) for v in views]
    return {"iou": true_ious(pool, truth, [structures[k] for k in built]),
            "views": np.stack([np.packbits(r) for r in reduced]),
            "hand448": np.array(agreement.agreements(agreement.Masks.from_views(picture_views, 448), views)),
            "variant": np.array(built)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--eval-json", default="benchmarks/real_dev/test.jsonl")
    p.add_argument("--kept", type=Path, required=True, help="a bench_search.py cache: one {id, program} per line")
    p.add_argument("--samples", type=int, default=None, help="first N pictures (default: all)")
    p.add_argument("--oracle-rounds", type=int, default=1, help="rounds the oracle climbs the true IoU")
    p.add_argument("--comparator", default=None, help="learned agreement (default: the shipped one)")
    p.add_argument("--also", nargs="*", default=[], help="more learned agreements to compare (saved comparators)")
    p.add_argument("--cache", type=Path, default=None,
                   help="folder keeping each picture's measured variants, by picture and the variants' programs: "
                        "a second run with the same kept programs and grid only judges")
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()

    from scipy.stats import spearmanr
    from tqdm import tqdm

    from img2cq import agreement, codec
    from img2cq.build import BuildPool
    from img2cq.comparator import LearnedAgreement
    from img2cq.console import fail
    from img2cq.data import DataError
    from img2cq.evaluation import load_samples
    from img2cq.structured import number_variants

    if not args.kept.is_file():
        return fail(f"no such file: {args.kept} (run benchmarks/bench_search.py first)")
    kept = {row["id"]: row["program"] for row in map(json.loads, args.kept.read_text().splitlines())}
    try:
        rows = [r for r in load_samples(args.eval_json, args.samples) if r["id"] in kept]
        comparators = {"learned": LearnedAgreement.load(args.comparator),
                       **{f"learned ({name})": LearnedAgreement.load(name) for name in args.also}}
    except (DataError, FileNotFoundError) as e:
        return fail(e)
    judges = {"hand-made, 112 px": agreement.agreements}
    for name, learned in comparators.items():
        judges[name] = learned.scores
        judges[f"mean of {name} and hand-made"] = learned.blended_scores
    picked = {name: [] for name in ["kept", "oracle", "hand-made, 448 px", *judges, "oracle climbing"]}
    spearman = {name: [] for name in picked}
    if args.cache:
        args.cache.mkdir(parents=True, exist_ok=True)
    n = agreement.RESOLUTION
    with BuildPool(args.workers) as pool:
        pool.wait_ready()
        for row in tqdm(rows, desc="number edits", unit="img"):
            try:
                truth, start = codec.parse(row["cadquery"]), codec.parse(kept[row["id"]])
            except codec.CodecError:  # a kept program outside the codec has no numbers to edit here
                continue
            picture = agreement.views_from_image(row["image"])
            structures = [start] + number_variants(start)
            variants_key = hashlib.sha1(" | ".join(" ".join(codec.to_tokens(s)) for s in structures).encode())
            cached = args.cache / f"{row['id']}-{variants_key.hexdigest()[:16]}.npz" if args.cache else None
            if cached is not None and cached.is_file():
                with np.load(cached) as data:
                    measured = {k: data[k] for k in data.files}
            else:
                measured = measured_variants(pool, truth, structures, picture)
                if cached is not None:
                    np.savez(cached, **measured)
            ious = measured["iou"]
            views = [agreement.unpack_views(v, n) for v in measured["views"]]
            reference = agreement.Masks.from_views(picture)
            scores = {"hand-made, 448 px": measured["hand448"],
                      **{name: np.asarray(judge(reference, views)) for name, judge in judges.items()}}
            picked["kept"].append(ious[0])
            picked["oracle"].append(ious.max())
            for name, score in scores.items():
                picked[name].append(ious[int(np.argmax(score))])
                if np.ptp(ious) > 1e-6 and np.ptp(score) > 1e-9:
                    spearman[name].append(spearmanr(score, ious).correlation)
            best, best_iou = structures[measured["variant"][int(np.argmax(ious))]], ious.max()
            for _ in range(args.oracle_rounds - 1):
                variants = number_variants(best)
                climbed = true_ious(pool, truth, variants)
                if climbed.max() <= best_iou:
                    break
                best, best_iou = variants[int(np.argmax(climbed))], climbed.max()
            picked["oracle climbing"].append(best_iou)
    if args.oracle_rounds <= 1:
        del picked["oracle climbing"]
    base = np.array(picked["kept"])
    print(f"\n{args.eval_json}: {len(base)} kept parts of {args.kept.name}")
    print(f"{'pick among the kept part and its number variants':52s} {'IoU':>6s} {'paired':>16s} {'Spearman':>9s}")
    for name, values in picked.items():
        d = np.array(values) - base
        rho = f"{np.nanmean(spearman[name]):9.3f}" if spearman[name] else ""
        label = name + (f" ({args.oracle_rounds} rounds)" if name == "oracle climbing" else "")
        print(f"{label:52s} {np.mean(values):6.3f} {d.mean():+7.3f} ± {d.std(ddof=1) / np.sqrt(len(d)):.3f} {rho}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
