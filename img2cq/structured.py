"""Structured refinement: edit a codec structure, not the number literals of program text.

A kept candidate is usually right in kind but wrong in proportions, or too simple (holes or a
sketch missing). ``mutate`` applies one random edit to a structure (``codec.Sketch`` list):

- continuous: a sketch's scale, its aspect (x against y), its extrusion depth, its plane's offset
  along the normal, a circle's radius, a loop's position;
- discrete: drop a loop, add a round hole, drop a sketch, swap cut and union, flip the extrusion
  side, extrude both ways or one.

``refine`` is a (1 + lambda) evolution: each generation ``lambda`` edits of the best structure are
built and rendered by ``img2cq.build.BuildPool`` (no program text runs, no fork per candidate),
scored by their agreement with the input picture, and the best replaces the current one when it
agrees better. ``refine_many`` runs several such evolutions at once, their edits interleaved in
the pool so that its workers stay busy. Every edited structure stays inside the codec's number
ranges, so the result prints as a program of the GenCAD-Code grammar.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import time

import numpy as np

from img2cq import codec
from img2cq.agreement import Masks, agreements, unpack_views

STEP_SIGMA = 0.15            # continuous edits multiply by exp(N(0, STEP_SIGMA)) (~15 %)
DISCRETE_SHARE = 0.3         # share of edits that change the structure (loops, sketches, operations)
GRID = codec.SKETCH_LEVELS
IN_FLIGHT_PER_WORKER = 2     # edits queued per build worker: enough to keep it busy, few to wait for at the end


def _clamp(v: float, low: int, high: int, zero: bool = True) -> int:
    k = int(round(min(high, max(low, v))))
    return k if k or zero else (1 if v >= 0 else -1)


def _point(p, fx: float = 1.0, fy: float = 1.0, dx: float = 0.0, dy: float = 0.0) -> tuple[int, int]:
    return _clamp(p[0] * fx + dx, -GRID, GRID), _clamp(p[1] * fy + dy, -GRID, GRID)


def _map_loop(loop, fx=1.0, fy=1.0, dx=0.0, dy=0.0):
    if isinstance(loop, codec.Circle):
        return codec.Circle(_point(loop.center, fx, fy, dx, dy), loop.radius)
    segments = tuple(codec.Line(_point(s.end, fx, fy, dx, dy)) if isinstance(s, codec.Line)
                     else codec.Arc(_point(s.end, fx, fy, dx, dy), s.sweep) for s in loop.segments)
    return codec.Path(_point(loop.start, fx, fy, dx, dy), segments)


def _loop_points(loop) -> np.ndarray:
    if isinstance(loop, codec.Circle):
        c, r = loop.center, loop.radius
        return np.array([[c[0] - r, c[1] - r], [c[0] + r, c[1] + r]], float)
    return np.array([loop.start, *(s.end for s in loop.segments)], float)


def _with_sketch(sketches: list, i: int, **changes) -> list:
    out = list(sketches)
    out[i] = dataclasses.replace(sketches[i], **changes)
    return out


def _with_loops(sketches: list, i: int, loops: list) -> list:
    return _with_sketch(sketches, i, loops=tuple(loops))


def mutate(sketches: list[codec.Sketch], rng: np.random.Generator) -> list[codec.Sketch]:
    """One random edit of a structure (a new list; the input is left as it is)."""
    i = int(rng.integers(len(sketches)))
    s = sketches[i]
    factor = lambda: float(np.exp(rng.normal(0.0, STEP_SIGMA)))
    if rng.random() < DISCRETE_SHARE:
        kinds = ["add_hole", "flip"]
        if len(s.loops) > 1:
            kinds.append("drop_loop")
        if len(sketches) > 1:
            kinds.append("drop_sketch")
        if i > 0 and s.op in ("union", "cut"):
            kinds.append("swap_op")
        if i > 0 or len(sketches) == 1:
            kinds.append("both")
        kind = kinds[int(rng.integers(len(kinds)))]
        if kind == "add_hole":
            points = np.concatenate([_loop_points(loop) for loop in s.loops])
            lo, hi = points.min(0), points.max(0)
            span = float(max(hi - lo))
            radius = _clamp(span * rng.uniform(0.05, 0.25), 1, GRID, zero=False)
            centre = _point(rng.uniform(lo + radius, np.maximum(hi - radius, lo + radius)))
            return _with_loops(sketches, i, [*s.loops, codec.Circle(centre, radius)])
        if kind == "drop_loop":
            j = int(rng.integers(1, len(s.loops)))  # the first loop is the outline
            return _with_loops(sketches, i, [loop for k, loop in enumerate(s.loops) if k != j])
        if kind == "drop_sketch":
            out = [sk for k, sk in enumerate(sketches) if k != i]
            if i == 0:
                out[0] = dataclasses.replace(out[0], op="new")
            return out
        if kind == "swap_op":
            return _with_sketch(sketches, i, op="cut" if s.op == "union" else "union")
        if kind == "flip":
            return _with_sketch(sketches, i, distance=-s.distance)
        return _with_sketch(sketches, i, both=not s.both)
    kinds = ["scale", "aspect", "depth", "offset"]
    circles = [j for j, loop in enumerate(s.loops) if isinstance(loop, codec.Circle)]
    if circles:
        kinds.append("radius")
    if len(s.loops) > 1:
        kinds.append("move_loop")
    kind = kinds[int(rng.integers(len(kinds)))]
    if kind == "scale":
        return _with_sketch(sketches, i, scale=_clamp(s.scale * factor(), 1, codec.NUMBER_RANGE, zero=False))
    if kind == "aspect":
        a = factor()
        return _with_loops(sketches, i, [_map_loop(loop, a, 1 / a) for loop in s.loops])
    if kind == "depth":
        r = codec.NUMBER_RANGE
        return _with_sketch(sketches, i, distance=_clamp(s.distance * factor(), -r, r, zero=False))
    if kind == "offset":
        normal, _ = codec.plane_vectors(s.plane)
        step = rng.normal(0.0, STEP_SIGMA) * max(abs(s.distance), s.scale / 4)
        origin = tuple(_clamp(o + step * n, -codec.NUMBER_RANGE, codec.NUMBER_RANGE) for o, n in zip(s.plane.origin, normal))
        return _with_sketch(sketches, i, plane=dataclasses.replace(s.plane, origin=origin))
    if kind == "radius":
        j = circles[int(rng.integers(len(circles)))]
        loops = list(s.loops)
        loops[j] = codec.Circle(loops[j].center, _clamp(loops[j].radius * factor(), 1, GRID, zero=False))
        return _with_loops(sketches, i, loops)
    j = int(rng.integers(1, len(s.loops)))  # move_loop: an inner loop (hole) moves
    loops = list(s.loops)
    loops[j] = _map_loop(loops[j], dx=rng.normal(0.0, STEP_SIGMA * GRID / 2), dy=rng.normal(0.0, STEP_SIGMA * GRID / 2))
    return _with_loops(sketches, i, loops)


GRID_FACTORS = (0.5, 0.63, 0.79, 0.89, 1.12, 1.26, 1.59, 2.0)   # number_variants: depths and scales
GRID_OFFSETS = (-0.5, -0.25, -0.12, 0.12, 0.25, 0.5)            # ... plane offsets, of the depth


def number_variants(sketches: list) -> list[list]:
    """Every structure that differs from ``sketches`` in one number on a grid: each sketch's depth and
    scale by ``GRID_FACTORS``, its aspect and each circle's radius by the middle ones, its plane
    moved along its normal by ``GRID_OFFSETS`` of its depth (or a quarter of its scale). A probe of
    what number edits alone can buy (``benchmarks/bench_number_edits.py``), and the candidates of
    the comparator's variant pairs (``comparator.variant_candidates``)."""
    top = codec.NUMBER_RANGE
    out = []
    for i, s in enumerate(sketches):
        out += [_with_sketch(sketches, i, distance=_clamp(s.distance * f, -top, top, zero=False)) for f in GRID_FACTORS]
        out += [_with_sketch(sketches, i, scale=_clamp(s.scale * f, 1, top, zero=False)) for f in GRID_FACTORS]
        out += [_with_loops(sketches, i, [_map_loop(loop, f, 1 / f) for loop in s.loops]) for f in GRID_FACTORS[2:-2]]
        normal, _ = codec.plane_vectors(s.plane)
        step = max(abs(s.distance), s.scale / 4)
        for t in GRID_OFFSETS:
            origin = tuple(_clamp(o + t * step * n, -top, top) for o, n in zip(s.plane.origin, normal))
            out.append(_with_sketch(sketches, i, plane=dataclasses.replace(s.plane, origin=origin)))
        for j, loop in enumerate(s.loops):
            if isinstance(loop, codec.Circle):
                for f in GRID_FACTORS[1:-1]:
                    loops = list(s.loops)
                    loops[j] = codec.Circle(loop.center, _clamp(loop.radius * f, 1, codec.SKETCH_LEVELS, zero=False))
                    out.append(_with_loops(sketches, i, loops))
    unique = {repr(v): v for v in out if v != sketches}
    return list(unique.values())


