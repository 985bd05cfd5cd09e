"""Canonical form of GenCAD-Code programs: a compact, quantised structure and its token sequence.

A GenCAD-Code program is a list of sketch -> extrude -> combine steps (see ``sampler.py`` for the
style). ``parse`` reads one (with ``ast``; nothing is executed) into a list of ``Sketch``;
``to_program`` prints such a list back in exactly the GenCAD-Code style; ``to_tokens`` /
``from_tokens`` convert it to and from a short token sequence in which every number is one token.

Quantisation follows the data's own structure (DeepCAD's), not one global grid:

- sketch coordinates (points, circle centres and radii) are integers on a per-sketch grid of
  ``SKETCH_LEVELS`` steps times the sketch's scale, the largest coordinate magnitude in the sketch
  rounded up to a multiple of 1/``DISTANCE_LEVELS``; small sketches therefore keep full relative
  precision. ``SKETCH_LEVELS`` = 190 was chosen by measurement (``benchmarks/bench_codec.py``):
  real GenCAD-Code sketches sit on a grid of 95 steps of their largest coordinate.
- an arc is its end point plus its signed sweep (``SWEEP_LEVELS`` per turn), so a quantised arc
  never collapses onto its chord; its midpoint is recomputed when printing.
- plane origins and extrusion distances are multiples of 1/``DISTANCE_LEVELS`` (GenCAD-Code's own
  values are multiples of 1/128).
- a plane whose normal and x direction are both axis-aligned is one of 24 frame tokens, printed
  with exact 0.0 / 1.0 / -1.0 (the 6e-17 noise of the source is dropped); any other plane is
  DeepCAD's polar angles (theta, phi, gamma) in half degrees.

Programs outside this grammar (hand-written CadQuery) raise ``CodecError``.
"""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass
from itertools import product

SKETCH_LEVELS = 190          # grid steps per sketch scale
DISTANCE_LEVELS = 256        # grid steps per unit length (plane origins, extrusion distances, sketch scales)
SWEEP_LEVELS = 512           # arc sweep steps per full turn
ANGLE_LEVELS = 720           # plane angle steps per full turn (half degrees)
NUMBER_RANGE = 512           # every number token is an integer in [-NUMBER_RANGE, NUMBER_RANGE]

OPS = ("union", "cut", "intersect")
_AXES = {"+X": (1.0, 0.0, 0.0), "-X": (-1.0, 0.0, 0.0), "+Y": (0.0, 1.0, 0.0),
         "-Y": (0.0, -1.0, 0.0), "+Z": (0.0, 0.0, 1.0), "-Z": (0.0, 0.0, -1.0)}
# the 24 axis-aligned frames as (normal, x_dir) names, e.g. "+Z+X"
FRAMES = tuple(n + x for n, x in product(_AXES, _AXES) if n[1] != x[1])


class CodecError(ValueError):
    """A program (or token sequence) outside the GenCAD-Code grammar the codec represents."""


# ----------------------------------------------------------------------------------------------
# The canonical structure: integers only.

@dataclass(frozen=True)
class Line:
    end: tuple[int, int]


@dataclass(frozen=True)
class Arc:
    end: tuple[int, int]
    sweep: int               # signed, counter-clockwise positive, SWEEP_LEVELS per turn


@dataclass(frozen=True)
class Path:
    """moveTo(start), then lines and arcs, then close()."""
    start: tuple[int, int]
    segments: tuple[Line | Arc, ...]


@dataclass(frozen=True)
class Circle:
    center: tuple[int, int]
    radius: int


@dataclass(frozen=True)
class Plane:
    origin: tuple[int, int, int]                 # DISTANCE_LEVELS per unit
    frame: str | None = None                     # one of FRAMES, or None for a tilted plane
    angles: tuple[int, int, int] | None = None   # (theta, phi, gamma), ANGLE_LEVELS per turn


@dataclass(frozen=True)
class Sketch:
    op: str                  # "new" for the first sketch, else one of OPS
    plane: Plane
    scale: int               # sketch scale, DISTANCE_LEVELS per unit
    loops: tuple[Path | Circle, ...]
    distance: int            # extrusion distance, DISTANCE_LEVELS per unit, never 0
    both: bool


# ----------------------------------------------------------------------------------------------
# Planes

