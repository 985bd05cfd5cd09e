"""Synthetic split throughput: the local sandbox pool against a local Dask cluster with as many workers.

    python benchmarks/bench_cluster.py --samples 100 --workers 2

Both runs generate the same split (same seed) back to back, each on an executor started and warmed
up beforehand (start-up is reported apart), and the two outputs are checked to be byte-identical.
Prints a table with samples/s, the cluster/local ratio and the load (`uptime`) before and after.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def files(out: Path) -> dict:
    """The rows and images of a split directory, as bytes."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


def run(kind: str, workers: int, out: Path, samples: int, seed: int, size: int) -> dict:
    from img2cq import data
    from img2cq.cluster import connect
    from img2cq.executor import Executor

    started = time.perf_counter()
    executor = (Executor(workers=workers, preload=("img2cq.render",)) if kind == "local pool"
                else connect("local", workers=workers, preload=("img2cq.render",)))
    executor.map([data.seamed_program("import cadquery as cq\nsolid = cq.Workplane().box(1, 1, 1)\n")] * workers,
                 mesh=False, postprocess="img2cq.data:validate_and_render", postprocess_kwargs={"size": size})
    startup = time.perf_counter() - started
    started = time.perf_counter()
    with executor:
        stats = data.write_synthetic_split(out, "train", samples, seed, executor, set(), 64,
                                           {"size": size, "seed": seed}, progress=False)
    elapsed = time.perf_counter() - started
    return {"kind": kind, "startup_s": startup, "split_s": elapsed, "draws": stats["draws"],
            "samples_per_s": samples / elapsed}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=448, help="image size in pixels")
    args = parser.parse_args(argv)
    if args.samples < 1 or args.workers < 1:
        parser.error("need --samples >= 1 and --workers >= 1")

    with tempfile.TemporaryDirectory() as tmp:
        print(f"load before: {load()}")
        rows = [run(kind, args.workers, Path(tmp) / kind.replace(" ", "_"), args.samples, args.seed, args.size)
                for kind in ("local pool", "dask cluster")]
        print(f"load after:  {load()}")
        local, cluster = (Path(tmp) / k for k in ("local_pool", "dask_cluster"))
        same = files(local) == files(cluster)
    print(f"\n{args.samples} samples, seed {args.seed}, {args.size} px, {args.workers} workers; "
          f"outputs byte-identical: {same}\n")
    print(f"| {'executor':<13} | start-up s | split s | draws | samples/s |")
    print(f"|{'-' * 15}|-----------:|--------:|------:|----------:|")
    for r in rows:
        print(f"| {r['kind']:<13} | {r['startup_s']:10.1f} | {r['split_s']:7.1f} | {r['draws']:5d} | "
              f"{r['samples_per_s']:9.2f} |")
    print(f"\ncluster / local throughput: {rows[1]['samples_per_s'] / rows[0]['samples_per_s']:.2f}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