def views_job(reference: Masks):
    """The build job rendering a structure's views at the reference's resolution, and its unpacker."""
    from img2cq.build import structure_views

    size = reference.silhouette.shape[0]
    unpack = lambda packed: None if packed is None else unpack_views(packed, size)  # noqa: E731
    return functools.partial(structure_views, resolution=size), unpack


def score_structures(structures: list[list[codec.Sketch]], reference: Masks, pool, judge=agreements) -> list[float]:
    """``judge``'s score of each structure's render against the reference (-inf where it does not
    build)."""
    job, unpack = views_job(reference)
    return judge(reference, [unpack(v) for v in pool.map(job, structures)])


def score_and_measure_structures(structures: list[list[codec.Sketch]], reference: Masks, pool,
                                 judge=agreements) -> tuple[list[float], list]:
    """`score_structures`, and each structure's measured solid (``build.measured``; None where it
    does not build) from the same build, for comparing candidates with one another."""
    from img2cq.build import structure_views_and_solid

    _, unpack = views_job(reference)
    job = functools.partial(structure_views_and_solid, resolution=reference.silhouette.shape[0])
    built = [b or (None, None) for b in pool.map(job, structures)]  # None: the job failed or its worker died
    return judge(reference, [unpack(views) for views, _ in built]), [solid for _, solid in built]