def polar_frame(theta: float, phi: float, gamma: float) -> tuple[tuple, tuple]:
    """DeepCAD's plane parameterisation: polar angles of the normal and the x direction's turn."""
    ct, st, cp, sp = math.cos(theta), math.sin(theta), math.cos(phi), math.sin(phi)
    normal = (st * cp, st * sp, ct)
    ref_x = (ct * cp, ct * sp, -st)
    ref_y = _cross(normal, ref_x)
    x_dir = tuple(a * math.cos(gamma) + b * math.sin(gamma) for a, b in zip(ref_x, ref_y))
    return normal, x_dir


def _cross(a, b):
    return (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])


def _axis_name(v, tol: float = 1e-9) -> str | None:
    for name, axis in _AXES.items():
        if all(abs(a - b) <= tol for a, b in zip(v, axis)):
            return name
    return None


def _plane_angles(normal, x_dir) -> tuple[int, int, int]:
    theta = math.acos(max(-1.0, min(1.0, normal[2])))
    phi = math.atan2(normal[1], normal[0]) if math.hypot(normal[0], normal[1]) > 1e-12 else 0.0
    _, ref_x = polar_frame(theta, phi, 0.0)
    ref_y = _cross(normal, ref_x)
    gamma = math.atan2(sum(a * b for a, b in zip(x_dir, ref_y)), sum(a * b for a, b in zip(x_dir, ref_x)))
    step = 2 * math.pi / ANGLE_LEVELS
    half_turn = lambda a: ANGLE_LEVELS // 2 if round(a / step) == -ANGLE_LEVELS // 2 else round(a / step)
    return round(theta / step), half_turn(phi), half_turn(gamma)


def plane_vectors(plane: Plane) -> tuple[tuple, tuple]:
    """(normal, x_dir) of a canonical plane, noise below 1e-12 snapped to 0."""
    if plane.frame is not None:
        return _AXES[plane.frame[:2]], _AXES[plane.frame[2:]]
    step = 2 * math.pi / ANGLE_LEVELS
    normal, x_dir = polar_frame(*(a * step for a in plane.angles))
    snap = lambda v: tuple(0.0 if abs(c) < 1e-12 else float(c) for c in v)
    return snap(normal), snap(x_dir)


# ----------------------------------------------------------------------------------------------
# Printing in the GenCAD-Code style

def _fmt(v: float) -> str:
    return repr(float(v) + 0.0)  # + 0.0 turns -0.0 into 0.0


def _vec(v) -> str:
    return f"cq.Vector({_fmt(v[0])}, {_fmt(v[1])}, {_fmt(v[2])})"


def arc_midpoint(start, end, sweep: float):
    """The midpoint of the arc from start to end turning by ``sweep`` radians (ccw positive)."""
    dx, dy = end[0] - start[0], end[1] - start[1]
    bulge = math.tan(sweep / 4)  # sagitta / half chord
    return ((start[0] + end[0]) / 2 + dy * bulge / 2, (start[1] + end[1]) / 2 - dx * bulge / 2)


def to_float(sketches: list[Sketch]) -> list["FloatSketch"]:
    """Canonical sketches as the float geometry their program states (every number exactly as
    printed): what ``to_program`` prints and ``img2cq.build`` builds, so both give one solid."""
    out = []
    for s in sketches:
        normal, x_dir = plane_vectors(s.plane)
        origin = tuple(c / DISTANCE_LEVELS + 0.0 for c in s.plane.origin)
        unit = s.scale / DISTANCE_LEVELS / SKETCH_LEVELS
        point = lambda p: (p[0] * unit + 0.0, p[1] * unit + 0.0)
        loops = []
        for loop in s.loops:
            if isinstance(loop, Circle):
                loops.append(("circle", point(loop.center), loop.radius * unit))
                continue
            segments, current = [], point(loop.start)
            for seg in loop.segments:
                end = point(seg.end)
                mid = None
                if isinstance(seg, Arc):
                    mid = arc_midpoint(current, end, seg.sweep * 2 * math.pi / SWEEP_LEVELS)
                    mid = tuple(0.0 if abs(c) < 1e-12 else c + 0.0 for c in mid)  # no 1e-17 rounding dust
                segments.append((end, mid))
                current = end
            loops.append(("path", point(loop.start), segments))
        out.append(FloatSketch(origin, x_dir, normal, loops, s.distance / DISTANCE_LEVELS, s.both, s.op))
    return out


