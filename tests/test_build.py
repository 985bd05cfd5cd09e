"""Codec structures built by CadQuery calls, in long-lived workers: the same solid as the program."""
import functools
import json
import os
import time

import numpy as np
import pytest

from img2cq import agreement, codec
from img2cq.build import BuildPool, build_shape, result_shape, structure_views, worker_context
from img2cq.data import draw_rng, seamed_program
from img2cq.sampler import sample_program


def sampler_programs(n: int) -> list[str]:
    return [sample_program(draw_rng(11, "train", i)) for i in range(n)]


def real_programs(repo_root, n: int) -> list[str]:
    rows = [json.loads(line) for line in (repo_root / "benchmarks/real_dev/test.jsonl").read_text().splitlines()]
    return [codec.canonical_program(r["cadquery"]) for r in rows[:n]]


def test_built_solid_is_the_programs_solid(executor, repo_root):
    programs = sampler_programs(6) + real_programs(repo_root, 6)
    results = executor.map(programs, mesh=False)
    for program, result in zip(programs, results):
        assert result.ok, result.reason
        shape = result_shape(build_shape(codec.parse(program)))
        assert shape.Volume() == pytest.approx(result.volume, rel=1e-9)


def test_built_render_is_the_programs_render(build_pool):
    from img2cq.sandbox import Executor
    from img2cq.search import PRELOAD

    programs = sampler_programs(4)
    with Executor(workers=2, preload=PRELOAD) as executor:
        sandboxed = executor.map([seamed_program(p) for p in programs], mesh=False,
                                 postprocess="img2cq.agreement:render_views")
    built = build_pool.map(structure_views, [codec.parse(p) for p in programs])
    for result, views in zip(sandboxed, built):
        np.testing.assert_array_equal(agreement.unpack_views(views), agreement.unpack_views(result.extras["value"]["views"]))


def test_views_reduced_in_the_worker_are_the_reduced_views(build_pool):
    structures = [codec.parse(p) for p in sampler_programs(3)]
    full = build_pool.map(structure_views, structures)
    reduced = build_pool.map(functools.partial(structure_views, resolution=agreement.RESOLUTION), structures)
    for packed, small in zip(full, reduced):
        assert len(small) * 16 == len(packed)  # 112 px views travel instead of 448 px ones
        expected = agreement.reduce_views(agreement.unpack_views(packed), agreement.RESOLUTION)
        np.testing.assert_array_equal(agreement.unpack_views(small, agreement.RESOLUTION), np.stack(expected))


def test_a_structure_that_does_not_build_gives_none(build_pool):
    sketch = codec.parse(sampler_programs(1)[0])[0]
    flat = codec.Sketch("new", sketch.plane, sketch.scale, (codec.Path((0, 0), (codec.Line((5, 0)), codec.Line((10, 0)))),),
                        sketch.distance, False)
    assert build_pool.map(structure_views, [[flat]]) == [None]


def crash(_):
    os._exit(9)


def hang(seconds):
    time.sleep(seconds)
    return seconds


def test_a_crashed_or_hung_worker_is_replaced():
    with BuildPool(workers=1, timeout=2.0) as pool:
        assert pool.map(crash, [0]) == [None]
        assert pool.map(hang, [30, 0.01]) == [None, 0.01]  # the hung job is cut off; the next runs


def test_start_starts_every_worker_without_waiting():
    """``start`` returns at once; the workers import CadQuery meanwhile, each in its own process."""
    from multiprocessing import forkserver

    import psutil

    worker_context()  # the fork server the pool's workers are forked from
    server = psutil.Process(forkserver._forkserver._forkserver_pid)
    before = set(server.children())
    with BuildPool(workers=2) as pool:
        started = time.perf_counter()
        pool.start()
        assert time.perf_counter() - started < 1.0  # a worker's start-up takes seconds: not waited for
        deadline = time.monotonic() + 60
        while len(set(server.children()) - before) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(set(server.children()) - before) == 2  # started with no job given to them
        assert pool.map(_identity, [1, 2, 3]) == [1, 2, 3]


def _identity(x):
    return x


def report_sigint(queue):
    import signal

    queue.put(signal.getsignal(signal.SIGINT) is signal.SIG_IGN)


def test_workers_start_with_ctrl_c_ignored():
    """A terminal's Ctrl-C reaches the workers too, possibly while one is still starting Python (a
    replacement after a crash, at any time): they begin with SIGINT ignored, before any code of
    theirs runs, so none prints a traceback for it. The caller's own handler is left as it was."""
    import signal

    before = signal.getsignal(signal.SIGINT)
    context = worker_context()
    queue = context.Queue()
    process = context.Process(target=report_sigint, args=(queue,))  # a bare process: no pool initializer
    process.start()
    assert queue.get(timeout=60) is True
    process.join(timeout=30)
    assert signal.getsignal(signal.SIGINT) is before
