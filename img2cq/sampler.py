"""Procedural sampler of GenCAD-Code style CadQuery programs (DeepCAD sketch-and-extrude).

The real dataset cannot be downloaded here, so training data is drawn from this sampler. A part is
designed in the frame of its first sketch (that sketch's normal is local +Z); later sketches sit on
faces of the part's bounding box (bosses, pockets, through holes, trims) with axis-aligned local
normals; bosses are placed only where they meet the first body's material, not over its holes or
notches. The whole part is then rotated into the world by the first sketch's plane, centred and
scaled into about [-0.75, 0.75], and printed exactly in the GenCAD-Code style:
plane vectors come from DeepCAD's polar rotations (and keep their float noise), sketch coordinates
are integers on a 256-level grid times the sketch scale, numbers are Python float reprs.

See /work/shared/reference/gencad-code.md for the style this matches, and DATASET.md for measured
statistics.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

# Tunable weights. Every key can be overridden through sample_program(rng, weights={...}).
DEFAULT_WEIGHTS: dict[str, dict] = {
    # number of sketches (a little over half the parts are one sketch + one extrude)
    "n_sketches": {1: 0.57, 2: 0.17, 3: 0.1, 4: 0.07, 5: 0.04, 6: 0.025, 7: 0.0125, 8: 0.0125},
    # normal of the first sketch in the world (the part's "up"); +Z most, then -Y, then +X
    "base_normal": {"+Z": 0.46, "-Y": 0.2, "+X": 0.12, "-Z": 0.05, "+Y": 0.05, "-X": 0.04, "tilted": 0.08},
    # profile of the first sketch
    "base_profile": {"plate": 0.24, "block": 0.1, "rounded_plate": 0.06, "cylinder": 0.1, "ring": 0.08,
                     "disc_holes": 0.05, "slot": 0.06, "polygon": 0.05, "L": 0.07, "T": 0.04, "U": 0.04,
                     "arc_profile": 0.06, "bracket": 0.04},
    # what a later sketch does to the part
    "feature": {"boss": 0.62, "pocket": 0.08, "through": 0.16, "intersect": 0.02, "stack": 0.12},
    # profile of a later sketch (bosses, pockets, holes)
    "feature_profile": {"rect": 0.25, "circle": 0.45, "ring": 0.05, "rounded_rect": 0.06, "slot": 0.07,
                        "polygon": 0.04, "holes": 0.08},
    # face of the part's box a later sketch sits on, in the part frame
    "face": {"+Z": 0.6, "-Z": 0.12, "+X": 0.07, "-X": 0.07, "+Y": 0.07, "-Y": 0.07},
    "both_prob": 0.2,        # share of symmetric extrusions, extrude(d, both=True)
}

# DeepCAD polar angles (theta, phi) of each axis-aligned normal.
_AXIS_ANGLES = {"+Z": (0.0, 0.0), "-Z": (math.pi, 0.0), "+X": (math.pi / 2, 0.0), "-X": (math.pi / 2, math.pi),
                "+Y": (math.pi / 2, math.pi / 2), "-Y": (math.pi / 2, -math.pi / 2)}
_AXIS_VECTORS = {"+Z": (0, 0, 1), "-Z": (0, 0, -1), "+X": (1, 0, 0), "-X": (-1, 0, 0),
                 "+Y": (0, 1, 0), "-Y": (0, -1, 0)}
GRID = 256  # DeepCAD quantises sketches to 256 levels


def polar_frame(theta: float, phi: float, gamma: float) -> tuple[np.ndarray, np.ndarray]:
    """DeepCAD's plane parameterisation -> (normal, x_dir); cos(pi/2) noise is kept on purpose."""
    ct, st, cp, sp = math.cos(theta), math.sin(theta), math.cos(phi), math.sin(phi)
    normal = np.array([st * cp, st * sp, ct])
    ry = np.array([[ct, 0.0, st], [0.0, 1.0, 0.0], [-st, 0.0, ct]])
    rz = np.array([[cp, -sp, 0.0], [sp, cp, 0.0], [0.0, 0.0, 1.0]])
    ref_x = rz @ (ry @ np.array([1.0, 0.0, 0.0]))
    ref_y = np.cross(normal, ref_x)
    return normal, ref_x * math.cos(gamma) + ref_y * math.sin(gamma)