def to_program(sketches: list[Sketch]) -> str:
    """Print canonical sketches as a GenCAD-Code program (the exact style of the dataset)."""
    lines = ["import cadquery as cq"]
    loop_id = 0
    pair = lambda p: f"{_fmt(p[0])}, {_fmt(p[1])}"
    for i, s in enumerate(to_float(sketches)):
        lines.append(f"# Generating a workplane for sketch {i}")
        lines.append(f"wp_sketch{i} = cq.Workplane(cq.Plane({_vec(s.origin)}, {_vec(s.x_dir)}, {_vec(s.normal)}))")
        names = []
        for kind, start, rest in s.loops:
            if kind == "circle":
                body = f".moveTo({pair(start)}).circle({_fmt(rest)})"
            else:
                body = f".moveTo({pair(start)})"
                for end, mid in rest:
                    body += f".lineTo({pair(end)})" if mid is None else f".threePointArc(({pair(mid)}), ({pair(end)}))"
                body += ".close()"
            lines.append(f"loop{loop_id}=wp_sketch{i}{body}")
            names.append(f"loop{loop_id}")
            loop_id += 1
        adds = "".join(f".add({n})" for n in names)
        both = ", both=True" if s.both else ""
        lines.append(f"solid{i}=wp_sketch{i}{adds}.extrude({_fmt(s.distance)}{both})")
        lines.append("solid=solid0" if i == 0 else f"solid=solid.{s.op}(solid{i})")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# Parsing (ast only: the program is never run)

def _number(node, where: str) -> float:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _number(node.operand, where)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return float(node.value)
    raise CodecError(f"{where}: expected a number, got {ast.unparse(node)!r}")


def _numbers(nodes, count: int, where: str) -> tuple[float, ...]:
    if len(nodes) != count:
        raise CodecError(f"{where}: expected {count} numbers, got {len(nodes)}")
    return tuple(_number(n, where) for n in nodes)


def _chain(node, where: str) -> tuple[str, list[tuple[str, list, dict]]]:
    """``base.m1(...).m2(...)`` -> ("base", [(m1, args, kwargs), ...])."""
    calls = []
    while isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        calls.append((node.func.attr, node.args, {k.arg: k.value for k in node.keywords}))
        node = node.func.value
    if not isinstance(node, ast.Name) or not calls:
        raise CodecError(f"{where}: expected a method chain on a variable")
    return node.id, calls[::-1]


def _plane(node, where: str) -> tuple[tuple, tuple, tuple]:
    """cq.Workplane(cq.Plane(cq.Vector(o), cq.Vector(x), cq.Vector(n))) -> (origin, x_dir, normal)."""
    def is_cq(call, name):
        return (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == name
                and isinstance(call.func.value, ast.Name) and call.func.value.id == "cq")
    if not (is_cq(node, "Workplane") and len(node.args) == 1 and not node.keywords and is_cq(node.args[0], "Plane")
            and len(node.args[0].args) == 3 and all(is_cq(v, "Vector") for v in node.args[0].args)):
        raise CodecError(f"{where}: expected cq.Workplane(cq.Plane(cq.Vector(...), cq.Vector(...), cq.Vector(...)))")
    return tuple(_numbers(v.args, 3, where) for v in node.args[0].args)


def _loop(calls, where: str) -> tuple:
    """A loop chain as float geometry: ("circle", centre, r) or ("path", start, [(end, mid|None), ...])."""
    name, args, _ = calls[0]
    if name != "moveTo":
        raise CodecError(f"{where}: a loop starts with moveTo, got {name}")
    start = _numbers(args, 2, where)
    if len(calls) == 2 and calls[1][0] == "circle":
        return ("circle", start, _numbers(calls[1][1], 1, where)[0])
    if calls[-1][0] != "close" or calls[-1][1] or len(calls) < 3:
        raise CodecError(f"{where}: a path loop is moveTo, lineTo/threePointArc..., close()")
    segments = []
    for name, args, kwargs in calls[1:-1]:
        if kwargs:
            raise CodecError(f"{where}: unexpected keyword arguments to {name}")
        if name == "lineTo":
            segments.append((_numbers(args, 2, where), None))
        elif name == "threePointArc" and len(args) == 2 and all(isinstance(a, ast.Tuple) for a in args):
            segments.append((_numbers(args[1].elts, 2, where), _numbers(args[0].elts, 2, where)))
        else:
            raise CodecError(f"{where}: unsupported curve {name}")
    return ("path", start, segments)


@dataclass
class FloatSketch:
    """A sketch as float geometry, as ``parse_raw`` reads it (or a generator draws it); loops are
    ("circle", centre, radius) or ("path", start, [(end, arc midpoint or None for a line), ...]).
    ``to_program(canonicalise(sketches))`` prints such sketches as codec fixed points."""

    origin: tuple
    x_dir: tuple
    normal: tuple
    loops: list
    distance: float = 0.0
    both: bool = False
    op: str = "new"


