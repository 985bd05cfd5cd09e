"""IoU between the solids two CadQuery programs build, up to position, orientation and scale.

This module scores two executed results; running the programs (always in the sandbox, with the
same options for every caller) is `img2cq.scoring`'s job. How two solids A (reference) and B
(candidate) are compared:

1. Both programs have run in the sandboxed executor (never in this process), which returns each
   solid's exact OCC volume V, centre of mass c, inertia tensor I about c, and a watertight mesh.
2. Each solid is moved into its own canonical frame:  x' = R (x - c) / r_g, where
   r_g = sqrt(trace(I) / (2 V)) is the radius of gyration about the centre of mass (the RMS
   distance of the solid's points from c, so both solids end up with r_g = 1), and the rows of R
   are the principal axes (eigenvectors of the covariance  trace(I)/2 * Id - I), largest variance
   first, made right-handed. Where two or three principal variances agree within 1e-4 (relative),
   their axes are not defined by the solid; they are then taken as the world axes projected into
   that eigenspace, which keeps axis-aligned GenCAD parts axis-aligned.
3. Principal axes are only defined up to sign and (for near-equal variances) order, so B is tried
   in all 24 proper rotations that map the frame's axes onto themselves (signed permutations
   with determinant +1), and the best IoU of the filled volumes, |A & B| / (|A| + |B| - |A & B|),
   is the score. With ``allow_mirror=True`` the 24 mirror images are tried as well (a second,
   separately named score: a mirrored part is not the same part).

The intersection volume comes from manifold3d's exact mesh booleans on the tessellated solids.
Booleans cost milliseconds each, so the 24 rotations are first ranked by the IoU of coarse
occupancy grids (32^3 cells, filled by ray parity; a signed permutation maps such a grid, centred
on the origin, exactly onto itself), and booleans run only for rotations whose grid IoU is within
0.05 of the top one, skipping repeats of a rotated grid already tried (symmetries of B) and any
rotation whose bound min(|A|, |B|, bounding-box overlap) cannot beat the best so far. If
manifold3d refuses a mesh (not a closed, consistently oriented 2-manifold: the tessellation of
about 1 % of sampled parts has cracks or edges shared by three faces), the pair is scored with
the OCC booleans of exact mode when the results carry BREPs (`img2cq.scoring` always asks for
them), else with the best IoU of 81^3 occupancy grids: an estimate, a few hundredths off
for thin plates, and unreliable where the mesh has cracks.
``exact=True`` keeps the same normalisation but computes the intersection for every rotation
with OCC B-rep booleans inside a sandboxed child (`Executor.call`), as CAD-Coder does; slower.
"""

from __future__ import annotations

import io
import itertools

import manifold3d as m3d
import numpy as np

from img2cq.sandbox import ExecResult, ProgramRunner, default_executor

DEGENERATE_RTOL = 1e-4
VOXEL_CELLS = 81  # grid cells per axis for the non-manifold fallback
SEARCH_CELLS = 32  # grid cells per axis for ranking rotations
SEARCH_MARGIN = 0.05  # exact booleans for rotations whose grid IoU is this close to the top