# ----------------------------------------------------------------------------------------------
# Intermediate representation: loops on the integer sketch grid, sketches on planes.

@dataclass
class Loop:
    """A closed loop on the sketch grid: a circle, or a path of ("line", p) / ("arc", mid, end)."""
    start: tuple[float, float]
    segments: list = field(default_factory=list)
    radius: float | None = None   # set for circles (start is then the centre)

    def points(self) -> list[tuple[float, float]]:
        if self.radius is not None:
            (x, y), r = self.start, self.radius
            return [(x - r, y - r), (x + r, y + r)]
        return [self.start] + [p for seg in self.segments for p in seg[1:]]


@dataclass
class Sketch:
    origin: np.ndarray      # part frame
    x_dir: np.ndarray       # part frame
    normal: np.ndarray      # part frame
    angles: tuple           # (theta, phi, gamma) of the plane in the part frame
    scale: float            # part units per GRID grid steps
    loops: list[Loop]
    depth: int              # extrusion depth in grid steps
    both: bool
    op: str                 # "union" | "cut" | "intersect" (ignored for the first sketch)
    embed: float = 0.0      # how far the sketch plane lies inside the body (bosses), part units

    def corners(self) -> np.ndarray:
        """Part-frame points bounding the extruded sketch (used for the part's box)."""
        y_dir = np.cross(self.normal, self.x_dir)
        unit = self.scale / GRID
        pts2 = np.array([p for loop in self.loops for p in loop.points()], dtype=float) * unit
        base = self.origin + pts2[:, :1] * self.x_dir + pts2[:, 1:] * y_dir
        d = self.depth * unit
        lo = -d if self.both else 0.0
        return np.concatenate([base + lo * self.normal, base + d * self.normal])


def _pick(rng: np.random.Generator, table: dict):
    keys = list(table)
    p = np.array([table[k] for k in keys], dtype=float)
    return keys[rng.choice(len(keys), p=p / p.sum())]


# ----------------------------------------------------------------------------------------------
# 2D profiles on an integer grid region (x0, y0, x1, y1). Each returns (loops, safe) where safe is a
# list of grid rectangles inside the solid area, usable for holes.

def _poly(points) -> Loop:
    """Closed polyline; close() draws the last edge back to the start, as in GenCAD-Code."""
    return Loop(tuple(points[0]), [("line", tuple(p)) for p in points[1:]])


def _rect(x0, y0, x1, y1):
    return [_poly([(x1, y0), (x1, y1), (x0, y1), (x0, y0)])], [(x0, y0, x1, y1)]


