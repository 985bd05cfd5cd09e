"""Codec structures built into CadQuery solids by API calls, in long-lived worker processes.

Program text written by a model or sent by a user only ever runs in the sandboxed executor. A
codec structure is different: integers and enums (``codec.Sketch``), read without executing
anything. ``build_shape`` makes its solid with the CadQuery calls its program states, every number
taken from ``codec.to_float`` (the same numbers ``codec.to_program`` prints), so the solid is the
program's. ``BuildPool`` runs such builds, and the renders of what they build, in long-lived
worker processes that import CadQuery and the renderer once: no fork per part, a timeout per job,
and a crashed or hung worker replaced by a fresh one (pebble's ``ProcessPool``).
"""
from __future__ import annotations

import atexit
import multiprocessing
import signal
import threading
from concurrent.futures import TimeoutError as FutureTimeout

from img2cq import codec

BUILD_TIMEOUT_S = 20.0      # one build and render; a sampler part takes ~0.1 s, a hung OCC call is cut off
MAX_TASKS_PER_WORKER = 2000  # a worker is replaced after this many jobs (OCC and VTK caches grow)


def build_shape(sketches: list[codec.Sketch], seams: bool = False):
    """The ``cadquery.Workplane`` of a codec structure. ``seams=True`` keeps the edges where
    sketches were joined (``clean=False``), as the dataset's pictures show them.

    Each loop is made with the calls ``Workplane.lineTo`` / ``threePointArc`` / ``close`` /
    ``circle`` make, on world coordinates from the sketch's plane, without a workplane object per
    call (their copies of the plane cost more than the geometry); the wires are then extruded
    and combined by the workplane as in the program."""
    import cadquery as cq

    solid = None
    for s in codec.to_float(sketches):
        plane = cq.Plane(cq.Vector(*s.origin), cq.Vector(*s.x_dir), cq.Vector(*s.normal))
        wires = []
        for kind, start, rest in s.loops:
            if kind == "circle":
                circle = cq.Wire.makeCircle(rest, cq.Vector(), cq.Vector(0, 0, 1))
                wires.append(circle.moved(cq.Location(plane, plane.toWorldCoords(start))))
                continue
            first = current = plane.toWorldCoords(start)
            edges = []
            for end, mid in rest:
                end = plane.toWorldCoords(end)
                edges.append(cq.Edge.makeLine(current, end) if mid is None
                             else cq.Edge.makeThreePointArc(current, plane.toWorldCoords(mid), end))
                current = end
            if current.sub(first).Length > 1e-6:  # close() draws the closing line only when needed
                edges.append(cq.Edge.makeLine(current, first))
            wires.append(cq.Wire.assembleEdges(edges))
        extruded = cq.Workplane(plane).add(wires).toPending().extrude(s.distance, both=s.both)
        solid = extruded if solid is None else getattr(solid, s.op)(extruded, clean=not seams)
    return solid


def result_shape(workplane):
    """The single shape a program's ``solid`` variable stands for (what the executor measures)."""
    import cadquery as cq

    shapes = [v for v in workplane.vals() if isinstance(v, cq.Shape)]
    return shapes[0] if len(shapes) == 1 else cq.Compound.makeCompound(shapes)


def valid_solid(sketches: list[codec.Sketch], seams: bool = False):
    """The structure's result shape, or None where it is not a valid solid of positive volume
    (raises what OCC raises for a structure that does not build)."""
    shape = result_shape(build_shape(sketches, seams))
    return shape if shape.isValid() and shape.Volume() > 0 else None


def structure_views(sketches: list[codec.Sketch], resolution: int | None = None) -> bytes | None:
    """Job: packed framed views (``agreement.render_views``) of a structure's render, reduced to
    ``resolution`` when given (a judge's; the worker reduces, so the caller receives 3 KB instead of
    50 KB and does not reduce), None if it does not build into a valid solid."""
    from img2cq.agreement import FRAME, render_views

    try:
        shape = valid_solid(sketches, seams=True)
        return None if shape is None else render_views(shape, resolution or FRAME)["views"]
    except Exception:  # noqa: BLE001 - OCC raises many kinds for a bad structure: it does not build
        return None


def worker_context():
    """Workers are forked by multiprocessing's fork server, a fresh process: a worker never inherits
    the caller's threads, GL context or model. The server is started with SIGINT ignored and its
    workers inherit that from their first instruction: a terminal's Ctrl-C, which reaches every
    process of the group, never prints the traceback of a worker still starting Python (a
    replacement, at any time). Off the main thread the caller's SIGINT cannot be changed, and
    the server starts as it is."""
    from multiprocessing import forkserver

    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            forkserver.ensure_running()
        finally:
            signal.signal(signal.SIGINT, previous)
    return multiprocessing.get_context("forkserver")


