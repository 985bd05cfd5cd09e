"""frame_silhouette gives the model the same input however the picture was framed."""
import cadquery as cq
import numpy as np
from PIL import Image

from img2cq.agreement import Masks, agreement, views_from_image, views_from_pixels
from img2cq.framing import (BACKGROUND, INK_THRESHOLD, frame_silhouette, jpeg_copy, picture_warning, silhouette_box,
                            whitened, without_halo)
from img2cq.render import render_array


def _grey(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("L"), dtype=float)


def _ink(image: Image.Image) -> np.ndarray:
    return _grey(image) < INK_THRESHOLD


def test_both_fit_rules_give_nearly_the_same_framed_image():
    stepped = cq.Workplane().box(1.0, 0.6, 0.3).union(cq.Workplane().box(0.4, 0.6, 0.5).translate((0.3, 0, 0.4)))
    for shape in (stepped.val(), cq.Workplane().box(0.2, 0.2, 1.4).val()):
        bbox, silhouette = (frame_silhouette(Image.fromarray(render_array(shape, fit=fit)))
                            for fit in ("bbox", "silhouette"))
        assert bbox.size == silhouette.size == (448, 448)
        a, b = _ink(bbox), _ink(silhouette)
        assert (a & b).sum() / (a | b).sum() > 0.97
        assert np.mean(np.abs(_grey(bbox) - _grey(silhouette)) > 64) < 0.02  # edges land on the same pixels
        assert not np.array_equal(render_array(shape, fit="bbox"), render_array(shape, fit="silhouette"))


def test_longer_side_spans_400_of_448_centred():
    image = Image.new("RGB", (300, 120), "white")
    image.paste((0, 0, 0), (20, 30, 120, 80))  # a 100 x 50 block off centre
    framed = frame_silhouette(image)
    left, top, right, bottom = silhouette_box(framed)
    assert (right - left, bottom - top) == (400, 200)
    assert abs((left + right) / 2 - 224) <= 1 and abs((top + bottom) / 2 - 224) <= 1


def test_other_sizes_scale_the_span():
    image = Image.new("RGB", (448, 448), "white")
    image.paste((0, 0, 0), (100, 100, 200, 150))
    left, top, right, bottom = silhouette_box(frame_silhouette(image, size=224))
    assert right - left == 200
    left, top, right, bottom = silhouette_box(frame_silhouette(image, size=224, span=100))
    assert right - left == 100


def test_blank_image_gives_a_white_frame():
    framed = frame_silhouette(Image.new("RGB", (100, 60), "white"))
    assert framed.size == (448, 448) and silhouette_box(framed) is None
    assert {tuple(c) for c in np.asarray(framed).reshape(-1, 3)} == {BACKGROUND}


def test_tiny_image_is_scaled_up_into_the_frame():
    image = Image.new("RGB", (4, 3), "white")
    image.putpixel((1, 1), (0, 0, 0))
    image.putpixel((2, 1), (0, 0, 0))
    framed = frame_silhouette(image)
    left, top, right, bottom = silhouette_box(framed)
    assert framed.size == (448, 448) and right - left == 400 and 150 <= bottom - top <= 250


def test_transparent_background_counts_as_white():
    image = Image.new("RGBA", (200, 200), (0, 0, 0, 0))
    image.paste((90, 90, 90, 255), (50, 50, 150, 100))
    left, top, right, bottom = silhouette_box(frame_silhouette(image))
    assert (right - left, bottom - top) == (400, 200)


def test_a_light_background_is_whitened():
    part = render_array(cq.Workplane().box(1.0, 0.6, 0.3).val())
    on_white = frame_silhouette(Image.fromarray(part))
    vertical = np.linspace(0.8, 1.0, part.shape[0])[:, None, None]  # a viewer's gradient, darker at the top
    sloped = np.linspace(0.75, 0.95, part.shape[1])[None, :, None] + np.linspace(0, 0.05, part.shape[0])[:, None, None]
    for tint in ((0.92, 0.92, 0.92), (0.85, 0.9, 0.97), vertical, sloped * np.array([0.95, 1.0, 1.0])):
        tinted = frame_silhouette(Image.fromarray((part * tint).astype(np.uint8)))
        a, b = _ink(on_white), _ink(tinted)
        assert (a & b).sum() / (a | b).sum() > 0.98
        assert np.mean(np.abs(_grey(on_white) - _grey(tinted)) > 16) < 0.01  # the part's shading kept


def test_other_backgrounds_are_left_as_they_are():
    white = Image.fromarray(render_array(cq.Workplane().box(1.0, 0.6, 0.3).val()))
    dark = Image.new("RGB", (200, 100), (90, 90, 90))
    halves = Image.new("RGB", (200, 100), (200, 200, 200))
    halves.paste((240, 240, 240), (100, 0, 200, 100))  # two colours: no plane fits
    dim = Image.fromarray(np.repeat(np.linspace(120, 250, 100).astype(np.uint8)[:, None, None], 200, axis=1)
                          .repeat(3, axis=2))  # a gradient into the dark: its lower part would pass for the part
    cut = Image.new("RGB", (200, 100), "white")
    cut.paste((141, 141, 141), (0, 0, 200, 60))  # a grey face cut by the picture's top edge
    for image in (white, dark, halves, dim, cut):
        assert whitened(image) is image


def test_a_jpeg_copy_agrees_with_its_render():
    for shape in (cq.Workplane().box(1.0, 0.6, 0.3).faces(">Z").workplane().hole(0.2).val(),
                  cq.Workplane().box(0.2, 0.2, 1.4).val(), cq.Workplane().cylinder(0.3, 0.8).val()):
        render = Image.fromarray(render_array(shape))
        assert without_halo(render) is render  # a render has no halo: nothing changes
        reference = Masks.from_views(views_from_image(render))
        for quality in (75, 40):  # the halo would widen the framed box and shift every edge
            assert agreement(reference, views_from_image(jpeg_copy(render, quality))) > 0.92


def test_a_copy_of_another_size_agrees_with_its_render():
    for shape in (cq.Workplane().box(1.0, 0.6, 0.3).faces(">Z").workplane().hole(0.2).val(),
                  cq.Workplane().box(0.2, 0.2, 1.4).val(), cq.Workplane().cylinder(0.3, 0.8).val()):
        render = Image.fromarray(render_array(shape))
        reference = Masks.from_views(views_from_image(render))
        assert np.array_equal(views_from_image(render), views_from_pixels(np.asarray(render)))  # sharp lines: unchanged
        for factor, least in ((1 / 2, 0.85), (1 / 3, 0.6), (2, 0.95), (4, 0.95)):
            copy = render.resize((round(render.width * factor), round(render.height * factor)),
                                 Image.Resampling.BICUBIC)  # its one-pixel edge lines: grey, or grey once framed
            assert agreement(reference, views_from_image(copy)) > least  # as a render: 0.49-0.50 small, 0.91-0.99 large


def test_a_picture_hard_to_read_gets_a_warning():
    render = Image.fromarray(render_array(cq.Workplane().box(1.0, 0.6, 0.3).val()))
    assert picture_warning(render) is None
    small = Image.new("RGB", (200, 160), "white")
    small.paste(render.resize((120, 120)), (40, 30))
    assert picture_warning(small) is None  # its size and margin do not matter
    assert "blank" in picture_warning(Image.new("RGB", (200, 100), "white"))
    assert "every edge" in picture_warning(Image.new("RGB", (200, 100), (40, 40, 40)))  # a dark background
    assert "touches the picture's edge" in picture_warning(render.crop((100, 0, 448, 448)))  # cut off on the left