@dataclasses.dataclass(eq=False)
class _Evolution:
    """One structure's (1 + lambda) evolution: its best so far and the generation being evaluated."""

    best: list
    best_score: float
    rng: np.random.Generator
    edits: list = dataclasses.field(default_factory=list)
    views: dict = dataclasses.field(default_factory=dict)   # edit index -> its views (None: no build)
    submitted: int = 0
    evaluated: int = 0

    def new_generation(self, population: int) -> None:
        self.edits, self.views, self.submitted = [mutate(self.best, self.rng) for _ in range(population)], {}, 0

    def select(self, reference: Masks, judge) -> None:
        """Score the generation's evaluated edits; the best replaces the current one when it agrees better."""
        done = sorted(self.views)
        if not done:
            return
        scores = judge(reference, [self.views[i] for i in done])
        self.evaluated += len(done)
        top = int(np.argmax(scores))
        if math.isfinite(scores[top]) and scores[top] > self.best_score:
            self.best, self.best_score = self.edits[done[top]], scores[top]


def refine_many(starts: list[list[codec.Sketch]], start_scores: list[float], reference: Masks, pool, seconds: float,
                seed: int = 0, population: int | None = None,
                judge=agreements) -> list[tuple[list[codec.Sketch], float, int]]:
    """``refine`` of several structures together for about ``seconds`` in all (each start's edits
    drawn from ``seed + k``). Their edits are queued in turn, a few per worker: the workers never
    wait for one generation's slowest build or for the scoring of another, which the main process
    does while they build. Returns (best structure, its score, structures evaluated) per start."""
    from concurrent.futures import FIRST_COMPLETED, wait

    from img2cq.build import job_result

    population = population or 4 * pool.workers
    job, unpack = views_job(reference)
    runs = [_Evolution(sketches, score, np.random.default_rng(seed + k))
            for k, (sketches, score) in enumerate(zip(starts, start_scores))]
    for run in runs:
        run.new_generation(population)
    began = time.perf_counter()
    deadline, in_flight, turn, finished_jobs = began + seconds, {}, 0, 0

    def fits_before_deadline() -> bool:  # one more job, queued behind those in flight, ends in time
        now = time.perf_counter()
        seconds_per_job = (now - began) / finished_jobs if finished_jobs else 0.0
        return now + (len(in_flight) + 1) * seconds_per_job <= deadline

    def next_in_turn() -> _Evolution | None:  # the next start, in turn, with an edit not queued yet
        nonlocal turn
        for offset in range(len(runs)):
            run = runs[(turn + offset) % len(runs)]
            if run.submitted < len(run.edits):
                turn = (turn + offset + 1) % len(runs)
                return run
        return None

    while True:
        while len(in_flight) < IN_FLIGHT_PER_WORKER * pool.workers and fits_before_deadline() \
                and (run := next_in_turn()) is not None:
            in_flight[pool.submit(job, run.edits[run.submitted])] = (run, run.submitted)
            run.submitted += 1
        if not in_flight:
            break
        finished, _ = wait(list(in_flight), return_when=FIRST_COMPLETED)
        finished_jobs += len(finished)
        for future in finished:
            run, i = in_flight.pop(future)
            run.views[i] = unpack(job_result(future))
            if len(run.views) == len(run.edits):
                run.select(reference, judge)
                if fits_before_deadline():
                    run.new_generation(population)
    for run in runs:  # the generations the deadline cut short: their evaluated edits still count
        if len(run.views) < len(run.edits):
            run.select(reference, judge)
    return [(run.best, run.best_score, run.evaluated) for run in runs]


def refine(sketches: list[codec.Sketch], reference: Masks, pool, seconds: float, start_score: float,
           seed: int = 0, population: int | None = None, judge=agreements) -> tuple[list[codec.Sketch], float, int]:
    """Edit the structure for about ``seconds`` to maximise ``judge``'s score.
    Returns (best structure, its agreement, structures evaluated)."""
    return refine_many([sketches], [start_score], reference, pool, seconds, seed, population, judge)[0]
