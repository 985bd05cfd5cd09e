"""Known answers for the IoU metric: invariances, mirror images, closed forms, exact agreement."""

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import trimesh
from scipy.spatial.transform import Rotation

from img2cq import iou
from img2cq.sandbox import ExecResult
from img2cq.iou import PROPER_ROTATIONS
from metrics.best_iou import evaluate_codes, exact_iou_from_results, get_iou_best, iou_from_results, score_pair
from tests.fixtures.metrics import corpus

# A chiral GenCAD-style part: an L-profile with unequal legs, a hole in one leg and a boss on top.
L_PART = """import cadquery as cq
# Generating a workplane for sketch 0
wp_sketch0 = cq.Workplane(cq.Plane(cq.Vector(-0.5, -0.375, 0.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))
loop0=wp_sketch0.moveTo(0.0, 0.0).lineTo(1.0, 0.0).lineTo(1.0, 0.25).lineTo(0.3125, 0.25).lineTo(0.3125, 0.75).lineTo(0.0, 0.75).close()
loop1=wp_sketch0.moveTo(0.75, 0.125).circle(0.0625)
solid0=wp_sketch0.add(loop0).add(loop1).extrude(0.1875)
solid=solid0
# Generating a workplane for sketch 1
wp_sketch1 = cq.Workplane(cq.Plane(cq.Vector(-0.34375, 0.21875, 0.1875), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))
loop2=wp_sketch1.moveTo(0.0, 0.0).circle(0.1171875)
solid1=wp_sketch1.add(loop2).extrude(0.25)
solid=solid.union(solid1)
"""


def box_program(a, b, c, hole=0.0):
    """A GenCAD-style a x b x c box centred at the origin, optionally with a z through-hole."""
    hole_loop = f"\nloop1=wp_sketch0.moveTo({a / 2!r}, {b / 2!r}).circle({hole!r})" if hole else ""
    add_hole = ".add(loop1)" if hole else ""
    return f"""import cadquery as cq
wp_sketch0 = cq.Workplane(cq.Plane(cq.Vector({-a / 2!r}, {-b / 2!r}, {-c / 2!r}), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))
loop0=wp_sketch0.moveTo(0.0, 0.0).lineTo({a!r}, 0.0).lineTo({a!r}, {b!r}).lineTo(0.0, {b!r}).close(){hole_loop}
solid=wp_sketch0.add(loop0){add_hole}.extrude({c!r})
"""


def cylinder_program(r, h):
    return f"""import cadquery as cq
wp_sketch0 = cq.Workplane(cq.Plane(cq.Vector(0.0, 0.0, 0.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))
loop0=wp_sketch0.moveTo(0.0, 0.0).circle({r!r})
solid=wp_sketch0.add(loop0).extrude({h!r})
"""


def moved(code, rotation=np.eye(3), shift=(0.0, 0.0, 0.0), scale=1.0):
    """`code` with its result scaled about the origin, then rotated, then shifted."""
    axis = Rotation.from_matrix(rotation).as_rotvec()
    angle = float(np.degrees(np.linalg.norm(axis)))
    axis = tuple(map(float, axis / np.linalg.norm(axis))) if angle else (0.0, 0.0, 1.0)
    return code + (f"solid = cq.Workplane().add(solid.val().scale({scale!r}))"
                   f".rotate((0, 0, 0), {axis!r}, {angle!r}).translate({tuple(map(float, shift))!r})\n")


def run(executor, *codes):
    results = executor.map(list(codes), mesh=True)
    assert all(r.ok for r in results), [r.reason for r in results]
    return results


def normalised_volume(volume, second_moment):
    """Volume after scaling so that the radius of gyration sqrt(second_moment / volume) is 1."""
    return volume / (second_moment / volume) ** 1.5


def test_identical_programs_score_one(executor):
    a, b = run(executor, L_PART, L_PART)
    assert iou_from_results(a, b) == pytest.approx(1.0, abs=1e-9)
    assert get_iou_best(L_PART, L_PART, executor=executor) == pytest.approx(1.0, abs=1e-9)


def test_invariant_to_translation_scale_and_all_24_rotations(executor):
    variants = [moved(L_PART, q, shift=(0.3, -0.2, 0.7), scale=1.7) for q in PROPER_ROTATIONS]
    reference, *others = run(executor, L_PART, *variants)
    scores = [iou_from_results(reference, other) for other in others]
    assert min(scores) >= 0.99, scores


