"""The sampler must emit GenCAD-Code style programs (gencad-code.md) of parts designed the way real
ones are: later sketches flush on faces of what exists, symmetric hole patterns, real statistics."""
import math
import re

import numpy as np
import pytest

from img2cq import codec
from img2cq.fidelity import normal_key, program_statistics
from img2cq.sampler import (
    ALLOWED_NORMALS,
    LONGEST_STOCK,
    hole_pattern,
    sample_program,
    sample_sketches,
)
from img2cq.sketches import GRID, polar_frame, write_program

N_PROGRAMS = 40
WP_LINE = re.compile(r"^wp_sketch(\d+) = cq\.Workplane\(cq\.Plane\(cq\.Vector\([^()]+\), cq\.Vector\([^()]+\), "
                     r"cq\.Vector\([^()]+\)\)\)$")
LOOP_LINE = re.compile(r"^loop\d+=wp_sketch\d+\.moveTo\([^()]+\)((\.lineTo\([^()]+\)|\.threePointArc\(\([^()]+\), "
                       r"\([^()]+\)\))+\.close\(\)|\.circle\([^()]+\))$")
SOLID_LINE = re.compile(r"^solid(\d+)=wp_sketch\1(\.add\(loop\d+\))+\.extrude\(-?[0-9.e-]+(, both=True)?\)$")
COMBINE_LINE = re.compile(r"^solid=(solid0|solid\.(union|cut|intersect)\(solid\d+\))$")


@pytest.fixture(scope="module")
def programs():
    return [sample_program(np.random.default_rng(seed)) for seed in range(N_PROGRAMS)]


@pytest.fixture(scope="module")
def built_multi_sketch_parts():
    """(program, namespace) of 24 three-sketch programs, run in-process (our own trusted output)."""
    out = []
    for seed in range(24):
        code = sample_program(np.random.default_rng([3, seed]), {"n_sketches": {3: 1.0}})
        namespace = {}
        exec(code, namespace)
        out.append((code, namespace))
    return out


def test_same_seed_same_program_and_seeds_differ(programs):
    assert sample_program(np.random.default_rng(7)) == programs[7]
    assert len(set(programs)) == len(programs)


def test_every_line_is_in_gencad_style(programs):
    for code in programs:
        lines = code.splitlines()
        assert lines[0] == "import cadquery as cq"
        for line in lines[1:]:
            assert (line.startswith("# Generating a workplane for sketch ") or WP_LINE.match(line)
                    or LOOP_LINE.match(line) or SOLID_LINE.match(line) or COMBINE_LINE.match(line)), line
        assert lines[-1].startswith("solid=")


def test_plane_vectors_are_printed_exactly(programs):
    """The codec prints axis-aligned planes with exact 0.0 / 1.0 / -1.0 (the model writes them so)."""
    normal, x_dir = polar_frame(math.pi / 2, -math.pi / 2, 0.0)
    assert np.allclose(normal, (0.0, -1.0, 0.0)) and abs(float(np.dot(normal, x_dir))) < 1e-12
    planes = [line for code in programs for line in code.splitlines() if "cq.Plane(" in line]
    assert not any("e-1" in line for line in planes)
    assert any("cq.Vector(0.0, -1.0, 0.0)))" in code for code in programs)  # a -Y sketch plane


def test_weights_steer_the_sampler():
    single = [sample_program(np.random.default_rng(s), {"n_sketches": {1: 1.0}}) for s in range(10)]
    assert all(code.count("# Generating a workplane") == 1 for code in single)
    many = [sample_program(np.random.default_rng(s), {"n_sketches": {4: 1.0}}) for s in range(5)]
    assert all(code.count("# Generating a workplane") == 4 for code in many)
    rings = [sample_program(np.random.default_rng(s), {"base_profile": {"ring": 1.0}, "n_sketches": {1: 1.0}})
             for s in range(5)]
    assert all(code.count(".circle(") >= 2 for code in rings)


def test_programs_build_one_valid_solid_inside_the_normalised_box(programs):
    """Parts fit [-0.75, 0.75] as DeepCAD normalises them, and stay one solid."""
    built = 0
    for code in programs:
        namespace = {}
        exec(code, namespace)
        shape = namespace["solid"].val()
        if not shape.isValid() or len(namespace["solid"].solids().vals()) != 1:
            continue
        built += 1
        bb = shape.BoundingBox()
        assert max(abs(bb.xmin), abs(bb.xmax), abs(bb.ymin), abs(bb.ymax), abs(bb.zmin), abs(bb.zmax)) < 0.76
    assert built >= 0.95 * len(programs)


def test_long_stock_runs_to_a_hundred_sections_and_stays_in_the_codec():
    """Pins, shafts and tubes are real parts; a long one on a tilted plane fits 0.75 per axis while
    its length would not fit the codec's extrusion range at that scale, so it is drawn smaller."""
    lengths = []
    for seed in range(300):
        sketches, rotation = sample_sketches(np.random.default_rng([7, seed]), {
            "n_sketches": {1: 1.0}, "base_profile": {"circle": 1.0}, "base_normal": {"tilted": 1.0}})
        lengths.append(abs(sketches[0].depth) / GRID)
        program = write_program(sketches, rotation)  # raises CodecError outside the codec's range
        assert codec.to_program(codec.parse(program)) == program
    assert 30 < max(lengths) <= LONGEST_STOCK


