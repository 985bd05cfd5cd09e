"""Framing-invariant input: crop a picture to the part's silhouette and fit it into a fixed frame.

Renders of the same part differ in scale and position depending on who drew them: the GenCAD-Code
renderer fits the projected 3D bounding box into 400 x 300 px of a 448 px image, older renders of
this project fit the silhouette's longer side to 400 px, a user's own renderer does something else.
Everything that looks at a picture (training, evaluation, retrieval, the server, test-time search)
first calls ``frame_silhouette``, so all of these give the model the same input: the silhouette,
centred, its longer side spanning ``SPAN / SIZE`` of the square frame, on white.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

SIZE, SPAN = 448, 400          # output frame: the silhouette's longer side spans 400 of 448 px
BACKGROUND = (255, 255, 255)
INK_THRESHOLD = 250            # a pixel with any channel below this belongs to the part


def on_white(image: Image.Image) -> Image.Image:
    """RGB image; a transparent background (RGBA, LA, palette transparency) becomes white, not black."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, BACKGROUND + (255,)), rgba).convert("RGB")
    return image.convert("RGB")


def darkest_channel(pixels: np.ndarray) -> np.ndarray:
    """(H, W) darkest channel of an (H, W, 3) array (channel by channel: numpy's reductions over a
    length-3 last axis are ~20x slower)."""
    return np.minimum(np.minimum(pixels[..., 0], pixels[..., 1]), pixels[..., 2])


def silhouette_box(image: Image.Image) -> tuple[int, int, int, int] | None:
    """(left, top, right, bottom) of the non-white pixels (right/bottom exclusive), or None if blank."""
    ink = darkest_channel(np.asarray(on_white(image))) < INK_THRESHOLD
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
    box = silhouette_box(image)
    if box is None:
        return image.resize((size, size), Image.Resampling.BILINEAR)
    crop = image.crop(box)
    scale = span / max(crop.size)
    width, height = max(1, round(crop.width * scale)), max(1, round(crop.height * scale))
    canvas = Image.new("RGB", (size, size), BACKGROUND)
    canvas.paste(crop.resize((width, height), Image.Resampling.BILINEAR),
                 ((size - width) // 2, (size - height) // 2))
    return canvas
