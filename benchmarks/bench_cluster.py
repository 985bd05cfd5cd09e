"""Synthetic split throughput: the local sandbox pool against a local Dask cluster with as many workers.

    python benchmarks/bench_cluster.py --samples 100 --workers 2

Both runs generate the same split (same seed) back to back, each on an executor started and warmed
up beforehand (start-up is reported apart), and the two outputs are checked to be byte-identical.
With ``--rounds N`` the pair runs N times, the order alternating, so a load change on a shared
machine does not always favour the same side. Prints a table with samples/s, the cluster/local
ratio per round and the load (`uptime`) before and after.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def files(out: Path) -> dict:
    """The rows and images of a split directory, as bytes."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


def run(kind: str, workers: int, out: Path, samples: int, seed: int, size: int) -> dict:
    from img2cq import data
    from img2cq.sandbox import Executor, connect

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
    parser.add_argument("--rounds", type=int, default=1, help="pairs of runs, the order alternating")
    args = parser.parse_args(argv)
    if args.samples < 1 or args.workers < 1 or args.rounds < 1:
        parser.error("need --samples, --workers and --rounds >= 1")

    kinds = ("local pool", "dask cluster")
    rows, same = [], True
    print(f"load before: {load()}")
    for round_ in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            for kind in kinds if round_ % 2 == 0 else kinds[::-1]:
                out = Path(tmp) / kind.replace(" ", "_")
                rows.append({"round": round_ + 1, **run(kind, args.workers, out, args.samples, args.seed, args.size)})
            same &= files(Path(tmp) / "local_pool") == files(Path(tmp) / "dask_cluster")
    print(f"load after:  {load()}")
    print(f"\n{args.samples} samples, seed {args.seed}, {args.size} px, {args.workers} workers; "
          f"outputs byte-identical: {same}\n")
    print(f"| round | {'executor':<13} | start-up s | split s | draws | samples/s |")
    print(f"|------:|{'-' * 15}|-----------:|--------:|------:|----------:|")
    for r in rows:
        print(f"| {r['round']:5d} | {r['kind']:<13} | {r['startup_s']:10.1f} | {r['split_s']:7.1f} | {r['draws']:5d} | "
              f"{r['samples_per_s']:9.2f} |")
    rate = {(r["round"], r["kind"]): r["samples_per_s"] for r in rows}
    ratios = [rate[(n, "dask cluster")] / rate[(n, "local pool")] for n in range(1, args.rounds + 1)]
    total = {k: sum(r["split_s"] for r in rows if r["kind"] == k) for k in kinds}
    print(f"\ncluster / local throughput per round: {', '.join(f'{x:.2f}' for x in ratios)}; "
          f"over all rounds: {total['local pool'] / total['dask cluster']:.2f}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