def _signed_permutations() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The 48 symmetries of the cube as matrices, split into proper rotations and mirror images."""
    proper, mirrored = [], []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            q = np.zeros((3, 3))
            q[range(3), perm] = signs
            (proper if np.linalg.det(q) > 0 else mirrored).append(q)
    return proper, mirrored


PROPER_ROTATIONS, MIRROR_ROTATIONS = _signed_permutations()


def canonical_frame(volume: float, center, inertia) -> np.ndarray:
    """The 3x4 similarity [sR | -sRc] taking a solid into its canonical frame (see module doc)."""
    inertia = np.asarray(inertia, dtype=np.float64)
    center = np.asarray(center, dtype=np.float64)
    trace = float(np.trace(inertia))
    if not (volume > 0 and trace > 0):
        raise ValueError("solid has no volume or no extent")
    covariance = trace / 2 * np.eye(3) - inertia
    variances, vectors = np.linalg.eigh(covariance)
    order = np.argsort(-variances, kind="stable")
    variances, vectors = variances[order], vectors[:, order]
    axes = []
    start = 0
    while start < 3:  # group near-equal variances; give each group world-aligned axes
        end = start + 1
        while end < 3 and variances[start] - variances[end] <= DEGENERATE_RTOL * variances[0]:
            end += 1
        axes.extend(_world_aligned_basis(vectors[:, start:end]) if end - start > 1 else [vectors[:, start]])
        start = end
    rotation = np.array(axes)
    if np.linalg.det(rotation) < 0:
        rotation[2] = -rotation[2]
    scale = 1.0 / np.sqrt(trace / (2 * volume))
    return np.hstack([scale * rotation, (-scale * rotation @ center)[:, None]])


def _world_aligned_basis(basis: np.ndarray) -> list[np.ndarray]:
    """An orthonormal basis of span(basis) made of projected world axes, most aligned first."""
    projector = basis @ basis.T
    candidates = sorted((projector[:, k] for k in range(3)), key=lambda v: -np.linalg.norm(v))
    out: list[np.ndarray] = []
    for v in candidates:
        for u in out:
            v = v - (v @ u) * u
        if np.linalg.norm(v) > 1e-6:
            out.append(v / np.linalg.norm(v))
        if len(out) == basis.shape[1]:
            break
    return out


class _Solid:
    """A solid's mesh moved into its canonical frame, with its volume and bounding box."""

    def __init__(self, result: ExecResult):
        if not result.ok:
            raise ValueError(f"cannot score an invalid solid ({result.reason})")
        if result.vertices is None or result.faces is None:
            raise ValueError("the solid was executed without mesh=True")
        frame = canonical_frame(result.volume, result.center, result.inertia)
        self.vertices = result.vertices @ frame[:, :3].T + frame[:, 3]
        self.faces = np.asarray(result.faces, dtype=np.int64)
        self.manifold = m3d.Manifold(m3d.Mesh(vert_properties=self.vertices.astype(np.float32),
                                              tri_verts=self.faces.astype(np.uint32)))
        self.is_manifold = self.manifold.status() == m3d.Error.NoError and self.manifold.volume() > 0
        self.volume = self.manifold.volume() if self.is_manifold else None
        self.lo, self.hi = self.vertices.min(axis=0), self.vertices.max(axis=0)


def _upper_bound(a: _Solid, b: _Solid, q: np.ndarray) -> float:
    """An upper bound on IoU(A, qB): the intersection is at most min(|A|, |B|, box overlap)."""
    corners = np.stack([q @ b.lo, q @ b.hi])
    overlap = np.clip(np.minimum(a.hi, corners.max(axis=0)) - np.maximum(a.lo, corners.min(axis=0)), 0, None)
    inter = min(a.volume, b.volume, float(np.prod(overlap)))
    return inter / (a.volume + b.volume - inter)


