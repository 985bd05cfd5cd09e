"""Parts as the sampler designs them, and the programs they print as.

A part is a list of ``Sketch``es (closed ``Loop``s on a plane, extruded) on an integer design grid in
the first sketch's frame (normal local +Z; its longer side spans ``GRID`` steps, the codec's
SKETCH_LEVELS), and a rotation into the world (DeepCAD's polar rotations); ``Pad``s are the blocks
of material later sketches sit on. ``write_program`` normalises a part as DeepCAD does (the first
sketch plane through the origin, the part within [-0.75, 0.75], at a scale that puts the design grid
on the codec's grids) and prints it with the codec's printer (``codec.to_program``) in exactly the
GenCAD-Code style, every sketch's origin the corner of its own profile. A written program is
therefore a codec fixed point: the codec target a model learns is exactly the part its image shows.
Axis-aligned plane vectors are printed exactly (0.0, 1.0, -1.0), as the codec prints them, without
the 6e-17 noise of real programs; the noise changes no geometry and a codec model never writes it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from img2cq import codec

# Parts are designed on the codec's sketch grid: the first sketch's longer side spans GRID steps.
GRID = codec.SKETCH_LEVELS


def polar_frame(theta: float, phi: float, gamma: float) -> tuple[np.ndarray, np.ndarray]:
    """The codec's DeepCAD plane parameterisation -> (normal, x_dir) as arrays."""
    normal, x_dir = codec.polar_frame(theta, phi, gamma)
    return np.array(normal), np.array(x_dir)


def axis_key(v) -> str:
    """'+Z', '-Y', ... for an axis-aligned vector, else 'tilted'."""
    v = np.asarray(v, dtype=float)
    axis = int(np.argmax(np.abs(v)))
    return ("+" if v[axis] > 0 else "-") + "XYZ"[axis] if abs(abs(v[axis]) - 1) < 1e-6 else "tilted"


# ----------------------------------------------------------------------------------------------
# Loops on the integer grid, sketches on planes (part frame, grid units).

@dataclass
class Loop:
    """A closed loop: a circle, or a path of ("line", p) / ("arc", mid, end) segments."""
    start: tuple[float, float]
    segments: list = field(default_factory=list)
    radius: float | None = None   # set for circles (start is then the centre)

    def points(self) -> list[tuple[float, float]]:
        if self.radius is not None:
            (x, y), r = self.start, self.radius
            return [(x - r, y - r), (x + r, y + r)]
        return [self.start] + [p for seg in self.segments for p in seg[1:]]

    def shifted(self, dx: float, dy: float) -> "Loop":
        move = lambda p: (p[0] + dx, p[1] + dy)
        return Loop(move(self.start), [(seg[0], *map(move, seg[1:])) for seg in self.segments], self.radius)


@dataclass
class Sketch:
    """One sketch and its extrusion, in the part frame (grid units); depth is signed along the normal."""
    origin: np.ndarray
    x_dir: np.ndarray
    normal: np.ndarray
    loops: list[Loop]
    depth: float
    both: bool = False
    op: str = "union"        # "union" | "cut" (ignored for the first sketch)

    def corners(self) -> np.ndarray:
        """Part-frame points bounding the extruded sketch."""
        y_dir = np.cross(self.normal, self.x_dir)
        pts2 = np.array([p for loop in self.loops for p in loop.points()], dtype=float)
        base = self.origin + pts2[:, :1] * self.x_dir + pts2[:, 1:] * y_dir
        lo, hi = (-abs(self.depth), abs(self.depth)) if self.both else sorted((0.0, self.depth))
        return np.concatenate([base + lo * self.normal, base + hi * self.normal])


@dataclass
class Pad:
    """A flat-topped block of material that later sketches sit on: a rectangle of the first sketch's
    grid, its bottom and top heights along the first sketch's normal, and, for round pads, the
    circle (cx, cy, r, inner r) its features are concentric with."""
    rect: tuple[int, int, int, int]
    z0: float
    z1: float
    circle: tuple | None = None
    holed: bool = False      # it has holes or pockets: a centred boss could sit over one
    covered: bool = False    # something stands on its top: cuts from there would hide under it

    @property
    def size(self) -> tuple[int, int]:
        return self.rect[2] - self.rect[0], self.rect[3] - self.rect[1]


# ----------------------------------------------------------------------------------------------
# Printing, through the codec

# Scales of the first sketch (codec units) to draw a part at, largest first: at 2 * GRID and GRID one
# design step is exactly 2 or 1 steps of the codec's distance grid, so sketch coordinates, plane
# origins and depths share one grid and faces stay flush after printing. A part too long for
# these (rods, beams) takes the largest scale below GRID that fits: its first sketch stays on the
# codec's sketch grid, and later sketches meet it within one step of the distance grid.
PART_SCALES = (2 * GRID, GRID, *range(GRID - 1, 0, -1))


def write_program(sketches: list[Sketch], rotation: np.ndarray) -> str:
    """Normalise the part as DeepCAD does (the first sketch plane through the origin, the part
    centred across it, its farthest point within 0.75) and print it through the codec. The scale
    is the largest of PART_SCALES that fits and the centre is a multiple of the distance grid, so
    the design grid maps onto the codec's grids: the program is a codec fixed point (a model
    trained on codec targets learns exactly the part its image shows) and stays flush."""
    pts = np.concatenate([s.corners() for s in sketches if s.op == "union"]) @ rotation.T
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    up = axis_key(rotation[:, 2])
    longest = max(abs(s.depth) for s in sketches)  # a tilted rod can fit 0.75 per axis and not the codec
    for scale in PART_SCALES:
        k = scale / codec.DISTANCE_LEVELS / GRID  # world length of one design step
        centre = np.round((lo + hi) / 2 * k * codec.DISTANCE_LEVELS) / (k * codec.DISTANCE_LEVELS)
        if up != "tilted":
            centre["XYZ".index(up[1])] = 0.0
        if np.abs(pts - centre).max() * k <= 0.75 and longest * k <= codec.NUMBER_RANGE / codec.DISTANCE_LEVELS:
            break
    scaled = lambda p: (float(p[0] * k), float(p[1] * k))
    drawn = []
    for i, s in enumerate(sketches):
        loops = [("circle", scaled(loop.start), float(loop.radius * k)) if loop.radius is not None else
                 ("path", scaled(loop.start), [(scaled(seg[1]), None) if seg[0] == "line" else (scaled(seg[2]), scaled(seg[1]))
                                               for seg in loop.segments]) for loop in s.loops]
        origin, normal = (rotation @ s.origin - centre) * k, rotation @ s.normal
        start = float(origin @ normal)  # the sketch's height along its normal; it ends at start + depth
        snap = lambda h: round(h * codec.DISTANCE_LEVELS) / codec.DISTANCE_LEVELS
        depth = snap(start + s.depth * k) - snap(start) or s.depth * k  # faces met at equal heights stay flush
        drawn.append(codec.FloatSketch(tuple(origin), tuple(rotation @ s.x_dir), tuple(normal), loops, depth,
                                       s.both, "new" if i == 0 else s.op))
    return codec.to_program(codec.canonicalise(drawn))
