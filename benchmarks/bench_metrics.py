"""Speed of the IoU metric per program pair, against a re-implementation of the seed's metric.

Both metrics score the same GenCAD-style pairs (the project sampler's, else the test corpus's),
with both programs of a pair run in parallel by one 2-worker Executor. Reported per pair:
execution alone, our metric on top of it, and the seed's metric on top of it; and per program,
one program run on its own (the executor's per-program cost, sandbox included), and the CPU time
the executor's workers and their children spent per program, which a loaded machine does not inflate.

    python benchmarks/bench_metrics.py --pairs 40
    python benchmarks/bench_metrics.py --pairs 40 --skip-seed --isolation trusted   # without the kernel sandbox
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import trimesh

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests/fixtures: not an installed package

from img2cq.sandbox import Executor  # noqa: E402
from metrics.best_iou import iou_from_results  # noqa: E402
from tests.fixtures.metrics.corpus import gencad_pairs  # noqa: E402

SEED_PITCH = 0.05
# identity and the three single-axis flips: three of the four are mirror images
SEED_SIGNS = (np.diag([1, 1, 1]), np.diag([-1, 1, 1]), np.diag([1, -1, 1]), np.diag([1, 1, -1]))


def executor_cpu_s(worker: "psutil.Process") -> float:
    """CPU seconds of an executor worker, of its fork server and of the children they have reaped."""
    total = 0.0
    for process in (worker, *worker.children()):  # the sandbox children are the fork server's
        try:
            t = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def seed_iou(a, b) -> float:
    """The seed's metric, for reference only: surface-shell voxels at pitch 0.05, 4 sign patterns.

    Each mesh is centred on its centre of mass, scaled to unit radius of gyration and turned into
    its principal-axes frame; the candidate is tried under the 4 sign patterns, and the IoU is
    that of the sets of voxels touched by the two surfaces (interiors are not filled).
    """

    def normalised(result):
        mesh = trimesh.Trimesh(result.vertices, result.faces, process=False)
        mesh.apply_translation(-mesh.center_mass)
        mesh.apply_scale(1 / np.sqrt(np.trace(mesh.moment_inertia) / (2 * mesh.volume)))
        mesh.apply_transform(mesh.principal_inertia_transform)
        return mesh

    def voxels(mesh):
        grid = mesh.voxelized(SEED_PITCH)
        return set(map(tuple, np.round(grid.points / SEED_PITCH).astype(np.int64)))

    mesh_a, mesh_b = normalised(a), normalised(b)
    cells_a = voxels(mesh_a)
    best = 0.0
    for signs in SEED_SIGNS:
        turned = mesh_b.copy()
        turned.apply_transform(np.block([[signs, np.zeros((3, 1))], [np.zeros((1, 3)), np.ones((1, 1))]]))
        cells_b = voxels(turned)
        best = max(best, len(cells_a & cells_b) / len(cells_a | cells_b))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--skip-seed", action="store_true", help="time only our metric")
    parser.add_argument("--isolation", choices=("strict", "trusted"),
                        help="the executor's isolation (default: its own default)")
    args = parser.parse_args()

    pairs = gencad_pairs(args.pairs, args.seed)
    rows = {"execute both programs": [], "ours (execute + IoU)": [], "seed (execute + IoU)": []}
    metric_only = {"ours": [], "seed": []}
    scores = {"ours": [], "seed": []}
    one_program = []
    skipped = 0
    with Executor(workers=2, **({"isolation": args.isolation} if args.isolation else {})) as ex:
        ex.map([pairs[0][0]] * 2)  # start both workers before timing
        workers = psutil.Process().children()
        cpu_before = sum(executor_cpu_s(w) for w in workers)
        programs = 0
        for reference, candidate in pairs:
            programs += 3
            t0 = time.perf_counter()
            ex.run(reference, mesh=True, brep=True)
            one_program.append(time.perf_counter() - t0)
            time.sleep(0.05)  # let the worker fork its next spare children, as between requests
            t0 = time.perf_counter()
            a, b = ex.map([reference, candidate], mesh=True, brep=True)  # as score_pair runs them
            t1 = time.perf_counter()
            if not (a.ok and b.ok):
                skipped += 1
                continue
            scores["ours"].append(iou_from_results(a, b, executor=ex))
            t2 = time.perf_counter()
            if not args.skip_seed:
                scores["seed"].append(seed_iou(a, b))
            t3 = time.perf_counter()
            rows["execute both programs"].append(t1 - t0)
            rows["ours (execute + IoU)"].append(t2 - t0)
            metric_only["ours"].append(t2 - t1)
            if not args.skip_seed:
                rows["seed (execute + IoU)"].append(t1 - t0 + t3 - t2)
                metric_only["seed"].append(t3 - t2)
        time.sleep(0.5)  # the last spare children are forked
        cpu_per_program = (sum(executor_cpu_s(w) for w in workers) - cpu_before) / programs

    load = os.getloadavg()[0]
    print(f"# {len(rows['ours (execute + IoU)'])} scored pairs ({skipped} skipped: a program failed), "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average {load:.1f}, "
          f"isolation {getattr(ex, 'isolation', 'n/a')}")
    print(f"{'per program':<28}{'median ms':>10}{'p90 ms':>10}")
    print(f"{'execute one program':<28}{np.median(one_program) * 1e3:10.1f}{np.percentile(one_program, 90) * 1e3:10.1f}")
    print(f"{'executor CPU per program':<28}{cpu_per_program * 1e3:10.1f}{'(mean)':>10}")
    print(f"{'per pair':<28}{'median ms':>10}{'p90 ms':>10}{'mean IoU':>10}")
    for name, times in rows.items():
        if times:
            key = "ours" if name.startswith("ours") else "seed" if name.startswith("seed") else None
            mean = f"{np.mean(scores[key]):10.3f}" if key else f"{'':>10}"
            print(f"{name:<28}{np.median(times) * 1e3:10.1f}{np.percentile(times, 90) * 1e3:10.1f}{mean}")
    for name, times in metric_only.items():
        if times:
            print(f"{name + ' (IoU only)':<28}{np.median(times) * 1e3:10.1f}{np.percentile(times, 90) * 1e3:10.1f}")
    if metric_only["seed"]:
        ours, seed = np.median(metric_only["ours"]), np.median(metric_only["seed"])
        total_ours, total_seed = np.median(rows["ours (execute + IoU)"]), np.median(rows["seed (execute + IoU)"])
        print(f"speed-up, IoU only: {seed / ours:.0f}x   speed-up, execute + IoU: {total_seed / total_ours:.1f}x")


if __name__ == "__main__":
    main()