def _statements(tree: ast.Module):
    body = list(tree.body)
    first = body[0] if body else None
    if not (isinstance(first, ast.Import) and [(a.name, a.asname) for a in first.names] == [("cadquery", "cq")]):
        raise CodecError("line 1: a GenCAD-Code program starts with `import cadquery as cq`")
    for stmt in body[1:]:
        where = f"line {stmt.lineno}"
        if not (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name)):
            raise CodecError(f"{where}: expected `name = ...`, got {ast.unparse(stmt)[:60]!r}")
        yield where, stmt.targets[0].id, stmt.value


def parse_raw(program: str) -> list[FloatSketch]:
    """The sketches of a GenCAD-Code program, in combination order, as float geometry."""
    try:
        tree = ast.parse(program)
    except SyntaxError as e:
        raise CodecError(f"line {e.lineno}: syntax error: {e.msg}") from None
    except (ValueError, RecursionError, MemoryError) as e:  # null bytes, absurd nesting
        raise CodecError(f"not a parseable program: {type(e).__name__}: {e}") from None
    planes, loops, solids, order = {}, {}, {}, []
    for where, target, value in _statements(tree):
        if isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute) and value.func.attr == "Workplane":
            planes[target] = _plane(value, where)
            continue
        if target == "solid":
            if isinstance(value, ast.Name) and not order and value.id in solids:
                order.append(("new", value.id))
                continue
            base, calls = _chain(value, where)
            (op, args, kwargs), = calls if len(calls) == 1 else [(None, None, None)]
            if base != "solid" or op not in OPS or kwargs or len(args) != 1 or not isinstance(args[0], ast.Name) \
                    or args[0].id not in solids or not order:
                raise CodecError(f"{where}: expected `solid=solidN` first, then `solid=solid.union|cut|intersect(solidN)`")
            order.append((op, args[0].id))
            continue
        base, calls = _chain(value, where)
        if base not in planes:
            raise CodecError(f"{where}: {base!r} is not a workplane defined earlier")
        if calls[-1][0] == "extrude":
            added = calls[:-1]
            if not added or any(n != "add" or len(a) != 1 or not isinstance(a[0], ast.Name) or a[0].id not in loops
                                or loops[a[0].id][0] != base for n, a, _ in added):
                raise CodecError(f"{where}: expected {base}.add(loopN)...extrude(d)")
            _, args, kwargs = calls[-1]
            both = kwargs.pop("both", ast.Constant(False))
            if kwargs or not isinstance(both, ast.Constant) or not isinstance(both.value, bool):
                raise CodecError(f"{where}: extrude takes a distance and optionally both=True")
            origin, x_dir, normal = planes[base]
            solids[target] = FloatSketch(origin, x_dir, normal, [loops[a[0].id][1] for _, a, _ in added],
                                        _numbers(args, 1, where)[0], both.value)
        else:
            loops[target] = (base, _loop(calls, where))
    if not order:
        raise CodecError("no `solid=solidN`: a GenCAD-Code program ends with the variable `solid`")
    sketches = []
    for op, name in order:
        raw = solids[name]
        if any(raw is s for s in sketches):
            raise CodecError(f"{name} is combined twice")
        raw.op = op
        sketches.append(raw)
    return sketches


def _signed_sweep(start, mid, end) -> float:
    """Signed sweep (radians, ccw positive) of the arc from start through mid to end."""
    dx, dy = end[0] - start[0], end[1] - start[1]
    cross = dx * (mid[1] - start[1]) - dy * (mid[0] - start[0])
    a = (start[0] - mid[0], start[1] - mid[1])
    b = (end[0] - mid[0], end[1] - mid[1])
    na, nb = math.hypot(*a), math.hypot(*b)
    if abs(cross) <= 1e-15 or na == 0 or nb == 0:
        raise CodecError("degenerate arc: its three points are collinear")
    inscribed = math.acos(max(-1.0, min(1.0, (a[0] * b[0] + a[1] * b[1]) / (na * nb))))
    sweep = 2 * math.pi - 2 * inscribed
    return sweep if cross < 0 else -sweep


def _quantise(value: float, levels: float, low: int, high: int, what: str) -> int:
    k = round(value * levels)
    if not low <= k <= high:
        raise CodecError(f"{what} {value!r} is outside the codec's range [{low / levels}, {high / levels}]")
    return k