def test_mirror_image_is_not_the_same_part(executor):
    mirrored = L_PART + "solid = solid.mirror('YZ')\n"
    a, b = run(executor, L_PART, mirrored)
    assert iou_from_results(a, b) < 0.9
    assert iou_from_results(a, b, allow_mirror=True) >= 0.99


def test_pairwise_ious_score_every_pair_as_the_metric_does(executor):
    """The search compares its candidates with one another by `iou.pairwise_ious`: one grid for
    all, each solid moved and gridded once, yet every pair as `iou_from_results` scores it."""
    programs = [L_PART, box_program(1, 2, 0.5), box_program(1, 2, 0.5, hole=0.3), cylinder_program(0.5, 1.5),
                moved(L_PART, PROPER_ROTATIONS[5], scale=2.0)]
    results = run(executor, *programs)
    invalid = ExecResult(ok=False, error_kind="invalid", message="not a valid solid")
    matrix = iou.pairwise_ious(results + [invalid, None], [1, 0, 3])
    for i, result in enumerate(results):
        for k, j in enumerate([1, 0, 3]):
            expected = 1.0 if i == j else iou_from_results(result, results[j])
            assert matrix[i, k] == pytest.approx(expected, abs=1e-6), (i, j)
    assert matrix[4, 1] > 0.99 and matrix[1, 2] < 0.8                     # the moved L, the box against the cylinder
    assert (matrix[5:] == 0).all()                                        # no solid: no likeness
    assert iou.pairwise_ious([invalid], [0]).tolist() == [[0.0]]


def test_box_with_through_hole_matches_closed_form(executor):
    a, b, c, r = 1.0, 0.625, 0.25, 0.15625
    box_v, box_m = a * b * c, a * b * c * (a * a + b * b + c * c) / 12
    cyl_v = math.pi * r * r * c
    cyl_m = cyl_v * (r * r / 2 + c * c / 12)
    # the hole takes volume from near the centre, so the holed box, once normalised, is a
    # smaller box (with a hole) nested inside the normalised plain box: IoU = volume ratio
    plain = normalised_volume(box_v, box_m)
    holed = normalised_volume(box_v - cyl_v, box_m - cyl_m)
    expected = min(plain, holed) / max(plain, holed)
    results = run(executor, box_program(a, b, c), box_program(a, b, c, hole=r))
    assert iou_from_results(*results) == pytest.approx(expected, abs=0.01)


def test_two_boxes_match_closed_form(executor):
    sides = np.array([[1.0, 0.5, 0.25], [0.8, 0.6, 0.2]])
    # normalised boxes are centred and matched longest side to longest side
    scaled = [s / math.sqrt((s @ s) / 12) for s in sides]
    inter = np.prod(np.minimum(*scaled))
    expected = inter / (np.prod(scaled[0]) + np.prod(scaled[1]) - inter)
    results = run(executor, box_program(*sides[0].tolist()), box_program(*sides[1][[2, 0, 1]].tolist()))
    assert iou_from_results(*results) == pytest.approx(expected, abs=0.01)


def test_two_discs_match_closed_form(executor):
    (r1, h1), (r2, h2) = (0.5, 0.2), (0.4, 0.3)
    scaled = []
    for r, h in ((r1, h1), (r2, h2)):
        g = math.sqrt(r * r / 2 + h * h / 12)
        scaled.append((r / g, h / g))
    vol = [math.pi * r * r * h for r, h in scaled]
    inter = math.pi * min(scaled[0][0], scaled[1][0]) ** 2 * min(scaled[0][1], scaled[1][1])
    expected = inter / (vol[0] + vol[1] - inter)
    results = run(executor, cylinder_program(r1, h1), cylinder_program(r2, h2))
    assert iou_from_results(*results) == pytest.approx(expected, abs=0.01)


def mesh_result(mesh: trimesh.Trimesh, like: trimesh.Trimesh | None = None) -> ExecResult:
    """An ExecResult for a mesh, with the mass properties of `like` (default: the mesh itself)."""
    like = like or mesh
    return ExecResult(ok=True, volume=like.volume, center=like.center_mass, inertia=like.moment_inertia,
                      vertices=np.asarray(mesh.vertices), faces=np.asarray(mesh.faces))