def test_later_sketches_sit_flush_on_faces_of_what_exists(built_multi_sketch_parts):
    """Every later sketch plane is a face plane (along its normal) of an earlier unioned extrusion,
    or, for a symmetric extrusion, the mid-plane of the part so far: exactly where the part's
    scale puts its design grid on the codec's grids, else within one step of the distance grid."""
    checked = exact = 0
    for code, ns in built_multi_sketch_parts:
        ops = {int(i): op for op, i in re.findall(r"solid=solid\.(\w+)\(solid(\d+)\)", code)}
        unions = [0] + [i for i, op in ops.items() if op == "union"]
        for i in sorted(ops):
            plane = ns[f"wp_sketch{i}"].plane
            normal = np.array(plane.zDir.toTuple())
            axis = int(np.argmax(np.abs(normal)))
            height = float(np.dot(plane.origin.toTuple(), normal))
            faces = []
            for j in (j for j in unions if j < i):
                bb = ns[f"solid{j}"].val().BoundingBox()
                lo, hi = (bb.xmin, bb.ymin, bb.zmin)[axis], (bb.xmax, bb.ymax, bb.zmax)[axis]
                faces += [lo * normal[axis], hi * normal[axis]]
            if re.search(rf"solid{i}=.*both=True", code):
                so_far = [ns[f"solid{j}"].val().BoundingBox() for j in unions if j < i]
                lo = min((b.xmin, b.ymin, b.zmin)[axis] for b in so_far)
                hi = max((b.xmax, b.ymax, b.zmax)[axis] for b in so_far)
                faces.append((lo + hi) / 2 * normal[axis])
            error = min(abs(height - f) for f in faces)
            assert error <= 1 / codec.DISTANCE_LEVELS + 1e-6, (i, code)
            exact += error < 1e-6
            checked += 1
    assert checked >= 40 and exact >= 0.9 * checked


def test_cuts_remove_material_and_unions_add_it(built_multi_sketch_parts):
    """Features act on the part: nearly every cut removes volume and every union adds some."""
    acting, features = 0, 0
    for code, ns in built_multi_sketch_parts:
        current = ns["solid0"]
        for op, i in re.findall(r"solid=solid\.(\w+)\(solid(\d+)\)", code):
            after = getattr(current, op)(ns[f"solid{i}"])
            change = after.val().Volume() - current.val().Volume()
            acting += change < -1e-7 if op == "cut" else change > 1e-7
            features += 1
            current = after
    assert acting >= 0.9 * features


def test_normals_are_those_of_real_parts():
    """Real GenCAD-Code sketches face +Z, -Y, +X or +Y (or are tilted); direction is the depth's sign."""
    for seed in range(200):
        code = sample_program(np.random.default_rng([11, seed]))
        for vector in re.findall(r"cq\.Vector\(([^)]*)\)\)\)", code):
            assert normal_key([float(v) for v in vector.split(",")]) in ALLOWED_NORMALS + ("tilted",)


def test_sketch_origins_are_the_corners_of_their_profiles():
    """As in DeepCAD, a sketch's coordinates start at its own origin (later sketches: exactly (0, 0))."""
    for seed in range(100):
        sketches, _ = sample_sketches(np.random.default_rng([13, seed]))
        for k, sketch in enumerate(sketches):
            pts = np.array([p for loop in sketch.loops for p in loop.points()])
            assert pts.min() >= -1e-9
            if k:
                assert np.allclose(pts.min(axis=0), 0.0)


@pytest.mark.parametrize("pattern_seed", range(30))
def test_hole_patterns_are_symmetric(pattern_seed):
    rng = np.random.default_rng(pattern_seed)
    rect = (10, 20, 10 + int(rng.integers(20, 200)), 20 + int(rng.integers(20, 200)))
    round_pad = (100.0, 100.0, 80.0, float(rng.choice([0, 30]))) if pattern_seed % 2 else None
    holes = hole_pattern(rng, rect, round_pad)
    if not holes:
        return
    centres = np.array([h.start for h in holes])
    expected = round_pad[:2] if round_pad else ((rect[0] + rect[2]) / 2, (rect[1] + rect[3]) / 2)
    assert np.allclose(centres.mean(axis=0), expected, atol=1e-6)
    assert len({h.radius for h in holes}) == 1


def test_program_statistics_follow_the_real_dataset():
    """On a few hundred draws the fidelity statistics are near the real dataset's (DATASET.md)."""
    stats = program_statistics([sample_program(np.random.default_rng([99, i])) for i in range(400)])
    assert 0.03 <= stats["both=True per sketch"] <= 0.11
    assert 0.56 <= stats["one-sketch parts"] <= 0.70
    assert 0.26 <= stats["cut share of ops"] <= 0.44 and stats["intersect share of ops"] == 0
    assert stats["normal -Z"] == stats["normal -X"] == 0 and 0.43 <= stats["normal +Z"] <= 0.6
    assert 0.64 <= stats["curve lineTo"] <= 0.8 and 0.08 <= stats["curve circle"] <= 0.2
    assert 500 <= stats["median characters"] <= 760