def _occupancy(vertices: np.ndarray, faces: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Which cells of the grid `centres`^3 lie inside a closed triangle mesh, by +z ray parity.

    Every triangle adds one crossing to each grid column its xy-projection covers, at the first
    cell above its surface; a running count up each column is odd exactly inside the solid.
    """
    n, pitch = len(centres), centres[1] - centres[0]
    tri = vertices[faces]
    p0, e1, e2 = tri[:, 0], tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    det = e1[:, 0] * e2[:, 1] - e2[:, 0] * e1[:, 1]
    lo = np.searchsorted(centres, tri[:, :, :2].min(axis=1))
    hi = np.searchsorted(centres, tri[:, :, :2].max(axis=1), side="right")
    size = np.clip(hi - lo, 0, None)
    count = np.where(np.abs(det) > 1e-15, size[:, 0] * size[:, 1], 0)
    t = np.repeat(np.arange(len(tri)), count)  # one entry per (triangle, covered column)
    k = np.arange(len(t)) - np.repeat(np.cumsum(count) - count, count)
    ix, iy = lo[t, 0] + k // size[t, 1], lo[t, 1] + k % size[t, 1]
    dx, dy = centres[ix] - p0[t, 0], centres[iy] - p0[t, 1]
    u = (dx * e2[t, 1] - e2[t, 0] * dy) / det[t]
    v = (e1[t, 0] * dy - dx * e1[t, 1]) / det[t]
    hit = (u >= 0) & (v >= 0) & (u + v < 1)
    z = p0[t, 2] + u * e1[t, 2] + v * e2[t, 2]
    iz = np.clip(np.ceil((z - centres[0]) / pitch).astype(np.int64), 0, n)
    crossings = np.zeros((n, n, n + 1), dtype=np.int32)
    np.add.at(crossings, (ix[hit], iy[hit], iz[hit]), 1)
    return (np.cumsum(crossings, axis=2)[:, :, :n] % 2).astype(bool)


def _apply_signed_permutation(grid: np.ndarray, q: np.ndarray) -> np.ndarray:
    """The occupancy grid of qB from that of B (exact on a grid symmetric about the origin)."""
    src = np.argmax(np.abs(q), axis=1)  # new axis i takes old axis src[i]
    out = np.transpose(grid, src)
    flips = tuple(i for i in range(3) if q[i, src[i]] < 0)
    return np.flip(out, flips) if flips else out


def _grid_ious(a: _Solid, b: _Solid, rotations: list[np.ndarray], cells: int):
    """IoU of filled occupancy grids for each rotation of B, and the rotated grids of B."""
    extent = max(np.abs(a.vertices).max(), np.abs(b.vertices).max()) * (1 + 1e-6)
    centres = np.linspace(-extent, extent, cells)
    grid_a = _occupancy(a.vertices, a.faces, centres)
    moved = [_apply_signed_permutation(_occupancy(b.vertices, b.faces, centres), q) for q in rotations]
    return _ious_of_grids(grid_a, moved), moved


def _ious_of_grids(grid: np.ndarray, moved: list[np.ndarray]) -> list[float]:
    return [np.count_nonzero(grid & m) / max(1, np.count_nonzero(grid | m)) for m in moved]


def _mesh_best_iou(a: _Solid, b: _Solid, rotations: list[np.ndarray]) -> float:
    """Best IoU over `rotations` of B, by exact mesh booleans on the promising rotations (`_best_of_ranked`)."""
    coarse, moved = _grid_ious(a, b, rotations, SEARCH_CELLS)
    return _best_of_ranked(a, b, rotations, coarse, moved)


def _best_of_ranked(a: _Solid, b: _Solid, rotations: list[np.ndarray], coarse: list[float],
                    moved: list[np.ndarray]) -> float:
    """Best IoU of A and a rotation of B, by exact booleans on the rotations whose coarse grid IoU
    is within SEARCH_MARGIN of the top one, skipping any whose rotated grid repeats one already
    tried (a symmetry of B) or whose `_upper_bound` cannot beat the best found."""
    tried: list[np.ndarray] = []
    best = 0.0
    cutoff = max(coarse) - SEARCH_MARGIN
    for i in sorted(range(len(rotations)), key=lambda i: -coarse[i]):
        if coarse[i] < cutoff:
            break
        if _upper_bound(a, b, rotations[i]) <= best or any(np.array_equal(moved[i], g) for g in tried):
            continue
        tried.append(moved[i])
        turned = b.manifold.transform(np.hstack([rotations[i], np.zeros((3, 1))]))
        inter = (a.manifold ^ turned).volume()
        best = max(best, inter / (a.volume + b.volume - inter))
    return best


def pairwise_ious(results: list[ExecResult | None], columns: list[int]) -> np.ndarray:
    """(len(results), len(columns)): the IoU of every solid with each of the solids ``columns``
    names, as `iou_from_results` scores a pair (proper rotations), for comparing candidates with
    one another. Each solid is moved into its canonical frame and gridded once, on one grid for
    all; 0 where either result is missing or invalid, 1 on the diagonal. A mesh manifold3d refuses
    is scored by occupancy grids (`_voxel_best_iou`), never by OCC booleans: no sandbox here."""
    solids = [_Solid(r) if r is not None and r.ok else None for r in results]
    out = np.zeros((len(results), len(columns)))
    present = [s for s in solids if s is not None]
    if not present:
        return out
    extent = max(np.abs(s.vertices).max() for s in present) * (1 + 1e-6)
    centres = np.linspace(-extent, extent, SEARCH_CELLS)
    grids = [None if s is None else _occupancy(s.vertices, s.faces, centres) for s in solids]
    for k, j in enumerate(columns):
        b = solids[j]
        if b is None:
            continue
        moved = [_apply_signed_permutation(grids[j], q) for q in PROPER_ROTATIONS]
        for i, a in enumerate(solids):
            if i == j:
                out[i, k] = 1.0
            elif a is not None and i in columns[:k]:  # already scored the other way round
                out[i, k] = out[j, columns.index(i)]
            elif a is not None and a.is_manifold and b.is_manifold:
                out[i, k] = _best_of_ranked(a, b, PROPER_ROTATIONS, _ious_of_grids(grids[i], moved), moved)
            elif a is not None:
                out[i, k] = _voxel_best_iou(a, b, PROPER_ROTATIONS)
    return out


def _voxel_best_iou(a: _Solid, b: _Solid, rotations: list[np.ndarray]) -> float:
    """Fallback for non-manifold meshes: the best IoU of filled occupancy grids."""
    return max(_grid_ious(a, b, rotations, VOXEL_CELLS)[0])


def _rotations(allow_mirror: bool) -> list[np.ndarray]:
    return PROPER_ROTATIONS + MIRROR_ROTATIONS if allow_mirror else PROPER_ROTATIONS


def iou_from_results(gt: ExecResult, pred: ExecResult, allow_mirror: bool = False,
                     executor: ProgramRunner | None = None) -> float:
    """Best IoU of two solids already executed with mesh=True (raises ValueError if either failed).

    If manifold3d refuses a mesh, the pair is scored with OCC booleans when both results carry
    a BREP (brep=True; sandboxed on `executor`), else with the 81^3 occupancy-grid estimate.
    """
    a, b = _Solid(gt), _Solid(pred)
    if a.is_manifold and b.is_manifold:
        return _mesh_best_iou(a, b, _rotations(allow_mirror))
    if gt.brep is not None and pred.brep is not None:
        return exact_iou_from_results(gt, pred, allow_mirror, executor)
    return _voxel_best_iou(a, b, _rotations(allow_mirror))


def exact_iou_from_results(gt: ExecResult, pred: ExecResult, allow_mirror: bool = False,
                           executor: ProgramRunner | None = None, timeout: float = 120.0) -> float:
    """`iou_from_results` with OCC B-rep booleans; both results need brep=True."""
    if not (gt.ok and pred.ok and gt.brep is not None and pred.brep is not None):
        raise ValueError("exact IoU needs two valid solids executed with brep=True")
    frame_a = canonical_frame(gt.volume, gt.center, gt.inertia)
    frame_b = canonical_frame(pred.volume, pred.center, pred.inertia)
    out = (executor or default_executor()).call(
        "img2cq.iou:occ_ious", gt.brep, pred.brep, frame_a, frame_b,
        np.array(_rotations(allow_mirror)), timeout=timeout)
    if not out.ok:
        raise RuntimeError(f"exact boolean failed ({out.reason})")
    return max(out.extras["value"])


def occ_ious(brep_a: bytes, brep_b: bytes, frame_a: np.ndarray, frame_b: np.ndarray,
             rotations: np.ndarray) -> list[float]:
    """IoU of A and each rotation of B, in their canonical frames, by OCC booleans.

    Trusted code meant to run inside a sandboxed child through `Executor.call` (hence the local
    CadQuery import: the evaluating process itself never loads CadQuery).
    """
    import cadquery as cq
    from OCP.gp import gp_Trsf

    def transformed(shape: cq.Shape, matrix: np.ndarray) -> cq.Shape:
        trsf = gp_Trsf()
        trsf.SetValues(*(float(x) for x in np.asarray(matrix).reshape(-1)))
        return shape._apply_transform(trsf)

    def placed(brep: bytes, matrix: np.ndarray) -> cq.Shape:
        return transformed(cq.Shape.importBrep(io.BytesIO(brep)), matrix)

    a, b = placed(brep_a, frame_a), placed(brep_b, frame_b)
    va, vb = a.Volume(), b.Volume()
    ious = []
    for q in rotations:
        moved = b.mirror("XY") if np.linalg.det(q) < 0 else b
        proper = q @ np.diag([1.0, 1.0, -1.0]) if np.linalg.det(q) < 0 else q
        moved = transformed(moved, np.hstack([proper, np.zeros((3, 1))]))
        inter = a.intersect(moved).Volume()
        ious.append(inter / (va + vb - inter))
    return ious