def test_mesh_rejected_by_manifold3d_falls_back_to_grid_estimate():
    # an L-shaped block of two boxes, and the same mesh with some triangles wound the wrong way:
    # manifold3d refuses the latter, ray parity does not care about winding
    part = trimesh.util.concatenate([trimesh.creation.box((2, 1, 1)),
                                     trimesh.creation.box((1, 2, 1)).apply_translation((0.5, 1.5, 0))])
    broken = trimesh.Trimesh(part.vertices, part.faces.copy(), process=False)
    broken.faces[::3] = broken.faces[::3, ::-1]
    other = trimesh.creation.box((1.8, 1.4, 0.9))
    assert iou._Solid(mesh_result(part)).is_manifold
    assert not iou._Solid(mesh_result(broken, like=part)).is_manifold
    assert iou_from_results(mesh_result(broken, like=part), mesh_result(broken, like=part)) == 1.0
    fallback = iou_from_results(mesh_result(broken, like=part), mesh_result(other))
    booleans = iou_from_results(mesh_result(part), mesh_result(other))
    assert fallback == pytest.approx(booleans, abs=0.03)


def test_score_pair_and_evaluate_codes_count_invalid_programs(executor):
    good = box_program(1.0, 0.5, 0.25)
    broken = "import cadquery as cq\nsolid = cq.Workplane().box(1, 1,\n"
    out = score_pair(good, broken, executor=executor)
    assert out["reference_valid"] and not out["candidate_valid"]
    assert out["candidate_error"].startswith("syntax")
    assert out["iou"] == 0.0
    assert score_pair(broken, good, executor=executor)["iou"] is None

    gt = {"same": good, "broken": good, "missing": good, "bad_gt": broken}
    pred = {"same": good, "broken": broken, "bad_gt": good, "extra": good}
    report = evaluate_codes(gt, pred, executor=executor)
    assert report["ious"] == {"same": pytest.approx(1.0), "broken": 0.0, "missing": 0.0}
    assert report["mean_iou"] == pytest.approx(1 / 3)
    assert (report["n_pairs"], report["n_invalid_pred"], report["n_invalid_gt"]) == (3, 2, 1)
    assert set(report["errors"]) == {"broken", "missing", "bad_gt"}


def per_rotation_ious(executor, a, b):
    """IoU for each of the 24 rotations, by mesh booleans and by OCC booleans."""
    sa, sb = iou._Solid(a), iou._Solid(b)
    mesh = []
    for q in PROPER_ROTATIONS:
        inter = (sa.manifold ^ sb.manifold.transform(np.hstack([q, np.zeros((3, 1))]))).volume()
        mesh.append(inter / (sa.volume + sb.volume - inter))
    frames = [iou.canonical_frame(r.volume, r.center, r.inertia) for r in (a, b)]
    occ = executor.call("img2cq.iou:occ_ious", a.brep, b.brep, *frames, np.array(PROPER_ROTATIONS), timeout=300)
    return mesh, occ.extras["value"], frames


@pytest.mark.slow
def test_fast_path_agrees_with_exact_booleans(executor):
    pairs = corpus.gencad_pairs(70, seed=7)  # related pairs (a part and a jittered copy), then unrelated
    results = executor.map([c for pair in pairs for c in pair], mesh=True, brep=True)
    valid = [(a, b) for a, b in zip(results[::2], results[1::2]) if a.ok and b.ok][:50]
    assert len(valid) == 50
    with ThreadPoolExecutor(2) as threads:  # one exact call per executor worker
        exact = list(threads.map(lambda pair: exact_iou_from_results(*pair, executor=executor), valid))
    fast = [iou_from_results(a, b, executor=executor) for a, b in valid]
    disputed = [i for i in range(len(valid)) if abs(fast[i] - exact[i]) > 0.01]
    # OCC's own booleans are wrong on a few near-coincident configurations (seen: nearly coaxial
    # cylinders); an independent point-classification estimate settles each disagreement
    assert len(disputed) <= 3, [(fast[i], exact[i]) for i in disputed]
    for i in disputed:
        mesh, occ, frames = per_rotation_ious(executor, *valid[i])
        q = int(np.argmax(occ))
        referee = executor.call("tests.fixtures.metrics.referee:point_iou", valid[i][0].brep, valid[i][1].brep,
                          *frames, PROPER_ROTATIONS[q], 20000, timeout=300).extras["value"]
        # the mesh booleans are at least as close to the referee as OCC's (equal when both agree there)
        assert abs(mesh[q] - referee) <= min(0.02, abs(occ[q] - referee)) + 1e-6, (mesh[q], occ[q], referee)