def _rounded_rect(rng, x0, y0, x1, y1):
    r = int(rng.integers(4, max(5, min(x1 - x0, y1 - y0) // 3)))  # r >= 4 keeps rounded arc midpoints off the chord
    c = r * (1 - math.sqrt(0.5))  # arc midpoint offset from the corner
    m = lambda v: float(round(v))
    loop = Loop((x0 + r, y0), [
        ("line", (x1 - r, y0)), ("arc", (m(x1 - c), m(y0 + c)), (x1, y0 + r)),
        ("line", (x1, y1 - r)), ("arc", (m(x1 - c), m(y1 - c)), (x1 - r, y1)),
        ("line", (x0 + r, y1)), ("arc", (m(x0 + c), m(y1 - c)), (x0, y1 - r)),
        ("line", (x0, y0 + r)), ("arc", (m(x0 + c), m(y0 + c)), (x0 + r, y0))])
    return [loop], [(x0 + r // 2, y0 + r // 2, x1 - r // 2, y1 - r // 2)]


def _slot(x0, y0, x1, y1):
    w, h = x1 - x0, y1 - y0
    if w >= h:
        r, cy = h // 2, y0 + h // 2
        loop = Loop((x0 + r, y0 + 0), [("line", (x1 - r, y0)), ("arc", (x1, cy), (x1 - r, y0 + 2 * r)),
                                        ("line", (x0 + r, y0 + 2 * r)), ("arc", (x0, cy), (x0 + r, y0))])
        return [loop], [(x0 + r, y0, x1 - r, y0 + 2 * r)]
    r, cx = w // 2, x0 + w // 2
    loop = Loop((x0 + 2 * r, y0 + r), [("line", (x0 + 2 * r, y1 - r)), ("arc", (cx, y1), (x0, y1 - r)),
                                        ("line", (x0, y0 + r)), ("arc", (cx, y0), (x0 + 2 * r, y0 + r))])
    return [loop], [(x0, y0 + r, x0 + 2 * r, y1 - r)]


def _circle(x0, y0, x1, y1):
    r = min(x1 - x0, y1 - y0) // 2
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    s = int(r * 0.7)
    return [Loop((cx, cy), radius=r)], [(cx - s, cy - s, cx + s, cy + s)]


def _ring(rng, x0, y0, x1, y1):
    loops, _ = _circle(x0, y0, x1, y1)
    r = loops[0].radius
    loops.append(Loop(loops[0].start, radius=int(r * rng.uniform(0.3, 0.8))))
    return loops, []


def _polygon(rng, x0, y0, x1, y1):
    n = int(rng.integers(3, 9))
    r = min(x1 - x0, y1 - y0) / 2
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    a0 = rng.choice([0.0, math.pi / n, math.pi / 2])
    pts = [(round(cx + r * math.cos(a0 + 2 * math.pi * i / n)), round(cy + r * math.sin(a0 + 2 * math.pi * i / n)))
           for i in range(n)]
    s = int(r * 0.45)
    return [_poly(pts)], [(int(cx) - s, int(cy) - s, int(cx) + s, int(cy) + s)]


def _letter(rng, kind, x0, y0, x1, y1):
    """L, T and U profiles with arm thickness t."""
    w, h = x1 - x0, y1 - y0
    t = int(rng.integers(max(4, min(w, h) // 6), max(5, min(w, h) // 2)))
    if kind == "L":
        pts = [(x1, y0), (x1, y0 + t), (x0 + t, y0 + t), (x0 + t, y1), (x0, y1), (x0, y0)]
        safe = [(x0 + t, y0, x1, y0 + t), (x0, y0 + t, x0 + t, y1)]
    elif kind == "T":
        a, b = x0 + (w - t) // 2, x0 + (w + t) // 2
        pts = [(x1, y1 - t), (x1, y1), (x0, y1), (x0, y1 - t), (a, y1 - t), (a, y0), (b, y0), (b, y1 - t)]
        safe = [(x0, y1 - t, x1, y1), (a, y0, b, y1 - t)]
    else:
        pts = [(x1, y0), (x1, y1), (x1 - t, y1), (x1 - t, y0 + t), (x0 + t, y0 + t), (x0 + t, y1), (x0, y1), (x0, y0)]
        safe = [(x0, y0, x1, y0 + t), (x0, y0 + t, x0 + t, y1), (x1 - t, y0 + t, x1, y1)]
    return [_poly(pts)], safe


def _arc_profile(rng, x0, y0, x1, y1):
    """Rectangle-like outline with one or two sides bulged into arcs (lines and arcs)."""
    w, h = x1 - x0, y1 - y0
    b = int(rng.integers(max(2, h // 8), max(3, h // 3)))
    top = [("arc", ((x0 + x1) // 2, y1), (x0, y1 - b))]
    segs = [("line", (x1, y1 - b))] + top + [("line", (x0, y0 + b))]
    if rng.random() < 0.5:
        segs.append(("arc", ((x0 + x1) // 2, y0), (x1, y0 + b)))
    else:
        segs += [("line", (x0 + w // 4, y0)), ("line", (x1 - w // 4, y0))]
    return [Loop((x1, y0 + b), segs)], [(x0 + w // 4, y0 + b, x1 - w // 4, y1 - b)]


def _holes(rng, safe) -> list[Loop]:
    """Holes inside one safe rectangle: one, a row, four corners or a grid."""
    if not safe:
        return []
    x0, y0, x1, y1 = safe[rng.integers(len(safe))]
    w, h = x1 - x0, y1 - y0
    if min(w, h) < 8:
        return []
    pattern = _pick(rng, {"one": 0.5, "row": 0.2, "corners": 0.22, "grid": 0.08})
    nx, ny = {"one": (1, 1), "corners": (2, 2), "grid": (int(rng.integers(2, 4)), 2)}.get(
        pattern, (int(rng.integers(2, 4)), 1) if w >= h else (1, int(rng.integers(2, 4))))
    pitch = min(w / nx, h / ny)
    r = int(rng.integers(1, max(2, int(pitch * 0.35))) + 1)
    if r * 2 + 2 > pitch:
        return []
    xs = [round(x0 + w * (i + 0.5) / nx) for i in range(nx)]
    ys = [round(y0 + h * (j + 0.5) / ny) for j in range(ny)]
    return [Loop((x, y), radius=r) for x in xs for y in ys]


def _profile(rng, kind, region):
    x0, y0, x1, y1 = region
    if kind in ("plate", "block", "rect"):
        loops, safe = _rect(*region)
    elif kind in ("rounded_plate", "rounded_rect"):
        loops, safe = _rounded_rect(rng, *region)
    elif kind == "slot":
        loops, safe = _slot(*region)
    elif kind in ("cylinder", "circle", "disc_holes"):
        loops, safe = _circle(*region)
    elif kind == "holes":
        loops, safe = _holes(rng, [region]) or _circle(*region)[0], []
    elif kind == "ring":
        loops, safe = _ring(rng, *region)
    elif kind == "polygon":
        loops, safe = _polygon(rng, *region)
    elif kind in ("L", "T", "U", "bracket"):
        loops, safe = _letter(rng, "L" if kind == "bracket" else kind, *region)
    elif kind == "arc_profile":
        loops, safe = _arc_profile(rng, *region)
    else:
        raise ValueError(f"unknown profile kind {kind!r}")
    if kind == "disc_holes":
        c, r = loops[0].start, loops[0].radius
        n, rr = int(rng.integers(3, 7)), r * rng.uniform(0.55, 0.75)
        hole = max(2, int(min(r * 0.15, rr * math.sin(math.pi / n) * 0.6)))
        a0 = rng.choice([0.0, math.pi / n])
        loops += [Loop((round(c[0] + rr * math.cos(a0 + 2 * math.pi * i / n)),
                        round(c[1] + rr * math.sin(a0 + 2 * math.pi * i / n))), radius=hole) for i in range(n)]
        if rng.random() < 0.5:
            loops.append(Loop(c, radius=max(2, int(r * rng.uniform(0.15, 0.35)))))
    elif kind in ("plate", "rounded_plate", "bracket", "polygon") and rng.random() < 0.3 or \
            kind in ("L", "T", "U", "arc_profile", "block", "slot") and rng.random() < 0.2:
        loops += _holes(rng, safe)
    elif kind == "rect" and rng.random() < 0.1:
        loops += _holes(rng, safe)
    return loops


# ----------------------------------------------------------------------------------------------
# Where a profile has material: used to put bosses only on the first body's material (a boss over a
# hole or a notch would float free and the draw would be rejected as disconnected).

def _loop_polygon(loop: Loop) -> np.ndarray:
    """A loop as a closed polygon on the grid; an arc becomes its two chords through the midpoint.
    Every arc this sampler draws bulges outwards, so this only shrinks the material a little."""
    if loop.radius is not None:
        a = np.linspace(0.0, 2 * math.pi, 16, endpoint=False)
        return np.column_stack([loop.start[0] + loop.radius * np.cos(a), loop.start[1] + loop.radius * np.sin(a)])
    return np.array([loop.start] + [p for seg in loop.segments for p in seg[1:]], dtype=float)


def _material(loops: list[Loop], pts: np.ndarray) -> np.ndarray:
    """Boolean per grid point (n, 2): inside the profile's material (even-odd over all its loops)."""
    count = np.zeros(len(pts), dtype=int)
    x, y = pts[:, :1], pts[:, 1:]
    for loop in loops:
        a = _loop_polygon(loop)
        b = np.roll(a, -1, axis=0)
        crosses = (a[:, 1] > y) != (b[:, 1] > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_cross = a[:, 0] + (y - a[:, 1]) * (b[:, 0] - a[:, 0]) / (b[:, 1] - a[:, 1])
        count += (crosses & (x < x_cross)).sum(axis=1)
    return count % 2 == 1


def _material_points(loops: list[Loop], n: int = 9) -> np.ndarray:
    """Grid points (k, 2) on an n x n lattice over the loops' box that lie in the profile's material."""
    pts = np.array([p for loop in loops for p in loop.points()], dtype=float)
    (x0, y0), (x1, y1) = pts.min(axis=0), pts.max(axis=0)
    lattice = np.array([(x, y) for x in np.linspace(x0, x1, n + 2)[1:-1] for y in np.linspace(y0, y1, n + 2)[1:-1]])
    return lattice[_material(loops, lattice)]


def _attached(base: Sketch, feat: Sketch, min_share: float = 0.25) -> bool:
    """Whether at least min_share of the feature's footprint, halfway through the layer where it is
    embedded in the part, lies in the first body's material."""
    uv = _material_points(feat.loops) * (feat.scale / GRID)
    if not len(uv):
        return False
    y_dir = np.cross(feat.normal, feat.x_dir)
    pts = feat.origin + uv[:, :1] * feat.x_dir + uv[:, 1:] * y_dir + feat.embed / 2 * feat.normal - base.origin
    unit = base.scale / GRID
    base_y = np.cross(base.normal, base.x_dir)
    height = pts @ base.normal
    depth = base.depth * unit
    in_height = (height > (-depth if base.both else 0.0)) & (height < depth)
    in_profile = _material(base.loops, np.column_stack([pts @ base.x_dir, pts @ base_y]) / unit)
    return bool(np.mean(in_height & in_profile) >= min_share)


# ----------------------------------------------------------------------------------------------
# Part assembly

def _aspect_region(rng, kind) -> tuple[int, int, int, int]:
    """Grid region of the first sketch; its longer side spans the whole grid."""
    if kind in ("cylinder", "ring", "disc_holes", "polygon"):
        return (0, 0, GRID, GRID)
    short = int(GRID * rng.uniform(0.25, 1.0)) if kind != "slot" else int(GRID * rng.uniform(0.2, 0.5))
    return (0, 0, GRID, short) if rng.random() < 0.7 else (0, 0, short, GRID)


def _base_depth(rng, kind) -> int:
    """Extrusion depth of the first sketch, in grid steps: plates are thin, cylinders tall."""
    lo, hi = {"plate": (6, 40), "rounded_plate": (6, 40), "disc_holes": (10, 60), "bracket": (10, 60),
              "cylinder": (30, 400), "ring": (20, 200), "block": (60, 260)}.get(kind, (15, 160))
    return int(rng.integers(lo, hi))


def _face_plane(box_lo, box_hi, axis: str, at_max: bool, rng, offset: float | None = None):
    """Plane with an axis-aligned part-frame normal, its origin at the box face, and the box's
    extent in the plane's (u, v) coordinates."""
    theta, phi = _AXIS_ANGLES[axis]
    gamma = float(rng.choice([0.0, 0.0, 0.0, math.pi / 2, math.pi, -math.pi / 2]))
    normal, x_dir = polar_frame(theta, phi, gamma)
    y_dir = np.cross(normal, x_dir)
    corners = np.array([[a, b, c] for a in (box_lo[0], box_hi[0]) for b in (box_lo[1], box_hi[1])
                        for c in (box_lo[2], box_hi[2])])
    n_proj, u, v = corners @ normal, corners @ x_dir, corners @ y_dir
    h = (n_proj.max() if at_max else n_proj.min()) if offset is None else offset
    origin = h * normal + u.min() * x_dir + v.min() * y_dir
    return normal, x_dir, (theta, phi, gamma), origin, (u.max() - u.min(), v.max() - v.min()), (n_proj.min(), n_proj.max())


def _sub_region(rng, W, H, frac_lo, frac_hi):
    """Random grid sub-rectangle of [0, W] x [0, H], 2 grid steps at least from the border."""
    w = max(6, int(W * rng.uniform(frac_lo, frac_hi)))
    h = max(6, int(H * rng.uniform(frac_lo, frac_hi)))
    w, h = min(w, max(6, W - 4)), min(h, max(6, H - 4))
    if rng.random() < 0.75:  # centred features are the common case
        x0, y0 = (W - w) // 2, (H - h) // 2
    else:
        x0 = int(rng.integers(2, max(3, W - w - 1)))
        y0 = int(rng.integers(2, max(3, H - h - 1)))
    return (x0, y0, x0 + w, y0 + h)


def _feature(rng, w, base: Sketch, box_lo, box_hi, tries: int = 6) -> Sketch | None:
    """A later sketch acting on the first body's box. Bosses are redrawn (same kind, new face and
    placement) until they sit on the first body's material; None if `tries` draws all miss."""
    kind = _pick(rng, w["feature"])
    for _ in range(tries):
        feat = _placed_feature(rng, w, kind, _pick(rng, w["face"]), box_lo, box_hi)
        if feat is not None and (feat.op != "union" or _attached(base, feat)):
            return feat
    return None


def _placed_feature(rng, w, kind: str, face: str, box_lo, box_hi) -> Sketch | None:
    """A feature of the given kind on one face of the box."""
    embed = 0.0
    axis, at_max = face[1], face[0] == "+"
    if kind in ("intersect", "through"):
        axis_key = "+" + axis
        normal, x_dir, ang, origin, (U, V), (n0, n1) = _face_plane(box_lo, box_hi, axis_key, True, rng, offset=0.0)
        ext = n1 - n0
        if kind == "through":
            origin = origin + normal * (n0 + n1) / 2
        else:
            origin = origin + normal * (n0 - 0.05 * ext)
    elif kind == "pocket":
        # normal points into the part, origin on the face
        inward = ("-" if at_max else "+") + axis
        normal, x_dir, ang, origin, (U, V), (n0, n1) = _face_plane(box_lo, box_hi, inward, False, rng)
        ext = n1 - n0
    else:  # boss / stack: normal points out of the face; embedded so it fuses with the body
        outward = ("+" if at_max else "-") + axis
        normal, x_dir, ang, origin, (U, V), (n0, n1) = _face_plane(box_lo, box_hi, outward, True, rng)
        ext = n1 - n0
        embed = (0.02 if axis == "Z" else 0.3) * ext  # side faces of the box may touch round bodies only at a line
        origin = origin - normal * embed
    scale = max(U, V)
    if scale <= 1e-9 or ext <= 1e-9:
        return None
    W, H = max(8, round(GRID * U / scale)), max(8, round(GRID * V / scale))
    unit = scale / GRID
    both = False
    if kind == "intersect":
        region = (0, 0, W, H)
        prof = _pick(rng, {"circle": 0.5, "rounded_rect": 0.5})
        if prof == "circle":
            r = int(math.hypot(W, H) / 2 * rng.uniform(0.8, 0.95))
            loops = [Loop((W // 2, H // 2), radius=r)]
        else:
            loops = _rounded_rect(rng, *region)[0]
        depth, op = math.ceil(ext * 1.1 / unit), "intersect"
    elif kind == "through":
        prof = _pick(rng, {k: v for k, v in w["feature_profile"].items() if k != "ring"})
        loops = _profile(rng, prof, _sub_region(rng, W, H, 0.1, 0.45))
        loops = loops[:1] if prof != "holes" else loops
        depth, op, both = math.ceil(ext * 0.6 / unit), "cut", True
    elif kind == "pocket":
        prof = _pick(rng, w["feature_profile"])
        loops = _profile(rng, prof, _sub_region(rng, W, H, 0.15, 0.6))
        loops = loops[:1] if prof != "holes" else loops
        depth, op = max(1, int(ext / unit * rng.uniform(0.15, 0.7))), "cut"
    elif kind == "stack":
        prof = _pick(rng, {"rect": 1, "rounded_rect": 1, "circle": 1})
        loops = _profile(rng, prof, _sub_region(rng, W, H, 0.6, 0.95))
        depth, op = max(2, int(ext / unit * rng.uniform(0.2, 1.0))), "union"
    else:
        prof = _pick(rng, {k: v for k, v in w["feature_profile"].items() if k != "holes"})
        loops = _profile(rng, prof, _sub_region(rng, W, H, 0.15, 0.55))
        depth, op = max(2, int(GRID * rng.uniform(0.05, 0.4) + embed / unit)), "union"
        if rng.random() < w["both_prob"] * 0.5:
            both = True
    return Sketch(origin, x_dir, normal, ang, scale, loops, depth, both, op, embed)


def sample_sketches(rng: np.random.Generator, weights: dict | None = None) -> list[Sketch]:
    """Sketches of one part in its own frame (first sketch on local z = 0, normal +Z)."""
    w = {**DEFAULT_WEIGHTS, **(weights or {})}
    kind = _pick(rng, w["base_profile"])
    region = _aspect_region(rng, kind)
    gamma = float(rng.choice([0.0, 0.0, math.pi / 2, -math.pi / 2, math.pi]))
    normal, x_dir = polar_frame(0.0, 0.0, gamma)
    scale = 1.0
    unit = scale / GRID
    both = rng.random() < w["both_prob"]
    origin = -(region[2] * unit / 2) * x_dir - (region[3] * unit / 2) * np.cross(normal, x_dir)
    base = Sketch(origin, x_dir, normal, (0.0, 0.0, gamma), scale, _profile(rng, kind, region),
                  _base_depth(rng, kind), both, "union")
    sketches = [base]
    n = _pick(rng, w["n_sketches"])
    pts = base.corners()  # later sketches act on the first body, so they stay attached to it
    while len(sketches) < n:
        feat = _feature(rng, w, base, pts.min(axis=0), pts.max(axis=0))
        if feat is not None:
            sketches.append(feat)
    return sketches


def _part_rotation(rng, w) -> tuple[np.ndarray, tuple[float, float, float]]:
    """World rotation of the part frame, from the first sketch's world plane angles."""
    choice = _pick(rng, w["base_normal"])
    if choice == "tilted":
        theta = float(rng.choice([1, 2, 3, 4, 5]) * math.pi / 12)
        phi = float(rng.choice(np.arange(-6, 6)) * math.pi / 6)
    else:
        theta, phi = _AXIS_ANGLES[choice]
    gamma = float(rng.choice([0.0, 0.0, math.pi / 2, -math.pi / 2, math.pi]))
    n, x = polar_frame(theta, phi, gamma)
    return np.column_stack([x, np.cross(n, x), n]), (theta, phi, gamma)


def _fmt(v) -> str:
    return repr(float(v))


def _vec(v) -> str:
    return f"cq.Vector({_fmt(v[0])}, {_fmt(v[1])}, {_fmt(v[2])})"


def render_program(sketches: list[Sketch], rotation: np.ndarray, rng: np.random.Generator) -> str:
    """Rotate, centre and scale the part into about [-0.75, 0.75], then print GenCAD-Code."""
    pts = np.concatenate([s.corners() for s in sketches if s.op == "union"]) @ rotation.T
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    centre = (lo + hi) / 2
    k = 1.5 * rng.uniform(0.9, 1.0) / (hi - lo).max()
    lines = ["import cadquery as cq"]
    loop_id = 0
    for i, s in enumerate(sketches):
        origin = (rotation @ s.origin - centre) * k
        x_dir, normal = rotation @ s.x_dir, rotation @ s.normal
        lines.append(f"# Generating a workplane for sketch {i}")
        lines.append(f"wp_sketch{i} = cq.Workplane(cq.Plane({_vec(origin)}, {_vec(x_dir)}, {_vec(normal)}))")
        unit = s.scale * k / GRID
        q = lambda p: f"{_fmt(p[0] * unit)}, {_fmt(p[1] * unit)}"
        names = []
        for loop in s.loops:
            if loop.radius is not None:
                body = f".moveTo({q(loop.start)}).circle({_fmt(loop.radius * unit)})"
            else:
                body = f".moveTo({q(loop.start)})" + "".join(
                    f".lineTo({q(seg[1])})" if seg[0] == "line" else f".threePointArc(({q(seg[1])}), ({q(seg[2])}))"
                    for seg in loop.segments) + ".close()"
            lines.append(f"loop{loop_id}=wp_sketch{i}{body}")
            names.append(f"loop{loop_id}")
            loop_id += 1
        adds = "".join(f".add({n})" for n in names)
        both = ", both=True" if s.both else ""
        lines.append(f"solid{i}=wp_sketch{i}{adds}.extrude({_fmt(s.depth * unit)}{both})")
        lines.append("solid=solid0" if i == 0 else f"solid=solid.{s.op}(solid{i})")
    return "\n".join(lines) + "\n"


def sample_program(rng: np.random.Generator, weights: dict | None = None) -> str:
    """One GenCAD-Code style program; the same generator state gives the same program."""
    w = {**DEFAULT_WEIGHTS, **(weights or {})}
    sketches = sample_sketches(rng, w)
    rotation, _ = _part_rotation(rng, w)
    return render_program(sketches, rotation, rng)