def _magnitudes(loops) -> list[float]:
    """Magnitudes of every quantised number of float loops (coordinates and radii)."""
    return [abs(c) for kind, a, b in loops for c in
            ((*a, b) if kind == "circle" else (*a, *(p for end, _ in b for p in end)))]


def _scale_of(magnitudes: list[float]) -> int:
    """Sketch scale: the largest magnitude rounded up to a multiple of 1/DISTANCE_LEVELS."""
    scale = max(1, math.ceil(max(magnitudes) * DISTANCE_LEVELS - 1e-9))
    if scale > NUMBER_RANGE:
        raise CodecError(f"sketch coordinates up to {max(magnitudes)!r} are outside the codec's range")
    return scale


def _float_loops(loops) -> list:
    """Quantised loops in the float layout of ``parse_raw`` (grid units; arcs without midpoints)."""
    return [("circle", loop.center, loop.radius) if isinstance(loop, Circle)
            else ("path", loop.start, [(seg.end, None) for seg in loop.segments]) for loop in loops]


def _quantise_loops(loops, scale: int) -> tuple:
    unit = scale / DISTANCE_LEVELS / SKETCH_LEVELS
    clamp = lambda v: max(-SKETCH_LEVELS, min(SKETCH_LEVELS, round(v / unit)))
    q = lambda p: (clamp(p[0]), clamp(p[1]))
    out = []
    for kind, a, b in loops:
        if kind == "circle":
            out.append(Circle(q(a), max(1, clamp(b))))
            continue
        segments, current = [], a
        for end, mid in b:
            if mid is None:
                segments.append(Line(q(end)))
            else:
                exact = _signed_sweep(current, mid, end) / (2 * math.pi) * SWEEP_LEVELS
                sweep = max(-SWEEP_LEVELS + 1, min(SWEEP_LEVELS - 1, round(exact))) or (1 if exact > 0 else -1)
                segments.append(Arc(q(end), sweep))
            current = end
        out.append(Path(q(a), tuple(segments)))
    return tuple(out)


def canonicalise(raw: list[FloatSketch]) -> list[Sketch]:
    """Quantise float sketches onto the codec's grids."""
    out = []
    r = NUMBER_RANGE
    for s in raw:
        normal_name, x_name = _axis_name(s.normal), _axis_name(s.x_dir)
        origin = tuple(_quantise(c, DISTANCE_LEVELS, -r, r, "plane origin") for c in s.origin)
        if normal_name and x_name and normal_name[1] != x_name[1]:
            plane = Plane(origin, frame=normal_name + x_name)
        else:
            plane = Plane(origin, angles=_plane_angles(s.normal, s.x_dir))
        scale = _scale_of(_magnitudes(s.loops))
        while True:  # a fixed point, so that parse(to_program(sketches)) == sketches
            loops = _quantise_loops(s.loops, scale)
            unit = scale / DISTANCE_LEVELS / SKETCH_LEVELS
            rescaled = _scale_of([k * unit for k in _magnitudes(_float_loops(loops))])
            if rescaled == scale:
                break
            scale = rescaled
        distance = _quantise(s.distance, DISTANCE_LEVELS, -r, r, "extrusion distance")
        if distance == 0:
            distance = 1 if s.distance >= 0 else -1
        out.append(Sketch(s.op, plane, scale, loops, distance, s.both))
    return out


def parse(program: str) -> list[Sketch]:
    """A GenCAD-Code program as canonical sketches; ``CodecError`` if it is outside the grammar."""
    return canonicalise(parse_raw(program))


def canonical_program(program: str) -> str:
    """program -> canonical form -> program: what a model trained on the codec can write."""
    return to_program(parse(program))


# ----------------------------------------------------------------------------------------------
# Tokens. A sketch is
#   OP  (FRAME | tilted THETA PHI GAMMA)  OX OY OZ  SCALE  LOOP+  (extrude | extrude_both) DISTANCE
# with LOOP = circle X Y R | move X Y (line X Y | arc X Y SWEEP)+ close, and OP = new for the first
# sketch, union | cut | intersect for later ones. Numbers are the integers of the canonical form.

KEYWORDS = ("new", *OPS, *(f"plane{f}" for f in FRAMES), "tilted", "circle", "move", "line", "arc", "close",
            "extrude", "extrude_both")
NUMBERS = tuple(str(k) for k in range(-NUMBER_RANGE, NUMBER_RANGE + 1))


