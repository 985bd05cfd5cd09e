"""How well agreement ranks a shortlist: each comparison feature, the shipped mix, and fitted mixes.

    python benchmarks/bench_agreement.py --queries 120 --shortlist 16

Query parts are sampler draws of a seed of their own (never library parts, never evaluation
parts). Each query's picture retrieves its ``--shortlist`` nearest library parts; every candidate
is rendered and compared with the query's picture (``agreement.comparison``), and its true 3D IoU
with the query part is measured by the project's metric (``build.structure_ious``: sampler
structures, built by CadQuery calls in the build workers). Printed: the mean Spearman correlation
with 3D IoU among one query's candidates, and the IoU of the candidate kept, for each feature
alone, the shipped mix (``agreement.score_features``), and, cross-validated over 4 folds of
queries, a ridge regression to IoU and a pairwise (RankNet-style) logistic fit. Pairs are cached in
``--work``, so a stopped run resumes.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--library", default=None, help="part library (default: the shipped one)")
    p.add_argument("--queries", type=int, default=160)
    p.add_argument("--shortlist", type=int, default=24)
    p.add_argument("--seed", type=int, default=4242, help="sampler seed of the query parts")
    p.add_argument("--ridge", type=float, default=1.0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--work", type=Path, default=Path("runs/fit-agreement"))
    args = p.parse_args(argv)
    if args.queries < 8 or args.shortlist < 2:
        p.error("need --queries >= 8 and --shortlist >= 2")
    return args


def query_pairs(args, library) -> list[dict]:
    """Per query: comparison features and true IoU of each shortlisted part (cached per query)."""
    import numpy as np
    from tqdm.auto import tqdm

    from img2cq import agreement, codec, library as lib
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
            query = codec.from_tokens(part["tokens"].split())
            n = agreement.RESOLUTION
            views = agreement.unpack_views(part["views"], n)
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


def standardise(records: list[dict]):
    import numpy as np

    x = np.concatenate([r["features"] for r in records])
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-9
    return lambda f: (f - mean) / scale


def fit_ridge(records: list[dict], ridge: float, standard):
    import numpy as np

    z = standard(np.concatenate([r["features"] for r in records]))
    y = np.concatenate([r["iou"] for r in records])
    w = np.linalg.solve(z.T @ z + ridge * np.eye(z.shape[1]), z.T @ (y - y.mean()))
    return lambda f: standard(f) @ w


def fit_pairwise(records: list[dict], ridge: float, standard, steps: int = 500):
    """Logistic regression on feature differences of candidate pairs whose IoUs differ."""
    import numpy as np

    differences, better = [], []
    for r in records:
        z = standard(r["features"])
        for i in range(len(z)):
            for j in range(len(z)):
                if abs(r["iou"][i] - r["iou"][j]) > 0.02:
                    differences.append(z[i] - z[j])
                    better.append(float(r["iou"][i] > r["iou"][j]))
    d, y, w = np.array(differences), np.array(better), np.zeros(len(differences[0]))
    for _ in range(steps):
        w -= d.T @ (1 / (1 + np.exp(-d @ w)) - y) / len(y) + ridge * w / len(y)
    return lambda f: standard(f) @ w


def report(records: list[dict], score) -> tuple[float, float]:
    """(mean Spearman per query, mean IoU of the kept candidate) of a scoring of feature rows."""
    import numpy as np
    from scipy.stats import spearmanr

    rhos, kept = [], []
    for r in records:
        scores = np.asarray(score(r["features"]), float)
        kept.append(r["iou"][int(np.argmax(scores))])
        if r["iou"].std() > 0 and scores.std() > 0:
            rhos.append(spearmanr(scores, r["iou"]).statistic)
    return float(np.mean(rhos)), float(np.mean(kept))


def main(argv=None) -> int:
    args = parse_args(argv)
    import numpy as np

    from img2cq.agreement import FEATURES, score_features
    from img2cq.library import PartLibrary

    try:
        library = PartLibrary.load(args.library)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    records = query_pairs(args, library)
    print(f"{len(records)} queries, {sum(len(r['iou']) for r in records)} pairs, shortlist {args.shortlist} of "
          f"{len(library)} parts, {time.perf_counter() - started:.0f} s (load {os.getloadavg()[0]:.1f})")
    print(f"feature-nearest kept IoU {np.mean([r['iou'][0] for r in records]):.3f}, "
          f"oracle {np.mean([r['iou'].max() for r in records]):.3f}")
    rows = [(name, report(records, lambda f, j=j: f[:, j] * (1 if j in (0, 1, 6) else -1)))
            for j, name in enumerate(FEATURES)]
    rows.append(("shipped mix", report(records, lambda f: [score_features(row) for row in f])))
    for name, fit in [("ridge to IoU", fit_ridge), ("pairwise logistic", fit_pairwise)]:
        folds = [report([r for i, r in enumerate(records) if i % 4 == k],
                        fit([r for i, r in enumerate(records) if i % 4 != k], args.ridge,
                            standardise([r for i, r in enumerate(records) if i % 4 != k]))) for k in range(4)]
        rows.append((f"{name} (4-fold)", tuple(np.mean(folds, axis=0))))
    print(f"{'score':28s} {'Spearman':>9s} {'kept IoU':>9s}")
    for name, (rho, kept) in rows:
        print(f"{name:28s} {rho:9.3f} {kept:9.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
