"""Throughput of the synthetic data pipeline: sample -> execute (sandboxed) -> validate -> render.

    python benchmarks/bench_data.py [--n 200] [--workers 2]

Prints one table: seconds per stage in-process (1 core), and end-to-end samples/s through the
executor with N workers, per core. Numbers depend on machine load: say what else was running.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200, help="draws per measurement")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=123)
    args = parser.parse_args()
    if args.n < 1 or args.workers < 1:
        parser.error("--n and --workers must be >= 1")

    from img2cq import data
    from img2cq.executor import Executor
    from img2cq.render import render_png
    from img2cq.sampler import sample_program

    t = time.perf_counter()
    codes = [sample_program(data.draw_rng(args.seed, "train", i)) for i in range(args.n)]
    t_sample = (time.perf_counter() - t) / args.n

    shapes, t_exec = [], 0.0
    for code in codes:
        t = time.perf_counter()
        try:
            namespace = {}
            exec(code, namespace)
            shapes.append(namespace["solid"].val())
        except Exception:
            pass
        t_exec += time.perf_counter() - t
    t_exec /= args.n
    t = time.perf_counter()
    for shape in shapes:
        render_png(shape)
    t_render = (time.perf_counter() - t) / max(1, len(shapes))

    with Executor(workers=args.workers, preload=("img2cq.render",)) as ex:
        ex.run("import cadquery as cq\nsolid = cq.Workplane().box(1, 1, 1)\n")  # workers warm
        t = time.perf_counter()
        seen: set = set()
        accepted = sum(rec["reason"] is None for rec in data.generate_draws(ex, args.seed, "train", 0, args.n, seen))
        wall = time.perf_counter() - t

    print(f"{'stage':<44} {'value':>10}")
    print(f"{'sample_program (ms/draw, 1 core)':<44} {t_sample * 1e3:>10.2f}")
    print(f"{'exec in-process (ms/draw, 1 core)':<44} {t_exec * 1e3:>10.1f}")
    print(f"{'render_png 448 px (ms/part, 1 core)':<44} {t_render * 1e3:>10.1f}")
    print(f"{'in-process ceiling (samples/s/core)':<44} {1 / (t_sample + t_exec + t_render):>10.1f}")
    print(f"{f'executor end-to-end, {args.workers} workers (draws/s)':<44} {args.n / wall:>10.1f}")
    print(f"{'executor end-to-end (accepted samples/s)':<44} {accepted / wall:>10.1f}")
    print(f"{'executor end-to-end (accepted/s per worker)':<44} {accepted / wall / args.workers:>10.1f}")
    print(f"{'acceptance':<44} {accepted / args.n:>10.1%}")
    print(f"draws={args.n} workers={args.workers} seed={args.seed} cpus={os.cpu_count()} "
          f"load_avg_1min={os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
