"""The renderer must match the GenCAD-Code image style (gencad-code.md): these numbers are the spec."""
import io
import os
import signal
from pathlib import Path

import cadquery as cq
import numpy as np
import pytest
from PIL import Image

from img2cq.data import draw_rng, reject_reason, seamed_program
from img2cq.fitcheck import follows_bbox_rule, follows_silhouette_rule, measure
from img2cq.render import BACKGROUND, EDGE_COLOR, FACE_COLOR, projected_extents, render_array, render_png
from img2cq.sampler import sample_program

FIXTURES = Path(__file__).parent / "fixtures" / "render"


def _fixture_shape():
    namespace = {}
    exec((FIXTURES / "plate_boss.py").read_text(), namespace)
    return namespace["solid"].val()


def _ink(image: np.ndarray) -> np.ndarray:
    return (image != 255).any(axis=-1)


def test_matches_reference_image():
    """Checked-in render of a known program; a few pixels may differ across Mesa/VTK builds."""
    reference = np.asarray(Image.open(FIXTURES / "plate_boss.png").convert("RGB"))
    image = render_array(_fixture_shape())
    assert image.shape == reference.shape == (448, 448, 3)
    differing = (image != reference).any(axis=-1).mean()
    assert differing < 0.005, f"{differing:.2%} of pixels differ from the reference"


def test_colours_are_exactly_background_face_and_edge():
    image = render_array(_fixture_shape())
    colours = {tuple(int(v) for v in c) for c in np.unique(image.reshape(-1, 3), axis=0)}
    assert colours == {BACKGROUND, FACE_COLOR, EDGE_COLOR}  # no shading, no anti-aliasing


def _ink_extent(image: np.ndarray) -> tuple[int, int, float, float]:
    """Width, height and centre (x, y) of the ink."""
    ys, xs = np.nonzero(_ink(image))
    return xs.max() - xs.min() + 1, ys.max() - ys.min() + 1, (xs.min() + xs.max()) / 2, (ys.min() + ys.max()) / 2


def test_a_box_fits_400_wide_or_300_tall_centred():
    """For a box the silhouette is the projected bounding box itself: a tall one touches the 300 px
    limit, a flat wide one the 400 px limit (+1 px of edge line), both centred."""
    cases = ((cq.Workplane().box(0.2, 0.2, 1.4), 1, 300), (cq.Workplane().box(1.4, 1.4, 0.1), 0, 400))
    for part, side, limit in cases:
        extent = _ink_extent(render_array(part.val()))
        assert limit <= extent[side] <= limit + 1 and extent[1 - side] < (300, 400)[side]
        assert abs(extent[2] - 223.5) <= 1 and abs(extent[3] - 223.5) <= 1


def test_fit_rule_holds_on_sampled_parts():
    """Each sampled part's projected 3D box fits 400 x 300 px, one side tight within 2 px, centred."""
    checked = 0
    for index in range(12):
        namespace = {}
        exec(sample_program(draw_rng(11, "test", index)), namespace)
        shape = namespace["solid"].val()
        if reject_reason(shape):
            continue
        m = measure(projected_extents(shape), Image.fromarray(render_array(shape)))
        assert follows_bbox_rule(m), m
        checked += 1
    assert checked >= 8


def test_silhouette_fit_is_kept_as_an_option():
    for shape in (_fixture_shape(), cq.Workplane().box(0.2, 0.2, 1.4).val()):
        width, height, x, y = _ink_extent(render_array(shape, fit="silhouette"))
        assert max(width, height) in (399, 400, 401) and abs(x - 223.5) <= 1 and abs(y - 223.5) <= 1
        m = measure(projected_extents(shape), Image.fromarray(render_array(shape, fit="silhouette")))
        assert follows_silhouette_rule(m)
    with pytest.raises(ValueError, match="unknown fit"):
        render_array(_fixture_shape(), fit="longest")


def test_size_and_png_output():
    png = render_png(cq.Workplane().box(0.2, 0.2, 1.4).val(), size=224)
    image = Image.open(io.BytesIO(png))
    assert image.size == (224, 224) and image.mode == "RGB"
    assert _ink_extent(np.asarray(image))[1] in (150, 151)  # 300 px of 448, scaled


