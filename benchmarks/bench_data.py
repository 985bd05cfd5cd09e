"""Throughput of the synthetic data pipeline: sample -> execute (sandboxed) -> validate -> render.

    python benchmarks/bench_data.py [--n 200] [--workers 2]

Prints two tables: milliseconds per stage, each draw run in a freshly forked child of a warm
process exactly as the executor runs it (so per-process set-up, such as GL context creation, shows
where it is paid), with the CPU time of those children (user + system), and end-to-end samples/s
through the executor with N workers. Wall-clock numbers depend on machine load: say what else was
running. The CPU time per accepted draw gives the throughput one free core would reach, which a
loaded machine does not change much.
"""
from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")

STAGES = ("exec", "check", "validate", "tessellate", "draw", "png")


def _stages(code: str) -> dict:
    """Seconds per stage of one draw: exec, the executor's checks (validity, mass properties), our
    validation, tessellation, GL draw + read-back, PNG encoding."""
    from img2cq import data, render
    from img2cq.measure import mass_properties, solids_of

    times, t = {}, time.perf_counter()

    def lap(name):
        nonlocal t
        now = time.perf_counter()
        times[name], t = now - t, now

    namespace: dict = {}
    exec(code, namespace)
    lap("exec")
    shape = solids_of(namespace["solid"])
    if not shape.isValid():
        return times
    mass_properties(shape)
    lap("check")
    if data.reject_reason(shape):
        return times
    lap("validate")
    points, triangles, polylines = render.tessellate(shape)
    lap("tessellate")
    pixels = render.draw(points, triangles, polylines, 448, 1.0)
    lap("draw")
    render.png_bytes(pixels)
    lap("png")
    return times


def _in_fork(code: str) -> tuple[dict, float]:
    """_stages(code) in a forked child, as the executor's workers run each program, and the child's
    CPU seconds (user + system)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        try:
            out = _stages(code)
        except Exception:  # noqa: BLE001 - a failed draw reports the stages it finished
            out = {}
        os.write(write_fd, json.dumps(out).encode())
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as f:
        out = json.loads(f.read() or b"{}")
    _, _, usage = os.wait4(pid, 0)
    return out, usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200, help="draws per measurement")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=123)
    args = parser.parse_args()
    if args.n < 1 or args.workers < 1:
        parser.error("--n and --workers must be >= 1")

    import numpy as np

    from img2cq import data
    from img2cq.sandbox import Executor
    from img2cq.sandbox.process import warm_up
    from img2cq.sampler import sample_program

    t = time.perf_counter()
    codes = [sample_program(data.draw_rng(args.seed, "train", i)) for i in range(args.n)]
    t_sample = (time.perf_counter() - t) / args.n

    import img2cq.render  # noqa: F401 - preloaded by the executor's workers, so imported before the fork

    warm_up()  # the executor worker's state before it forks
    t = time.perf_counter()
    forked = [_in_fork(code) for code in codes]
    t_fork = (time.perf_counter() - t) / args.n
    stages = [times for times, _ in forked]
    cpu = np.array([seconds for _, seconds in forked])
    finished = np.array(["png" in times for times in stages])  # accepted and rendered

    with Executor(workers=args.workers, preload=("img2cq.render",)) as ex:
        ex.run("import cadquery as cq\nsolid = cq.Workplane().box(1, 1, 1)\n")  # workers warm
        t = time.perf_counter()
        seen: set = set()
        accepted = sum(rec["reason"] is None for rec in data.generate_draws(ex, args.seed, "train", 0, args.n, seen))
        wall = time.perf_counter() - t

    print(f"{'stage (forked child, 1 core)':<34} {'n':>5} {'mean ms':>8} {'median':>8} {'p90':>8}")
    print(f"{'sample_program (in the caller)':<34} {args.n:>5} {t_sample * 1e3:>8.1f}")
    for name in STAGES:
        ms = np.array([s[name] for s in stages if name in s]) * 1e3
        if len(ms):
            print(f"{name:<34} {len(ms):>5} {ms.mean():>8.1f} {np.median(ms):>8.1f} {np.percentile(ms, 90):>8.1f}")
    print(f"{'fork + all stages, per draw':<34} {args.n:>5} {t_fork * 1e3:>8.1f}")
    print(f"{'CPU of the forked child, per draw':<34} {args.n:>5} {cpu.mean() * 1e3:>8.1f} "
          f"{np.median(cpu) * 1e3:>8.1f} {np.percentile(cpu, 90) * 1e3:>8.1f}")
    if finished.any():
        print(f"accepted samples per CPU-second of the children (one free core): "
              f"{finished.sum() / cpu.sum():.1f}")
    print()
    print(f"{f'executor end-to-end, {args.workers} workers':<44} {'value':>10}")
    print(f"{'draws/s':<44} {args.n / wall:>10.1f}")
    print(f"{'accepted samples/s':<44} {accepted / wall:>10.1f}")
    print(f"{'accepted samples/s per worker':<44} {accepted / wall / args.workers:>10.1f}")
    print(f"{'acceptance':<44} {accepted / args.n:>10.1%}")
    print(f"draws={args.n} workers={args.workers} seed={args.seed} cpus={os.cpu_count()} "
          f"load_avg_1min={os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
