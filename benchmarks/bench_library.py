"""Nearest-part IoU against library size and retrieval features, on the real-part benchmark and
the synthetic test split.

Reads the work folder of a library build (``scripts/build_library.py``), so that every size and
feature variant comes from the same draws: the first N distinct parts form a library of size N.
For each evaluation picture the nearest part (one feature vector per picture, squared distance)
is looked up and its program scored against the picture's own program by 3D IoU (the project's
metric, every program run in the sandbox). Features are chosen on the synthetic split; the
real-part column only reports.

    python benchmarks/bench_library.py --work runs/library-build --sizes 1562 6250 25000 100000 200000 300000 \\
        --features raw32 pca64 pca128 pca256 --eval-json data/synthetic-1000/test.jsonl:200 \\
        benchmarks/real_dev/test.jsonl
"""
from __future__ import annotations

import argparse
import os
import sys
import time


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default="runs/library-build", help="work folder of a library build")
    p.add_argument("--seed", type=int, default=None, help="the build's seed (default: the library default)")
    p.add_argument("--sizes", type=int, nargs="+", default=[1562, 6250, 25000, 100000, 200000, 300000])
    p.add_argument("--features", nargs="+", default=["raw32", "pca64"],
                   help="rawS (S x S grey, S in 8/16/32/64) or pcaD (32 x 32 grey on D principal components)")
    p.add_argument("--eval-json", nargs="+", default=["benchmarks/real_dev/test.jsonl"],
                   help="splits to score, each optionally PATH:N for its first N rows")
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()

    import numpy as np

    from img2cq import codec, library
    from img2cq.data import load_split, read_rows
    from img2cq.sandbox import Executor
    from img2cq.scoring import execute, score_executed

    seed = library.DEFAULT_SEED if args.seed is None else args.seed
    held_out = {row["cadquery"] for spec in args.eval_json for row in read_rows(spec.split(":")[0])}
    started = time.perf_counter()
    tokens, thumbs, counts = library.distinct_parts(args.work, max(args.sizes), seed, held_out)
    print(f"read {len(tokens)} distinct parts in {time.perf_counter() - started:.0f} s: {counts}")

    def features(name: str, thumbnails):
        if name.startswith("raw"):
            return library.grey_features(thumbnails, int(name[3:]))
        return library.grey_features(thumbnails)

    rows = []
    with Executor(workers=args.workers) as ex:
        for spec in args.eval_json:
            path, _, n = spec.partition(":")
            split = load_split(path)
            split = split.select(range(min(int(n), len(split)))) if n else split
            references = execute(list(split["cadquery"]), ex)
            query_thumbs = np.stack([library.picture_thumbnail(_framed(row["image"])) for row in split])
            for name in args.features:
                for size in args.sizes:
                    lib_f = features(name, thumbs[:size])
                    query_f = features(name, query_thumbs)
                    if name.startswith("pca"):
                        mean, components = library.fit_projection(lib_f, int(name[3:]))
                        lib_f, query_f = (lib_f - mean) @ components.T, (query_f - mean) @ components.T
                    distance = (lib_f ** 2).sum(1)[None] - 2 * query_f @ lib_f.T
                    nearest = distance.argmin(axis=1)
                    programs = [codec.to_program(codec.from_tokens(tokens[i].split())) for i in nearest]
                    scores = score_executed(references, execute(programs, ex), ex)
                    rows.append((os.path.basename(os.path.dirname(path)) + "/" + os.path.basename(path), len(split),
                                 name, size, scores["vsr"], scores["iou"]))
                    print(f"{rows[-1][0]:<32} n={rows[-1][1]:<4} {name:<7} {size:>7} parts: "
                          f"VSR {scores['vsr']:.3f} IoU {scores['iou']:.3f}", flush=True)
    print(f"load average {os.getloadavg()[0]:.1f}")
    return 0


def _framed(image):
    import numpy as np

    from img2cq.agreement import framed_grey

    return framed_grey(np.asarray(image.convert("RGB")))


if __name__ == "__main__":
    sys.exit(main())
