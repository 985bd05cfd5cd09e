"""Fit the agreement: a linear estimate of 3D IoU from how two pictures compare.

    python scripts/fit_agreement.py --library models/part-library --queries 160 --shortlist 24

Query parts are sampler draws of a seed of their own (never library parts, never evaluation
parts). Each query's picture retrieves its ``--shortlist`` nearest library parts; every candidate
is rendered and compared with the query's picture (``agreement.comparison``), and its true 3D IoU
with the query part is measured by the project's metric (``build.structure_ious``; sampler
structures only, built by CadQuery calls in the build workers). A ridge regression from the
standardised comparison features to the IoU is fitted on 3/4 of the queries and reported on the
rest (mean Spearman correlation per query, IoU of the candidate each score keeps), then refitted on
all and written to ``img2cq/assets/agreement.json`` with how it was made. Pairs are cached in
``--work``, so a stopped run resumes.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--library", default=None, help="part library (default: the shipped one)")
    p.add_argument("--queries", type=int, default=160)
    p.add_argument("--shortlist", type=int, default=24)
    p.add_argument("--seed", type=int, default=4242, help="sampler seed of the query parts")
    p.add_argument("--ridge", type=float, default=1.0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--work", type=Path, default=Path("runs/fit-agreement"))
    p.add_argument("--out", type=Path, default=ROOT / "img2cq" / "assets" / "agreement.json")
    args = p.parse_args(argv)
    if args.queries < 8 or args.shortlist < 2:
        p.error("need --queries >= 8 and --shortlist >= 2")
    return args


def query_pairs(args, library) -> list[dict]:
    """Per query: comparison features and true IoU of each shortlisted part (cached per query)."""
    import numpy as np
    from tqdm.auto import tqdm

    from img2cq import agreement, library as lib
    from img2cq.build import BuildPool, structure_ious, structure_views

    args.work.mkdir(parents=True, exist_ok=True)
    out = []
    with BuildPool(args.workers) as pool:
        drawn = pool.map(lib.draw_part, [(args.seed, q) for q in range(args.queries)])
        for q, part in enumerate(tqdm(drawn, desc="query parts", unit="query")):
            path = args.work / f"seed{args.seed}-query{q:05d}-k{args.shortlist}-n{len(library)}.npz"
            if path.is_file():
                with np.load(path) as data:
                    out.append({k: data[k] for k in data.files})
                continue
            if part is None or part["reject"] is not None:
                continue
            query = lib.codec.from_tokens(part["tokens"].split())
            n = agreement.RESOLUTION
            views = np.unpackbits(part["views"])[:2 * n * n].reshape(2, n, n).astype(bool)
            reference = agreement.Masks.from_reduced(views[0], views[1])
            shortlist = library.nearest_features(lib.grey_features(part["thumb"][None])[0], args.shortlist)
            candidates = [library.sketches(i) for i in shortlist]
            rendered = pool.map(structure_views, candidates)
            pieces = pool.map(structure_ious, [(query, candidates[k::args.workers]) for k in range(args.workers)])
            ious = [None] * len(candidates)
            for k, piece in enumerate(pieces):
                ious[k::args.workers] = piece or [None] * len(candidates[k::args.workers])
            rows = [(agreement.comparison(reference, agreement.Masks.from_views(agreement.unpack_views(v))), iou)
                    for v, iou in zip(rendered, ious) if v is not None and iou is not None]
            if len(rows) < 2:
                continue
            record = {"features": np.stack([r[0] for r in rows]), "iou": np.array([r[1] for r in rows])}
            np.savez(path, **record)
            out.append(record)
    return out


def fit(records: list[dict], ridge: float) -> dict:
    import numpy as np

    x = np.concatenate([r["features"] for r in records])
    y = np.concatenate([r["iou"] for r in records])
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-9
    z = (x - mean) / scale
    coefficients = np.linalg.solve(z.T @ z + ridge * np.eye(z.shape[1]), z.T @ (y - y.mean()))
    return {"mean": mean.tolist(), "scale": scale.tolist(), "coefficients": coefficients.tolist(),
            "intercept": float(y.mean())}


def report(records: list[dict], weights: dict | None) -> tuple[float, float]:
    """(mean Spearman per query, mean IoU of the kept candidate) of a scoring."""
    import numpy as np
    from scipy.stats import spearmanr

    from img2cq.agreement import score_features

    rhos, kept = [], []
    for r in records:
        scores = np.array([score_features(f, weights) for f in r["features"]])
        kept.append(r["iou"][int(np.argmax(scores))])
        if r["iou"].std() > 0 and scores.std() > 0:
            rhos.append(spearmanr(scores, r["iou"]).statistic)
    return float(np.mean(rhos)), float(np.mean(kept))


def main(argv=None) -> int:
    args = parse_args(argv)
    import numpy as np

    from img2cq.agreement import FEATURES
    from img2cq.data import provenance
    from img2cq.library import PartLibrary

    try:
        library = PartLibrary.load(*([args.library] if args.library else []))
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    records = query_pairs(args, library)
    split = len(records) * 3 // 4
    held_out = fit(records[:split], args.ridge)
    for name, weights in [("fixed mix", None), ("fitted", held_out)]:
        rho, kept = report(records[split:], weights)
        print(f"{name:<10} on {len(records) - split} held-out queries: Spearman {rho:.3f}, kept IoU {kept:.3f}")
    print(f"feature-nearest kept IoU {np.mean([r['iou'][0] for r in records[split:]]):.3f}, "
          f"oracle {np.mean([r['iou'].max() for r in records[split:]]):.3f}")
    final = fit(records, args.ridge)
    rho, kept = report(records[split:], held_out)
    args.out.write_text(json.dumps({
        "features": list(FEATURES), **final,
        "made_by": {**provenance(), "queries": len(records), "pairs": int(sum(len(r["iou"]) for r in records)),
                    "query_seed": args.seed, "shortlist": args.shortlist, "ridge": args.ridge,
                    "library": library.card.get("parts"), "held_out_spearman": rho, "held_out_kept_iou": kept,
                    "seconds": round(time.perf_counter() - started)}}, indent=1) + "\n")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
