"""Framing-invariant input: crop a picture to the part's silhouette and fit it into a fixed frame.

Renders of the same part differ in scale and position depending on who drew them: the GenCAD-Code
renderer fits the projected 3D bounding box into 400 x 300 px of a 448 px image, older renders of
this project fit the silhouette's longer side to 400 px, a user's own renderer does something else.
Everything that looks at a picture (training, evaluation, retrieval, the server, test-time search)
first calls ``frame_silhouette``, so all of these give the model the same input: the silhouette,
centred, its longer side spanning ``SPAN / SIZE`` of the square frame, on white. A user's picture
on a uniform light background other than white (a viewer's grey, a tint) is whitened first (a grey
background would otherwise all count as the part), and the halo JPEG leaves around a part is taken
away (it would widen the silhouette's box): ``benchmarks/bench_pictures.py``.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

SIZE, SPAN = 448, 400          # output frame: the silhouette's longer side spans 400 of 448 px
BACKGROUND = (255, 255, 255)
INK_THRESHOLD = 250            # a pixel with any channel below this belongs to the part
LIGHT_BACKGROUND = 170         # a uniform border at least this light (every channel) is a background ...
BORDER_TOLERANCE = 8           # ... where this share of its pixels is within this many levels of its median:
UNIFORM_SHARE = 0.9            # such a picture is whitened (``whitened``)
HALO_LEVEL = 200               # a light part pixel (darkest channel at least this) beside no darker one is halo


def on_white(image: Image.Image) -> Image.Image:
    """RGB image on white: a transparent background (RGBA, LA, palette transparency) becomes white,
    not black, a uniform light one (a viewer's grey, a tint) is ``whitened``, and a compression
    halo is taken away (``without_halo``)."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        return without_halo(Image.alpha_composite(Image.new("RGBA", rgba.size, BACKGROUND + (255,)), rgba).convert("RGB"))
    return without_halo(whitened(image.convert("RGB")))


def whitened(image: Image.Image) -> Image.Image:
    """An RGB picture whose border is a uniform light colour other than white, each channel scaled by
    255 / the border's level, so its background is white and the part keeps its shading: a grey
    background would otherwise all count as the part. Other pictures are returned as they are
    (a white border, a part cut by the picture's edge, a dark or busy background)."""
    pixels = np.asarray(image)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]]).astype(np.int16)
    if border.min() >= INK_THRESHOLD:  # white already (every render): no more to look at
        return image
    level = np.median(border, axis=0)
    uniform = (np.abs(border - level).max(axis=1) <= BORDER_TOLERANCE).mean() >= UNIFORM_SHARE
    if level.min() >= INK_THRESHOLD or level.min() < LIGHT_BACKGROUND or not uniform:
        return image
    out = np.clip(pixels * (255.0 / level).astype(np.float32), 0, 255).astype(np.uint8)
    out[np.abs(pixels.astype(np.int16) - level).max(axis=-1) <= BORDER_TOLERANCE] = 255  # its noise too
    return Image.fromarray(out)


def without_halo(image: Image.Image) -> Image.Image:
    """The RGB picture with its light part pixels that touch no darker pixel made white: JPEG leaves
    such a halo a few pixels wide around a part, which would widen the silhouette's box and so
    shift and shrink everything framed from it. In a render, light part pixels are only the
    anti-aliasing of dark lines, beside them: a render is returned as it is."""
    pixels = np.asarray(image)
    darkest = darkest_channel(pixels)
    rows, cols = np.nonzero((darkest >= HALO_LEVEL) & (darkest < INK_THRESHOLD))
    padded = np.pad(darkest, 1, constant_values=255)
    beside_darker = np.zeros(len(rows), bool)
    for dy in range(3):
        for dx in range(3):
            beside_darker |= padded[rows + dy, cols + dx] < HALO_LEVEL
    if beside_darker.all():
        return image
    out = pixels.copy()
    out[rows[~beside_darker], cols[~beside_darker]] = 255
    return Image.fromarray(out)


def darkest_channel(pixels: np.ndarray) -> np.ndarray:
    """(H, W) darkest channel of an (H, W, 3) array (channel by channel: numpy's reductions over a
    length-3 last axis are ~20x slower)."""
    return np.minimum(np.minimum(pixels[..., 0], pixels[..., 1]), pixels[..., 2])


def silhouette_box(image: Image.Image) -> tuple[int, int, int, int] | None:
    """(left, top, right, bottom) of the non-white pixels (right/bottom exclusive), or None if blank."""
    return ink_box(on_white(image))


def ink_box(image: Image.Image) -> tuple[int, int, int, int] | None:
    """``silhouette_box`` of an RGB picture already ``on_white``."""
    ink = darkest_channel(np.asarray(image)) < INK_THRESHOLD
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    if not len(rows):
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def frame_silhouette(image: Image.Image, size: int = SIZE, span: int | None = None) -> Image.Image:
    """The silhouette cropped, scaled so its longer side spans ``span`` px, centred on a white
    ``size`` x ``size`` RGB canvas. ``span`` defaults to ``size * SPAN / SIZE``. A blank image is
    returned resized (there is nothing to centre)."""
    image = on_white(image)
    span = span or round(size * SPAN / SIZE)
    box = ink_box(image)
    if box is None:
        return image.resize((size, size), Image.Resampling.BILINEAR)
    crop = image.crop(box)
    scale = span / max(crop.size)
    width, height = max(1, round(crop.width * scale)), max(1, round(crop.height * scale))
    canvas = Image.new("RGB", (size, size), BACKGROUND)
    canvas.paste(crop.resize((width, height), Image.Resampling.BILINEAR),
                 ((size - width) // 2, (size - height) // 2))
    return canvas


def jpeg_copy(image: Image.Image, quality: int) -> Image.Image:
    """The RGB picture as a JPEG file of this quality gives it back: what a user's copy often is."""
    data = io.BytesIO()
    image.convert("RGB").save(data, "JPEG", quality=quality)
    return Image.open(io.BytesIO(data.getvalue())).convert("RGB")
