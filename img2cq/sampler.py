"""Procedural sampler of GenCAD-Code style CadQuery programs (DeepCAD sketch-and-extrude).

The model is trained on programs drawn here, so parts are designed the way DeepCAD (Onshape) parts
are: a first sketch (plate, block, rounded rectangle, cylinder, ring, bolt-circle disc, slot, L/T/U
section, ...) defines the part; every later sketch is referenced to what exists. It sits flush on a
face of the body (the top or bottom of a pad of material, or a side face of the part's box), its
profile is centred, concentric, flush with an edge or in a symmetric pattern, and its extrusion goes
exactly through the part, exactly onto the face below, or a height related to the body's. Parts
are designed on an integer grid in the first sketch's frame and written as programs by
``img2cq.sketches`` (``write_program``: DeepCAD's normalisation, the codec's printer), so a sampled
program is a codec fixed point. As in the real data, sketch normals are +Z, -Y, +X or +Y (the
direction of an extrusion is its sign), and intersect is not used.

DATASET.md has the statistics of this sampler next to the real dataset's (`python -m img2cq.fidelity`).
"""
from __future__ import annotations

import math

import numpy as np

from img2cq.sketches import GRID, Loop, Pad, Sketch, axis_key, polar_frame, write_program

# Tunable weights. Every key can be overridden through sample_program(rng, weights={...}).
DEFAULT_WEIGHTS: dict[str, dict] = {
    # number of sketches (about 63% of real parts are one sketch + one extrude)
    "n_sketches": {1: 0.63, 2: 0.17, 3: 0.08, 4: 0.06, 5: 0.03, 6: 0.015, 7: 0.0075, 8: 0.0075},
    # world normal of the first sketch (the part's "up"); tilted planes are rare and single-sketch
    "base_normal": {"+Z": 0.53, "-Y": 0.31, "+X": 0.12, "+Y": 0.02, "tilted": 0.02},
    # profile of the first sketch
    "base_profile": {"rect": 0.22, "rounded_rect": 0.1, "circle": 0.12, "ring": 0.07, "disc_holes": 0.02,
                     "slot": 0.04, "L": 0.09, "T": 0.04, "U": 0.06, "polygon": 0.03, "arc_profile": 0.05,
                     "stepped": 0.05, "frame": 0.04, "chamfered": 0.07},
    # what a later sketch does: unions (boss, stack, extend, side_boss) and cuts (the rest)
    "feature": {"boss": 0.17, "stack": 0.2, "extend": 0.15, "side_boss": 0.11,
                "hole": 0.15, "pocket": 0.08, "notch": 0.08, "side_hole": 0.06},
    # world normal of a sketch on a side face, among those perpendicular to the first sketch's
    "side_normal": {"+Z": 0.5, "-Y": 0.3, "+X": 0.15, "+Y": 0.05},
    "both_prob": 0.1,         # share of symmetric first extrusions, extrude(d, both=True)
    "negative_prob": 0.08,    # share of first extrusions with a negative depth
    "split_pattern_prob": 0.3,  # a hole pattern drawn one sketch per hole, where the sketch budget allows
}

LONGEST_STOCK = 100  # the longest first extrusion, in lengths of its section's longer side

# DeepCAD polar angles (theta, phi) of each axis-aligned normal.
_AXIS_ANGLES = {"+Z": (0.0, 0.0), "-Z": (math.pi, 0.0), "+X": (math.pi / 2, 0.0), "-X": (math.pi / 2, math.pi),
                "+Y": (math.pi / 2, math.pi / 2), "-Y": (math.pi / 2, -math.pi / 2)}
ALLOWED_NORMALS = ("+Z", "-Y", "+X", "+Y")  # the only sketch normals of real GenCAD-Code parts


def _pick(rng: np.random.Generator, table: dict):
    keys = list(table)
    p = np.array([table[k] for k in keys], dtype=float)
    return keys[rng.choice(len(keys), p=p / p.sum())]


def _frac(rng, lo: float, hi: float, n: float) -> int:
    """An integer fraction of n, at least 1."""
    return max(1, int(round(n * rng.uniform(lo, hi))))


# ----------------------------------------------------------------------------------------------
# 2D profiles on a grid region (x0, y0, x1, y1)

def _poly(points) -> Loop:
    """Closed polyline; close() draws the last edge back to the start, as in GenCAD-Code."""
    return Loop(tuple(points[0]), [("line", tuple(p)) for p in points[1:]])


def _rect(x0, y0, x1, y1) -> Loop:
    return _poly([(x0, y0), (x1, y0), (x1, y1), (x0, y1)])