def to_tokens(sketches: list[Sketch]) -> list[str]:
    """Token strings of canonical sketches (no bos/eos)."""
    out = []
    n = lambda *values: out.extend(str(v) for v in values)
    for s in sketches:
        out.append(s.op)
        if s.plane.frame is not None:
            out.append(f"plane{s.plane.frame}")
        else:
            out.append("tilted")
            n(*s.plane.angles)
        n(*s.plane.origin, s.scale)
        for loop in s.loops:
            if isinstance(loop, Circle):
                out.append("circle")
                n(*loop.center, loop.radius)
                continue
            out.append("move")
            n(*loop.start)
            for seg in loop.segments:
                if isinstance(seg, Line):
                    out.append("line")
                    n(*seg.end)
                else:
                    out.append("arc")
                    n(*seg.end, seg.sweep)
            out.append("close")
        out.append("extrude_both" if s.both else "extrude")
        n(s.distance)
    return out


def number_range(slot: str) -> tuple[int, int, bool]:
    """(lowest, highest, zero allowed) of the number in a grammar slot."""
    half = ANGLE_LEVELS // 2
    return {"x": (-SKETCH_LEVELS, SKETCH_LEVELS, True), "y": (-SKETCH_LEVELS, SKETCH_LEVELS, True),
            "radius": (1, SKETCH_LEVELS, False), "sweep": (1 - SWEEP_LEVELS, SWEEP_LEVELS - 1, False),
            "scale": (1, NUMBER_RANGE, False), "origin": (-NUMBER_RANGE, NUMBER_RANGE, True),
            "distance": (-NUMBER_RANGE, NUMBER_RANGE, False), "theta": (0, half, True),
            "phi": (1 - half, half, True), "gamma": (1 - half, half, True)}[slot]


def from_tokens(tokens: list[str], strict: bool = True) -> list[Sketch]:
    """Canonical sketches from a complete token sequence; ``CodecError`` if it is not one.

    ``strict=False``: the sketches completed before the first token that breaks the grammar
    (or before the sequence ends inside a sketch), never an error.
    """
    pos = 0

    def take() -> str:
        nonlocal pos
        if pos >= len(tokens):
            raise CodecError("token sequence ends inside a sketch")
        pos += 1
        return tokens[pos - 1]

    def num(*slots: str) -> tuple[int, ...]:
        values = []
        for slot in slots:
            t = take()
            low, high, zero = number_range(slot)
            try:
                value = int(t)
            except ValueError:
                raise CodecError(f"token {pos - 1}: expected a number ({slot}), got {t!r}") from None
            if not low <= value <= high or (value == 0 and not zero):
                raise CodecError(f"token {pos - 1}: {slot} {value} is out of range")
            values.append(value)
        return tuple(values)

    def sketch(first: bool) -> Sketch:
        op = take()
        if op not in (("new",) if first else OPS):
            raise CodecError(f"token {pos - 1}: expected {'new' if first else ' | '.join(OPS)}, got {op!r}")
        kind = take()
        if kind == "tilted":
            angles = num("theta", "phi", "gamma")
            plane = Plane(num("origin", "origin", "origin"), angles=angles)
        elif kind.startswith("plane") and kind[5:] in FRAMES:
            plane = Plane(num("origin", "origin", "origin"), frame=kind[5:])
        else:
            raise CodecError(f"token {pos - 1}: expected a plane, got {kind!r}")
        (scale,) = num("scale")
        loops = []
        while True:
            t = take()
            if t == "circle":
                *center, radius = num("x", "y", "radius")
                loops.append(Circle(tuple(center), radius))
            elif t == "move":
                start, segments = num("x", "y"), []
                while (t := take()) != "close" or not segments:
                    if t == "line":
                        segments.append(Line(num("x", "y")))
                    elif t == "arc":
                        *end, sweep = num("x", "y", "sweep")
                        segments.append(Arc(tuple(end), sweep))
                    else:
                        raise CodecError(f"token {pos - 1}: expected line, arc or (after a curve) close, got {t!r}")
                loops.append(Path(start, tuple(segments)))
            elif t in ("extrude", "extrude_both") and loops:
                (distance,) = num("distance")
                return Sketch(op, plane, scale, tuple(loops), distance, t == "extrude_both")
            else:
                raise CodecError(f"token {pos - 1}: expected circle, move{', extrude' if loops else ''}, got {t!r}")

    sketches = []
    while pos < len(tokens):
        try:
            sketches.append(sketch(not sketches))
        except CodecError:
            if strict:
                raise
            break
    return sketches