def test_seams_of_unioned_sketches_are_drawn():
    """A stepped block: with clean=False the line where the two blocks meet stays on their shared
    front and back faces, as in the dataset; the solid itself (volume, validity) is unchanged."""
    from img2cq.measure import mass_properties

    code = """import cadquery as cq
solid0=cq.Workplane().box(1.0, 0.6, 0.3)
solid=solid0
solid1=cq.Workplane().box(0.5, 0.6, 0.3).translate((0.25, 0.0, 0.3))
solid=solid.union(solid1)
"""
    assert "solid.union(solid1, clean=False)" in seamed_program(code)
    shapes = []
    for program in (code, seamed_program(code)):
        namespace = {}
        exec(program, namespace)
        shapes.append(namespace["solid"].val())
    plain, seamed = shapes
    assert len(seamed.Faces()) > len(plain.Faces())
    assert reject_reason(plain) is reject_reason(seamed) is None
    (v0, _, i0), (v1, _, i1) = mass_properties(plain), mass_properties(seamed)
    assert np.isclose(v0, v1, rtol=1e-9) and np.allclose(i0, i1, rtol=1e-7, atol=1e-12)
    black = [(render_array(s) == 0).all(axis=-1).sum() for s in shapes]
    assert black[1] > black[0] + 100, black


def _heavy_end_quadrant(direction) -> tuple[float, float]:
    """Render a thin bar with a big cube at its `direction` end; return the ink centroid (x, y)
    relative to the image centre (y grows downwards)."""
    d = np.array(direction, dtype=float)
    bar = cq.Workplane().box(*(np.abs(d) * 2.0 + 0.1)).translate(tuple(d * 1.0))
    cube = cq.Workplane().box(0.8, 0.8, 0.8).translate(tuple(d * 2.0))
    ys, xs = np.nonzero(_ink(render_array(bar.union(cube).val())))
    return xs.mean() - 223.5, ys.mean() - 223.5


def test_view_from_plus_x_minus_y_plus_z_with_z_up():
    x, y = _heavy_end_quadrant((1, 0, 0))
    assert x > 20 and y > 10          # +X points to the lower right
    x, y = _heavy_end_quadrant((0, 1, 0))
    assert x > 20 and y < -10         # +Y points to the upper right
    x, y = _heavy_end_quadrant((0, 0, 1))
    assert abs(x) < 5 and y < -20     # +Z points up


def test_hidden_edges_are_removed():
    """From (1,-1,1) a cube's nearest and farthest corners both project to the image centre: the
    visible edges leave it up, upper-left and upper-right; the hidden ones down-left, down-right, up."""
    image = render_array(cq.Workplane().box(1, 1, 1).val())
    black = (image == 0).all(axis=-1)

    def black_near_ray(angle_deg):
        a = np.radians(angle_deg)
        hits = [black[round(223.5 - t * np.sin(a)) - 1:round(223.5 - t * np.sin(a)) + 2,
                      round(223.5 + t * np.cos(a)) - 1:round(223.5 + t * np.cos(a)) + 2].any() for t in range(20, 150, 5)]
        return np.mean(hits)

    assert black_near_ray(150) == 1.0 and black_near_ray(30) == 1.0   # visible edges to the upper left / right
    assert black_near_ray(-150) == 0.0 and black_near_ray(-30) == 0.0  # hidden edges to the lower left / right


def test_view_jitter_is_reproducible_and_changes_view():
    shape = _fixture_shape()
    a = render_array(shape, view_jitter_deg=10, seed=3)
    assert np.array_equal(a, render_array(shape, view_jitter_deg=10, seed=3))
    assert not np.array_equal(a, render_array(shape))


def test_forked_child_renders_with_the_inherited_context():
    """Executor children are forked from a worker that imported this module: they must draw with the
    inherited GL context (no hang on threads that did not survive the fork) and get the same pixels."""
    shape = _fixture_shape()
    expected = render_array(shape, size=96)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        signal.alarm(20)  # a hang kills the child and the parent sees no data
        os.write(write_fd, render_array(shape, size=96).tobytes())
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    assert np.frombuffer(data, dtype=np.uint8).reshape(expected.shape).tolist() == expected.tolist()