def _rounded_rect(rng, x0, y0, x1, y1) -> tuple[Loop, int]:
    """Rectangle with equal rounded corners; returns the loop and the corner radius."""
    r = int(rng.integers(2, max(3, min(x1 - x0, y1 - y0) // 3)))
    c = r * (1 - math.sqrt(0.5))  # arc midpoint offset from the corner
    loop = Loop((x0 + r, y0), [
        ("line", (x1 - r, y0)), ("arc", (x1 - c, y0 + c), (x1, y0 + r)),
        ("line", (x1, y1 - r)), ("arc", (x1 - c, y1 - c), (x1 - r, y1)),
        ("line", (x0 + r, y1)), ("arc", (x0 + c, y1 - c), (x0, y1 - r)),
        ("line", (x0, y0 + r)), ("arc", (x0 + c, y0 + c), (x0 + r, y0))])
    return loop, r


def _slot(x0, y0, x1, y1) -> Loop:
    """Stadium along the region's longer side."""
    w, h = x1 - x0, y1 - y0
    if w >= h:
        r, cy = h / 2, y0 + h / 2
        return Loop((x0 + r, y0), [("line", (x1 - r, y0)), ("arc", (x1, cy), (x1 - r, y1)),
                                   ("line", (x0 + r, y1)), ("arc", (x0, cy), (x0 + r, y0))])
    r, cx = w / 2, x0 + w / 2
    return Loop((x1, y0 + r), [("line", (x1, y1 - r)), ("arc", (cx, y1), (x0, y1 - r)),
                               ("line", (x0, y0 + r)), ("arc", (cx, y0), (x1, y0 + r))])


def _polygon(rng, x0, y0, x1, y1) -> Loop:
    n = int(rng.choice([3, 5, 6, 6, 8]))
    r = min(x1 - x0, y1 - y0) / 2
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    a0 = float(rng.choice([0.0, math.pi / n, math.pi / 2]))
    return _poly([(round(cx + r * math.cos(a0 + 2 * math.pi * i / n)), round(cy + r * math.sin(a0 + 2 * math.pi * i / n)))
                  for i in range(n)])


def _letter(rng, kind, x0, y0, x1, y1) -> tuple[Loop, list]:
    """L, T and U sections with arm thickness t; returns the loop and its arms (material rectangles)."""
    w, h = x1 - x0, y1 - y0
    thin = rng.random() < 0.35  # sheet-metal sections
    t = int(rng.integers(2, max(3, min(w, h) // 10))) if thin else int(rng.integers(max(4, min(w, h) // 6), max(5, min(w, h) // 2)))
    if kind == "L":
        pts = [(x0, y0), (x1, y0), (x1, y0 + t), (x0 + t, y0 + t), (x0 + t, y1), (x0, y1)]
        arms = [(x0, y0, x1, y0 + t), (x0, y0 + t, x0 + t, y1)]
    elif kind == "T":
        a, b = x0 + (w - t) // 2, x0 + (w + t) // 2
        pts = [(a, y0), (b, y0), (b, y1 - t), (x1, y1 - t), (x1, y1), (x0, y1), (x0, y1 - t), (a, y1 - t)]
        arms = [(x0, y1 - t, x1, y1), (a, y0, b, y1 - t)]
    else:
        pts = [(x0, y0), (x1, y0), (x1, y1), (x1 - t, y1), (x1 - t, y0 + t), (x0 + t, y0 + t), (x0 + t, y1), (x0, y1)]
        arms = [(x0, y0, x1, y0 + t), (x0, y0 + t, x0 + t, y1), (x1 - t, y0 + t, x1, y1)]
    return _poly(pts), arms


def _stepped(rng, x0, y0, x1, y1) -> tuple[Loop, list]:
    """A staircase section: 2-3 steps of equal rise; returns the loop and the steps (rectangles)."""
    n = int(rng.integers(2, 4))
    w, h = x1 - x0, y1 - y0
    xs = [x0] + [x0 + round(w * (i + 1) / n) for i in range(n - 1)] + [x1]
    tops = [y1 - round(h * i / n) for i in range(n)]
    pts = [(x0, y0), (x1, y0)]
    for i in reversed(range(n)):
        pts += [(xs[i + 1], tops[i]), (xs[i], tops[i])]
    return _poly(pts), [(xs[i], y0, xs[i + 1], tops[i]) for i in range(n)]


def _chamfered(rng, x0, y0, x1, y1) -> Loop:
    """A rectangle with one or two top corners chamfered, or a trapezoid (wedges, ramps)."""
    w, h = x1 - x0, y1 - y0
    a, b = _frac(rng, 0.2, 0.6, w), _frac(rng, 0.2, 0.9, h)
    kind = _pick(rng, {"one": 0.5, "two": 0.3, "trapezoid": 0.2})
    if kind == "one":
        return _poly([(x0, y0), (x1, y0), (x1, y1 - b), (x1 - a, y1), (x0, y1)])
    if kind == "two":
        a, b = min(a, w // 2 - 1), b
        return _poly([(x0, y0), (x1, y0), (x1, y1 - b), (x1 - a, y1), (x0 + a, y1), (x0, y1 - b)])
    return _poly([(x0, y0), (x1, y0), (x1 - a // 2, y1), (x0 + a // 2, y1)])


def _arc_profile(rng, x0, y0, x1, y1) -> Loop:
    """A rectangle with its top side bulged into an arc (a tombstone), sometimes the bottom too."""
    h = y1 - y0
    b = int(rng.integers(max(2, h // 8), max(3, h // 3)))
    segs = [("line", (x1, y1 - b)), ("arc", ((x0 + x1) / 2, y1), (x0, y1 - b)), ("line", (x0, y0 + b))]
    if rng.random() < 0.4:
        segs.append(("arc", ((x0 + x1) / 2, y0), (x1, y0 + b)))
        return Loop((x1, y0 + b), segs)
    return Loop((x1, y0), segs + [("line", (x0, y0))])


def hole_pattern(rng, rect, round_pad=None, max_r: float | None = None) -> list[Loop]:
    """Holes of equal radius in a symmetric pattern: one centred (concentric on a round pad), a row
    of two, four in the corners with equal margins, or a bolt circle on a round pad."""
    if round_pad is not None:
        cx, cy, r, r_in = round_pad
        if rng.random() < 0.3 or r_in:
            n = int(rng.choice([3, 4, 4, 6, 6, 8]))
            rr = (r + r_in) / 2 if r_in else r * rng.uniform(0.55, 0.72)
            hole = min((r - rr) * 0.6, rr * math.sin(math.pi / n) * 0.6, max_r or 1e9)
            if hole < 2:
                return []
            hole = _frac(rng, 0.5, 1.0, hole)
            a0 = float(rng.choice([0.0, math.pi / n]))
            return [Loop((cx + rr * math.cos(a0 + 2 * math.pi * i / n), cy + rr * math.sin(a0 + 2 * math.pi * i / n)),
                         radius=hole) for i in range(n)]
        return [Loop((cx, cy), radius=_frac(rng, 0.15, 0.5, min(r, max_r or r)))]
    x0, y0, x1, y1 = rect
    w, h = x1 - x0, y1 - y0
    short = min(w, h)
    pattern = _pick(rng, {"one": 0.62, "row": 0.2, "corners": 0.16, "grid": 0.02})
    if pattern == "one" or short < 12:
        r = short * rng.uniform(0.1, 0.35)
        centres = [(x0 + w / 2, y0 + h / 2)]
    else:
        m = short * rng.uniform(0.15, 0.3)
        r = m * rng.uniform(0.35, 0.7)
        if pattern == "row":
            centres = [(x0 + m, y0 + h / 2), (x1 - m, y0 + h / 2)] if w >= h else [(x0 + w / 2, y0 + m), (x0 + w / 2, y1 - m)]
        elif pattern == "corners":
            centres = [(x0 + m, y0 + m), (x1 - m, y0 + m), (x0 + m, y1 - m), (x1 - m, y1 - m)]
        else:
            xs = np.linspace(x0 + m, x1 - m, 3 if w >= h else 2)
            ys = np.linspace(y0 + m, y1 - m, 2 if w >= h else 3)
            centres = [(float(x), float(y)) for y in ys for x in xs]
    r = int(min(r, max_r or r))
    return [Loop(c, radius=r) for c in centres] if r >= 2 else []


# ----------------------------------------------------------------------------------------------
# The first sketch

def _base_region(rng, kind) -> tuple[int, int, int, int]:
    """Grid region of the first sketch; its longer side spans the whole grid."""
    if kind in ("circle", "ring", "disc_holes", "polygon"):
        return (0, 0, GRID, GRID)
    lo = {"slot": (0.2, 0.5), "L": (0.4, 1.0), "T": (0.4, 1.0), "U": (0.4, 1.0)}.get(kind, (0.2, 1.0))
    short = 2 * (int(GRID * rng.uniform(*lo)) // 2)
    return (0, 0, GRID, short) if rng.random() < 0.7 else (0, 0, short, GRID)


def _base_depth(rng, kind) -> int:
    """Extrusion depth of the first sketch in grid steps: plates thin, blocks and cylinders thick,
    and some long extruded sections as in the real data: stock cut to length (pins, shafts, rods,
    tubes, beams and profiles) runs from its section's size to a hundred times it."""
    thin, thick, long = {"rect": (0.45, 0.4, 0.15), "circle": (0.4, 0.45, 0.15), "L": (0.3, 0.45, 0.25),
                         "T": (0.3, 0.45, 0.25), "U": (0.3, 0.45, 0.25), "ring": (0.3, 0.6, 0.1)}.get(kind, (0.6, 0.4, 0.0))
    choice = _pick(rng, {"thin": thin, "thick": thick, "long": long})
    if choice == "long":  # log-uniform length, one to a hundred sections
        return int(round(math.exp(rng.uniform(math.log(GRID), math.log(LONGEST_STOCK * GRID)))))
    lo, hi = {"thin": (0.016, 0.16), "thick": (0.16, 0.86)}[choice]
    return int(rng.integers(round(lo * GRID), round(hi * GRID)))


def _base(rng, w) -> tuple[Sketch, list[Pad], bool]:
    """The first sketch on local z = 0 (normal +Z, x_dir +X, origin at its profile's corner), the pads
    of material it offers, and whether its box's side faces are flat material (side bosses fit)."""
    kind = _pick(rng, w["base_profile"])
    region = _base_region(rng, kind)
    x0, y0, x1, y1 = region
    rects, round_pad, flat_sides = [region], None, False
    if kind == "rect":
        loops, flat_sides = [_rect(*region)], True
    elif kind == "rounded_rect":
        loop, r = _rounded_rect(rng, *region)
        loops, rects = [loop], [(x0 + r, y0 + r, x1 - r, y1 - r)]
    elif kind in ("circle", "ring", "disc_holes"):
        c, r = (x1 / 2, y1 / 2), x1 / 2
        loops = [Loop(c, radius=r)]
        r_in = 0
        if kind == "ring":
            r_in = _frac(rng, 0.35, 0.98, r)  # down to thin-walled tube
            loops.append(Loop(c, radius=r_in))
        round_pad = (c[0], c[1], r, r_in)
        s = r * 0.7
        rects = [(c[0] - s, c[1] - s, c[0] + s, c[1] + s)]
    elif kind == "slot":
        loops = [_slot(*region)]
        r = min(x1, y1) / 2
        rects = [(r, 0, x1 - r, y1)] if x1 >= y1 else [(0, r, x1, y1 - r)]
        if rng.random() < 0.4:  # a hole at each end, concentric with the arcs
            hole = _frac(rng, 0.25, 0.6, r)
            ends = [(r, r), (x1 - r, r)] if x1 >= y1 else [(r, r), (r, y1 - r)]
            loops += [Loop(e, radius=hole) for e in ends]
    elif kind in ("L", "T", "U"):
        loop, rects = _letter(rng, kind, *region)
        loops = [loop]
    elif kind == "stepped":
        loop, rects = _stepped(rng, *region)
        loops = [loop]
    elif kind == "frame":  # a thin-walled rectangular tube or open box
        t = int(rng.integers(2, max(3, min(x1, y1) // 8)))
        loops = [_rect(*region), _rect(t, t, x1 - t, y1 - t)]
        rects = [(0, 0, x1, t), (0, y1 - t, x1, y1), (0, t, t, y1 - t), (x1 - t, t, x1, y1 - t)]
    elif kind == "chamfered":
        loops = [_chamfered(rng, *region)]
        rects = [(x1 * 0.3, y1 * 0.3, x1 * 0.7, y1 * 0.7)]
    elif kind == "polygon":
        loops = [_polygon(rng, *region)]
        rects = [(x1 * 0.3, y1 * 0.3, x1 * 0.7, y1 * 0.7)]
    else:
        loops = [_arc_profile(rng, *region)]
        rects = [(x1 * 0.2, y1 * 0.2, x1 * 0.8, y1 * 0.7)]
    if kind == "disc_holes" or kind == "ring" and rng.random() < 0.2:
        loops += hole_pattern(rng, rects[0], round_pad)
    elif kind in ("rect", "rounded_rect", "L", "U", "T", "polygon") and rng.random() < 0.1:
        loops += hole_pattern(rng, rects[int(rng.integers(len(rects)))])
    elif kind == "circle" and rng.random() < 0.12:
        loops.append(Loop(loops[0].start, radius=_frac(rng, 0.15, 0.5, loops[0].radius)))
    depth = _base_depth(rng, kind)
    both = rng.random() < w["both_prob"]
    sign = -1 if rng.random() < w["negative_prob"] else 1
    z0, z1 = (-depth, depth) if both else sorted((0, sign * depth))
    base = Sketch(np.zeros(3), np.array([1.0, 0.0, 0.0]), np.array([0.0, 0.0, 1.0]), loops, sign * depth, both)
    if kind == "circle" and len(loops) == 2:  # a disc with a concentric hole is a ring
        round_pad = (*round_pad[:3], loops[1].radius)
    holed = len(loops) > (2 if round_pad and round_pad[3] else 1)
    pads = [Pad(tuple(r), z0, z1, round_pad, holed) for r in rects]
    return base, pads, flat_sides


# ----------------------------------------------------------------------------------------------
# Later sketches

def _on_top(loops: list[Loop], z: float, depth: float, op: str, both: bool = False) -> Sketch:
    """A sketch parallel to the first (normal local +Z) at height z, its origin at its profile's corner."""
    pts = np.array([p for loop in loops for p in loop.points()], dtype=float)
    mx, my = pts.min(axis=0)
    return Sketch(np.array([mx, my, z]), np.array([1.0, 0.0, 0.0]), np.array([0.0, 0.0, 1.0]),
                  [loop.shifted(-mx, -my) for loop in loops], depth, both, op)


def _on_plane(normal, x_dir, h: float, lo3, hi3, make_loops, depth: float, op: str, both: bool = False) -> Sketch:
    """A sketch on the plane {p . normal = h} whose profile fills the projection of the part-frame
    box lo3..hi3; make_loops(w, h) draws the profile on (0, 0, w, h)."""
    y_dir = np.cross(normal, x_dir)
    corners = np.array([[a, b, c] for a in (lo3[0], hi3[0]) for b in (lo3[1], hi3[1]) for c in (lo3[2], hi3[2])])
    u, v = corners @ x_dir, corners @ y_dir
    origin = h * normal + u.min() * x_dir + v.min() * y_dir
    return Sketch(origin, x_dir, normal, make_loops(round(u.max() - u.min()), round(v.max() - v.min())), depth, both, op)


def _centred(rng, rect, lo: float, hi: float) -> tuple:
    """A sub-rectangle centred in rect (equal margins), sides lo..hi of rect's."""
    x0, y0, x1, y1 = rect
    w, h = _frac(rng, lo, hi, x1 - x0), _frac(rng, lo, hi, y1 - y0)
    if rng.random() < 0.5:  # same margin on all sides
        m = min((x1 - x0 - w) / 2, (y1 - y0 - h) / 2)
        return (x0 + m, y0 + m, x1 - m, y1 - m)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)


def _flush(rng, rect, lo: float, hi: float) -> tuple:
    """A sub-rectangle sharing one edge (the full side) or a corner with rect."""
    x0, y0, x1, y1 = rect
    w, h = x1 - x0, y1 - y0
    side = int(rng.integers(4))
    f = rng.uniform(lo, hi)
    if rng.random() < 0.7:  # a full-width step along one edge
        return [(x0, y0, x1, y0 + h * f), (x0, y1 - h * f, x1, y1), (x0, y0, x0 + w * f, y1), (x1 - w * f, y0, x1, y1)][side]
    g = rng.uniform(lo, hi)
    cx, cy = [(x0, y0), (x1 - w * f, y0), (x0, y1 - h * g), (x1 - w * f, y1 - h * g)][side]
    return (cx, cy, cx + w * f, cy + h * g)


def _height(rng, pad: Pad) -> int:
    """A boss height related to the pad's thickness: equal, half, double or free."""
    t = pad.z1 - pad.z0
    choice = _pick(rng, {"equal": 0.3, "half": 0.15, "double": 0.15, "free": 0.4})
    h = {"equal": t, "half": t / 2, "double": 2 * t}.get(choice, GRID * rng.uniform(0.04, 0.5))
    return max(3, int(round(min(h, 2.5 * GRID))))


def _profile_in(rng, rect, round_pad, kinds: dict) -> tuple[list[Loop], tuple | None]:
    """A boss or pocket profile in rect (concentric on a round pad) and the round pad it makes."""
    kind = _pick(rng, kinds)
    if round_pad is not None and round_pad[3]:  # on a ring only round profiles have material under them
        kind = "ring" if kind == "ring" else "circle"
    if round_pad is not None and kind in ("circle", "ring"):
        cx, cy, r, r_in = round_pad
        rr = _frac(rng, 0.3, 0.9, r) if not r_in else int(rng.uniform(r_in + 2, r)) if r - r_in > 4 else r
        inner = r_in if r_in and rr > r_in else (_frac(rng, 0.3, 0.7, rr) if kind == "ring" else 0)
        loops = [Loop((cx, cy), radius=rr)] + ([Loop((cx, cy), radius=inner)] if inner else [])
        return loops, (cx, cy, rr, inner)
    x0, y0, x1, y1 = rect
    if kind in ("circle", "ring"):
        r = min(x1 - x0, y1 - y0) / 2
        c = ((x0 + x1) / 2, (y0 + y1) / 2)
        inner = _frac(rng, 0.3, 0.7, r) if kind == "ring" else 0
        return [Loop(c, radius=r)] + ([Loop(c, radius=inner)] if inner else []), (c[0], c[1], r, inner)
    if kind == "rounded_rect" and min(x1 - x0, y1 - y0) >= 9:
        return [_rounded_rect(rng, x0, y0, x1, y1)[0]], None
    if kind == "slot" and min(x1 - x0, y1 - y0) >= 4 and abs((x1 - x0) - (y1 - y0)) >= 4:
        return [_slot(x0, y0, x1, y1)], None
    return [_rect(x0, y0, x1, y1)], None


class _Part:
    """The part being designed: its sketches, its pads, its box (grid units, part frame)."""

    def __init__(self, base: Sketch, pads: list[Pad], flat_sides: bool):
        self.sketches, self.pads, self.flat_sides = [base], pads, flat_sides
        self.base_pads = list(pads)
        self.z_min, self.z_max = pads[0].z0, pads[0].z1

    def box(self) -> tuple[np.ndarray, np.ndarray]:
        pts = np.concatenate([s.corners() for s in self.sketches if s.op == "union"])
        return pts.min(axis=0), pts.max(axis=0)

    def add(self, sketch: Sketch, pad: Pad | None = None) -> None:
        self.sketches.append(sketch)
        if pad is not None:
            self.pads.append(pad)
            self.z_min, self.z_max = min(self.z_min, pad.z0), max(self.z_max, pad.z1)


def _boss(rng, part: _Part, stack: bool) -> list[tuple]:
    """A boss centred (or concentric) on a pad, or a stack flush with its edges, on its top (or, on
    the first body, its bottom) face; stacks build on the latest pad, so steps climb."""
    pad = part.pads[-1] if stack and rng.random() < 0.6 else part.pads[int(rng.integers(len(part.pads)))]
    on_top = pad not in part.base_pads or rng.random() < 0.85
    if pad.holed or stack and pad.circle is None:  # flush with the pad's edges: on material for sure
        rect = _flush(rng, pad.rect, 0.3, 0.7) if pad.holed or rng.random() < 0.6 else _centred(rng, pad.rect, 0.5, 0.9)
        loops, made = [_rect(*rect)], None
    elif stack:
        loops, made = _profile_in(rng, pad.rect, pad.circle, {"circle": 1})
    else:
        rect = _centred(rng, pad.rect, 0.25, 0.7)
        loops, made = _profile_in(rng, rect, pad.circle, {"circle": 0.3, "rect": 0.35, "rounded_rect": 0.25, "ring": 0.1})
    if made is not None:  # the new pad of a round boss: the square inscribed in it
        s = made[2] * 0.7
        rect = (made[0] - s, made[1] - s, made[0] + s, made[1] + s)
    pts = np.array([p for loop in loops for p in loop.points()])
    h = min(_height(rng, pad), max(3, int(3 * np.ptp(pts, axis=0).max())))  # no needles on small bosses
    if not on_top:  # under the first body: nothing is referenced to its face later
        return [(_on_top(loops, pad.z0, -h, "union"), None)]
    pad.covered = True
    return [(_on_top(loops, pad.z1, h, "union"), Pad(tuple(rect), pad.z1, pad.z1 + h, made))]


def _extend(rng, part: _Part) -> list[tuple]:
    """A block beside a rectangular pad of the first body, sharing its full edge (or a centred part
    of it), extruded from the same plane: a composite profile made of several sketches."""
    pad = part.base_pads[int(rng.integers(len(part.base_pads)))]
    if pad.circle is not None:
        return _boss(rng, part, stack=True)
    x0, y0, x1, y1 = pad.rect
    w, h = x1 - x0, y1 - y0
    f = rng.uniform(0.2, 0.8)
    lo_f, hi_f = (0.0, 1.0) if rng.random() < 0.6 else (0.25, 0.75)
    side = int(rng.integers(4))
    if side < 2:
        length = max(3, round(GRID * f * 0.6))
        a, b = x0 + w * lo_f, x0 + w * hi_f
        rect = (a, y1, b, y1 + length) if side == 0 else (a, y0 - length, b, y0)
    else:
        length = max(3, round(GRID * f * 0.6))
        a, b = y0 + h * lo_f, y0 + h * hi_f
        rect = (x1, a, x1 + length, b) if side == 2 else (x0 - length, a, x0, b)
    t = pad.z1 - pad.z0
    height = t if rng.random() < 0.6 else _height(rng, pad)
    sketch = _on_top([_rect(*rect)], pad.z0, height, "union")
    return [(sketch, Pad(tuple(rect), pad.z0, pad.z0 + height))]


def _free_pad(rng, part: _Part) -> Pad:
    """A pad whose top face is free (cuts start there)."""
    free = [pad for pad in part.pads if not pad.covered] or part.pads[-1:]
    return free[int(rng.integers(len(free)))]


def _hole(rng, part: _Part, budget: int, split_prob: float) -> list[tuple]:
    """Holes in a symmetric pattern (or concentric) drilled from a pad's top exactly through the
    part, or exactly onto the face below; a pattern is drawn one sketch per hole where it fits."""
    pad = _free_pad(rng, part)
    loops = hole_pattern(rng, pad.rect, pad.circle)
    if not loops:
        return []
    pad.holed = True
    through = rng.random() < 0.75
    bottom = part.z_min if through and pad in part.base_pads or rng.random() < 0.5 else pad.z0
    depth = pad.z1 - bottom if through else max(1, int((pad.z1 - pad.z0) * rng.uniform(0.2, 0.8)))
    from_below = through and pad in part.base_pads and rng.random() < 0.25
    z, d = (pad.z0, depth) if from_below else (pad.z1, -depth)
    if 1 < len(loops) <= budget and rng.random() < split_prob:
        return [(_on_top([loop], z, d, "cut"), None) for loop in loops]
    return [(_on_top(loops, z, d, "cut"), None)]


def _pocket(rng, part: _Part, notch: bool) -> list[tuple]:
    """A pocket centred in a pad, or a notch (step) flush with its edge, as deep as a related share of
    the pad or exactly onto the layer below."""
    pad = _free_pad(rng, part)
    pad.holed = True
    t = pad.z1 - pad.z0
    if notch and pad.circle is None:
        rect = _flush(rng, pad.rect, 0.15, 0.45)
        loops = [_rect(*rect)]
    else:
        rect = _centred(rng, pad.rect, 0.3, 0.75)
        loops, _ = _profile_in(rng, rect, pad.circle, {"rect": 0.3, "rounded_rect": 0.3, "circle": 0.25, "slot": 0.15})
    depth = t if pad not in part.base_pads and rng.random() < 0.5 else max(1, int(t * rng.choice([0.25, 0.5, 0.5, 0.75])))
    return [(_on_top(loops, pad.z1, -depth, "cut"), None)]


def _side_axis(rng, w, rotation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(normal, x_dir) of a side-face sketch: a local X or Y axis, its sign chosen so that its world
    normal is one that real parts use."""
    options = {}
    for key in ("+X", "-X", "+Y", "-Y"):
        normal, _ = polar_frame(*_AXIS_ANGLES[key], 0.0)
        world = axis_key(rotation @ normal)
        if world in ALLOWED_NORMALS:
            options[key] = w["side_normal"][world]
    key = _pick(rng, options)
    return polar_frame(*_AXIS_ANGLES[key], float(rng.choice([0.0, 0.0, math.pi / 2, -math.pi / 2])))


def _side_hole(rng, w, part: _Part, rotation) -> list[tuple]:
    """A cross hole through a pad of the first body from a side face of the part's box, centred on
    the pad's mid-height, exactly through the whole part (or symmetric from the mid-plane)."""
    normal, x_dir = _side_axis(rng, w, rotation)
    pad = part.base_pads[int(rng.integers(len(part.base_pads)))]
    lo, hi = part.box()
    axis = int(np.argmax(np.abs(normal)))       # 0 or 1: the drill axis in the part frame
    other = 1 - axis
    t, span = pad.z1 - pad.z0, pad.size[other]
    r = min(t, span) * rng.uniform(0.12, 0.32)
    if r < 2:
        return []
    centre = np.zeros(3)
    centre[other] = (pad.rect[other] + pad.rect[other + 2]) / 2
    centre[2] = (pad.z0 + pad.z1) / 2
    box_lo, box_hi = centre - r, centre + r
    n_lo, n_hi = sorted((lo @ normal, hi @ normal))
    extent = n_hi - n_lo
    circle = lambda a, b: [Loop((a / 2, b / 2), radius=min(a, b) / 2)]
    if rng.random() < 0.4:
        return [(_on_plane(normal, x_dir, (n_lo + n_hi) / 2, box_lo, box_hi, circle, -extent / 2, "cut", True), None)]
    at_max = rng.random() < 0.6
    return [(_on_plane(normal, x_dir, n_hi if at_max else n_lo, box_lo, box_hi, circle,
                       -extent if at_max else extent, "cut"), None)]


def _side_boss(rng, w, part: _Part, rotation) -> list[tuple]:
    """A flange on a flat side face of a rectangular first body: as wide as the face (or centred on
    it), standing on the body's bottom, extruded outwards (brackets, L and T blocks)."""
    if not part.flat_sides:
        return _boss(rng, part, stack=rng.random() < 0.5)
    normal, x_dir = _side_axis(rng, w, rotation)
    base_lo, base_hi = part.sketches[0].corners().min(axis=0), part.sketches[0].corners().max(axis=0)
    axis = int(np.argmax(np.abs(normal)))
    other = 1 - axis
    plus_face = rng.random() < 0.5                  # the base's face at +axis or at -axis
    sign = 1.0 if normal[axis] > 0 else -1.0
    face = (base_hi if plus_face else base_lo)[axis] * sign
    outward = sign if plus_face else -sign
    box_lo, box_hi = base_lo.copy(), base_hi.copy()
    if rng.random() < 0.4:  # centred part of the face
        c, half = (base_lo[other] + base_hi[other]) / 2, (base_hi[other] - base_lo[other]) * rng.uniform(0.15, 0.4)
        box_lo[other], box_hi[other] = c - half, c + half
    t = base_hi[2] - base_lo[2]
    box_hi[2] = base_lo[2] + max(t, t * rng.choice([1.0, 2.0, 4.0]) if t < GRID / 4 else t)
    length = max(3, int(min(t, GRID / 2) * rng.choice([1.0, 1.0, 0.5, 2.0])))
    box_lo[axis] = box_hi[axis] = 0.0
    rect = lambda a, b: [_rect(0, 0, a, b)]
    return [(_on_plane(normal, x_dir, face, box_lo, box_hi, rect, outward * length, "union"), None)]


def _features(rng, w, part: _Part, rotation, budget: int) -> list[tuple]:
    kind = _pick(rng, w["feature"])
    if kind.startswith("side") and axis_key(rotation[:, 2]) == "tilted":  # side faces of a tilted part are tilted
        kind = "boss"
    if kind in ("boss", "stack"):
        return _boss(rng, part, stack=kind == "stack")
    if kind == "extend":
        return _extend(rng, part)
    if kind == "hole":
        return _hole(rng, part, budget, w["split_pattern_prob"])
    if kind in ("pocket", "notch"):
        return _pocket(rng, part, notch=kind == "notch")
    if kind == "side_hole":
        return _side_hole(rng, w, part, rotation)
    return _side_boss(rng, w, part, rotation)


def _part_rotation(rng, w) -> tuple[np.ndarray, bool]:
    """World rotation of the part frame (columns: the first sketch's world x, y and normal), and
    whether the first sketch is tilted."""
    choice = _pick(rng, w["base_normal"])
    if choice == "tilted":
        theta = float(rng.choice([1, 2, 3, 4, 5]) * math.pi / 12)
        phi = float(rng.choice(np.arange(-6, 6)) * math.pi / 6)
    else:
        theta, phi = _AXIS_ANGLES[choice]
    gamma = float(rng.choice([0.0, 0.0, 0.0, math.pi / 2, -math.pi / 2, math.pi]))
    n, x = polar_frame(theta, phi, gamma)
    return np.column_stack([x, np.cross(n, x), n]), choice == "tilted"


def sample_sketches(rng: np.random.Generator, weights: dict | None = None) -> tuple[list[Sketch], np.ndarray]:
    """Sketches of one part in its own frame (first sketch on local z = 0, normal +Z) and the part's
    world rotation."""
    w = {**DEFAULT_WEIGHTS, **(weights or {})}
    rotation, tilted = _part_rotation(rng, w)
    part = _Part(*_base(rng, w))
    n = 1 if tilted and "n_sketches" not in (weights or {}) else _pick(rng, w["n_sketches"])
    while len(part.sketches) < n:
        for sketch, pad in _features(rng, w, part, rotation, n - len(part.sketches))[: n - len(part.sketches)]:
            part.add(sketch, pad)
    return part.sketches, rotation


def sample_program(rng: np.random.Generator, weights: dict | None = None) -> str:
    """One GenCAD-Code style program; the same generator state gives the same program."""
    sketches, rotation = sample_sketches(rng, weights)
    return write_program(sketches, rotation)