def _warm_up() -> None:
    """Worker start: import CadQuery and the renderer (its GL context) once, at low priority. Ctrl-C
    at a terminal reaches the workers too: it is the caller's to act on (it closes the pool)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import cadquery  # noqa: F401

    import img2cq.render  # noqa: F401


def _ready(_) -> bool:
    return True


class BuildPool:
    """Long-lived build workers. ``map(function, items)`` calls a module-level ``function`` on each
    item in the workers and returns the results in order; a job that raises, times out or kills
    its worker gives ``None`` (its worker is replaced)."""

    def __init__(self, workers: int = 2, timeout: float = BUILD_TIMEOUT_S):
        from pebble import ProcessPool

        self.workers, self.timeout = workers, timeout
        self._pool = ProcessPool(max_workers=workers, max_tasks=MAX_TASKS_PER_WORKER, initializer=_warm_up,
                                 context=worker_context())

    def start(self) -> None:
        """Start every worker now, without waiting: their CadQuery import overlaps the caller's own
        start-up (a model loading)."""
        for i in range(self.workers):
            self.submit(_ready, i)

    def wait_ready(self) -> None:
        """Return once every worker has started (imported CadQuery and the renderer)."""
        self.map(_ready, list(range(self.workers)))

    def submit(self, function, item):
        """A future of ``function(item)`` in a worker (``result()`` raises where ``map`` gives None)."""
        return self._pool.schedule(function, args=(item,), timeout=self.timeout)

    def map(self, function, items: list) -> list:
        futures = [self.submit(function, item) for item in items]
        return [job_result(future) for future in futures]

    def close(self) -> None:
        self._pool.stop()
        self._pool.join()

    def __enter__(self) -> "BuildPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def job_result(future):
    """A finished or pending job's result, None where it raised, timed out or killed its worker."""
    try:
        return future.result()
    except (FutureTimeout, Exception):  # noqa: BLE001 - a failed job is a None, never the caller's crash
        return None


_shared: BuildPool | None = None
_shared_lock = threading.Lock()


def shared_pool(workers: int = 2) -> BuildPool:
    """One long-lived pool per process (the server's searches share it), closed at exit."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = BuildPool(workers)
            atexit.register(_shared.close)
        return _shared


def measured(shape, coarse: bool = False):
    """An ``ExecResult`` of a solid with everything the IoU metric reads, as the sandbox's measuring
    child makes one for a program; ``coarse``: meshed as the search compares its candidates
    (``geometry.CONSENSUS_MESH_TOLERANCE``), not as the metric scores a program."""
    import cadquery as cq
    import numpy as np

    from img2cq.geometry import CONSENSUS_MESH_ANGULAR, CONSENSUS_MESH_TOLERANCE
    from img2cq.measure import mesh_arrays
    from img2cq.sandbox.wire import ExecResult

    vertices, faces = mesh_arrays(shape, CONSENSUS_MESH_TOLERANCE, CONSENSUS_MESH_ANGULAR) if coarse else mesh_arrays(shape)
    centre = cq.Shape.centerOfMass(shape)
    return ExecResult(ok=True, volume=shape.Volume(), center=np.array([centre.x, centre.y, centre.z]),
                      inertia=np.asarray(cq.Shape.matrixOfInertia(shape)), vertices=vertices, faces=faces)


def _measured(sketches: list[codec.Sketch]):
    """`measured` of a structure's solid, an invalid result where it is not a valid solid."""
    from img2cq.sandbox.wire import ExecResult

    shape = valid_solid(sketches)
    return ExecResult(ok=False, error_kind="invalid", message="not a valid solid") if shape is None else measured(shape)


def structure_views_and_solid(sketches: list[codec.Sketch], resolution: int | None = None):
    """Job: `structure_views` and the `measured` solid of one build, (None, None) where it does not
    build: for candidates compared with the picture and with one another (``iou.pairwise_ious``)."""
    from img2cq.agreement import FRAME, render_views

    try:
        shape = valid_solid(sketches, seams=True)
        if shape is None:
            return None, None
        views = render_views(shape, resolution or FRAME)["views"]  # first: rendered exactly as alone
        return views, measured(shape, coarse=True)
    except Exception:  # noqa: BLE001 - OCC raises many kinds for a bad structure: it does not build
        return None, None


def structure_ious(job: tuple[list[codec.Sketch], list[list[codec.Sketch]]]) -> list[float | None]:
    """Job: the project's 3D IoU (``img2cq.iou``) of each candidate structure against a reference
    structure (None where one does not build or the metric fails). For structures of trusted
    origin (sampler parts), e.g. to measure re-ranking (``benchmarks/bench_agreement.py``)."""
    from img2cq.iou import iou_from_results

    reference, candidates = job
    try:
        measured = _measured(reference)
    except Exception:  # noqa: BLE001 - OCC raises many kinds for a structure that does not build
        return [None] * len(candidates)
    out = []
    for candidate in candidates:
        try:
            other = _measured(candidate)
            out.append(iou_from_results(measured, other) if measured.ok and other.ok else None)
        except Exception:  # noqa: BLE001 - one failed pair is that pair's None
            out.append(None)
    return out
