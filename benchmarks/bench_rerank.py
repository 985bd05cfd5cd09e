"""Re-ranking a library shortlist by agreement: recall against the oracle, and rank correlation.

For each evaluation picture, the ``--shortlist`` library parts nearest in retrieval features are
built and rendered (``img2cq.build``), scored by agreement with the picture, and also scored
against the picture's own program by 3D IoU (the project's metric, every program run in the
sandbox). Printed per split: IoU of the feature-nearest part, of the part the agreement keeps, of
the best part in the shortlist (the oracle), and the mean Spearman correlation between agreement
and 3D IoU among one picture's candidates. The renders and IoUs are cached (``--cache``), so that
agreement settings (``--resolutions``, ``--edge-weights``) are compared on the same candidates.

    python benchmarks/bench_rerank.py --eval-json data/synthetic-1000/test.jsonl:50 \\
        benchmarks/real_dev/test.jsonl --shortlist 32
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def candidates_of(split_spec: str, library, shortlist: int, workers: int, cache: Path) -> dict:
    """Views (packed) and 3D IoUs of each picture's shortlist, computed once and cached."""
    import numpy as np

    from img2cq.agreement import pack_views, views_from_image
    from img2cq.build import BuildPool, structure_views
    from img2cq.data import load_split
    from img2cq.sandbox import Executor
    from img2cq.scoring import execute, score_executed

    path, _, n = split_spec.partition(":")
    key = cache / f"{Path(path).parent.name}-{Path(path).stem}-{n or 'all'}-k{shortlist}-n{len(library)}.npz"
    if key.is_file():
        with np.load(key, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    split = load_split(path)
    split = split.select(range(min(int(n), len(split)))) if n else split
    shortlists = [library.nearest(row["image"], shortlist) for row in split]
    structures = [library.sketches(i) for ids in shortlists for i in ids]
    programs = [library.program(i) for ids in shortlists for i in ids]
    started = time.perf_counter()
    with BuildPool(workers) as pool:
        views = pool.map(structure_views, structures)
    render_s = (time.perf_counter() - started) / len(structures)
    with Executor(workers=workers) as ex:
        references = execute(list(split["cadquery"]), ex, progress="references")
        executed = execute(programs, ex, progress="candidates")
        pairs = [references[i // shortlist] for i in range(len(programs))]
        ious = [s["iou"] for s in score_executed(pairs, executed, ex, progress="scoring")["per_sample"]]
    empty = pack_views(np.zeros((2, 448, 448), bool))
    out = {"picture_views": np.stack([np.frombuffer(pack_views(views_from_image(r["image"])), np.uint8) for r in split]),
           "views": np.stack([np.frombuffer(v or empty, np.uint8) for v in views]),
           "built": np.array([v is not None for v in views]),
           "iou": np.array([-1.0 if v is None else v for v in ious]).reshape(len(split), shortlist),
           "render_s": np.array(render_s)}
    out["views"] = out["views"].reshape(len(split), shortlist, -1)
    out["built"] = out["built"].reshape(len(split), shortlist)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(key, **out)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--library", default=None, help="part library (default: the shipped one)")
    p.add_argument("--eval-json", nargs="+", default=["benchmarks/real_dev/test.jsonl"],
                   help="splits, each optionally PATH:N for its first N rows")
    p.add_argument("--shortlist", type=int, default=32)
    p.add_argument("--resolutions", type=int, nargs="+", default=[112])
    p.add_argument("--edge-weights", type=float, nargs="+", default=[0.5])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--cache", type=Path, default=Path("runs/bench_rerank"))
    args = p.parse_args()

    import numpy as np
    from scipy.stats import spearmanr

    from img2cq.agreement import Reference, agreement, unpack_views
    from img2cq.library import PartLibrary

    library = PartLibrary.load(args.library)
    for spec in args.eval_json:
        data = candidates_of(spec, library, args.shortlist, args.workers, args.cache)
        iou = np.maximum(data["iou"], 0.0)
        print(f"\n{spec}: {len(iou)} pictures, shortlist {args.shortlist} of {len(library)} parts, "
              f"{data['render_s'] * 1000:.0f} ms per render ({args.workers} workers, load {os.getloadavg()[0]:.1f})")
        print(f"  feature-nearest IoU {iou[:, 0].mean():.3f}   oracle (best of shortlist) IoU {iou.max(1).mean():.3f}")
        for resolution in args.resolutions:
            for weight in args.edge_weights:
                kept, rhos = [], []
                for picture in range(len(iou)):
                    reference = Reference.from_views(unpack_views(data["picture_views"][picture].tobytes()), resolution)
                    scores = np.array([agreement(reference, unpack_views(v.tobytes()), weight) if built else -1.0
                                       for v, built in zip(data["views"][picture], data["built"][picture])])
                    kept.append(iou[picture, int(np.argmax(scores))])
                    rho = spearmanr(scores, iou[picture]).statistic
                    if np.isfinite(rho):
                        rhos.append(rho)
                print(f"  agreement at {resolution:>3} px, edge weight {weight:.2f}: kept IoU {np.mean(kept):.3f}, "
                      f"Spearman {np.mean(rhos):.3f} (median {np.median(rhos):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
