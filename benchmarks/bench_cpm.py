"""Time scheduling.cpm on a large random network (default 100,000 tasks, 300,000 links) and print a table.

    python benchmarks/bench_cpm.py [--tasks N] [--links M] [--repeat R]

Links go from a lower to a higher task index (so the network is acyclic), mixed FS/SS/FF/SF with
random lags, leads included. "arrays" times cpm.compute on index arrays; "ids" times cpm.schedule
on a dict of ids and a list of (pred, succ, type, lag) tuples, as the server calls it.
"""

import argparse
import os
import platform
import time

import numpy as np

from scheduling import cpm


def network(n_tasks: int, n_links: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    durations = rng.integers(0, 20, n_tasks).astype(np.float64)
    a = rng.integers(0, n_tasks, n_links)
    b = rng.integers(0, n_tasks - 1, n_links)
    b = b + (b >= a)  # never a self-loop
    pred, succ = np.minimum(a, b), np.maximum(a, b)
    pairs = np.unique(pred * n_tasks + succ)
    pred, succ = pairs // n_tasks, pairs % n_tasks
    kind = rng.choice(4, len(pred), p=[0.7, 0.1, 0.1, 0.1])
    lag = rng.integers(-3, 6, len(pred)).astype(np.float64)
    return durations, pred, succ, kind, lag


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def best_of(fn, repeat: int) -> tuple[float, float]:
    """Best wall-clock and best CPU (process) time: on a shared machine the CPU time is what the
    computation costs, the wall time what a caller waited."""
    wall, cpu = [], []
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return min(wall), min(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--links", type=int, default=300_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    durations, pred, succ, kind, lag = network(args.tasks, args.links)
    tasks = {f"t{i}": float(x) for i, x in enumerate(durations)}
    names = list(tasks)
    deps = [(names[p], names[s], cpm.DEPENDENCY_TYPES[k], float(g))
            for p, s, k, g in zip(pred.tolist(), succ.tolist(), kind.tolist(), lag.tolist())]

    t_arrays = best_of(lambda: cpm.compute(durations, pred, succ, kind, lag), args.repeat)
    t_ids = best_of(lambda: cpm.schedule(tasks, deps), args.repeat)
    result = cpm.compute(durations, pred, succ, kind, lag)

    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, "
          f"Python {platform.python_version()}, numpy {np.__version__}")
    print(f"network: {args.tasks:,} tasks, {len(pred):,} links; project duration {result.duration:g}, "
          f"{int(result.critical.sum())} critical tasks, {len(result.critical_paths)} critical chain(s)")
    print()
    print(f"| input  | wall s (best of {args.repeat}) | CPU s (best of {args.repeat}) |")
    print("|--------|--------------------|-------------------|")
    for name, (wall, cpu) in (("arrays", t_arrays), ("ids", t_ids)):
        print(f"| {name:<6} | {wall:>18.3f} | {cpu:>17.3f} |")

if __name__ == "__main__":
    main()
