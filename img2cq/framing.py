"""Framing-invariant input: crop a picture to the part's silhouette and fit it into a fixed frame.

Renders of the same part differ in scale and position depending on who drew them: the GenCAD-Code
renderer fits the projected 3D bounding box into 400 x 300 px of a 448 px image, older renders of
this project fit the silhouette's longer side to 400 px, a user's own renderer does something else.
Everything that looks at a picture (training, evaluation, retrieval, the server, test-time search)
first calls ``frame_silhouette``, so all of these give the model the same input: the silhouette,
centred, its longer side spanning ``SPAN / SIZE`` of the square frame, on white. A user's picture
on a light background other than white (a viewer's grey, a tint, a gradient) is whitened first (a grey
background would otherwise all count as the part), and the halo JPEG leaves around a part is taken
away (it would widen the silhouette's box): ``benchmarks/bench_pictures.py``. ``picture_warning``
tells the user what still makes a picture hard to read (a blank one, a dark background, a cut part).
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

SIZE, SPAN = 448, 400          # output frame: the silhouette's longer side spans 400 of 448 px
BACKGROUND = (255, 255, 255)
INK_THRESHOLD = 250            # a pixel with any channel below this belongs to the part
LIGHT_BACKGROUND = 170         # a smooth border at least this light (every channel) is a background ...
BORDER_TOLERANCE = 8           # ... where this share of its pixels is within this many levels of a plane:
UNIFORM_SHARE = 0.9            # such a picture is whitened (``whitened``)
HALO_LEVEL = 200               # a light part pixel (darkest channel at least this) beside no darker one is halo


def on_white(image: Image.Image) -> Image.Image:
    """RGB image on white: a transparent background (RGBA, LA, palette transparency) becomes white,
    not black, a light one (a viewer's grey, a tint, a gradient) is ``whitened``, and a compression
    halo is taken away (``without_halo``)."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        return without_halo(Image.alpha_composite(Image.new("RGBA", rgba.size, BACKGROUND + (255,)), rgba).convert("RGB"))
    return without_halo(whitened(image.convert("RGB")))


def whitened(image: Image.Image) -> Image.Image:
    """An RGB picture on a light background other than white, one colour (a viewer's grey, a tint)
    or a linear gradient, each pixel scaled channel by channel by 255 / the background's level
    there, so its background is white and the part keeps its shading: a grey background would
    otherwise all count as the part. The level is a plane fitted to the picture's border. Other
    pictures are returned as they are (a white border, a part cut by the picture's edge, a dark or
    busy background)."""
    pixels = np.asarray(image)
    height, width = pixels.shape[:2]
    border, positions = border_pixels(pixels)
    if border.min() >= INK_THRESHOLD:  # white already (every render): no more to look at
        return image
    level = background_plane(border, positions)
    if level is None:
        return image
    corners = np.array([[1, x, y] for x in (0, 1) for y in (0, 1)], np.float32) @ level
    if corners.min() >= INK_THRESHOLD or corners.min() < LIGHT_BACKGROUND:
        return image
    x = np.arange(width, dtype=np.float32) / width
    y = np.arange(height, dtype=np.float32)[:, None] / height
    out = pixels.astype(np.float32)
    background = np.ones((height, width), bool)
    for channel in range(3):
        plane = level[0, channel] + level[1, channel] * x + level[2, channel] * y
        background &= np.abs(out[..., channel] - plane) <= BORDER_TOLERANCE
        out[..., channel] *= 255.0 / plane
    out = np.clip(out, 0, 255).astype(np.uint8)
    out[background] = 255  # its noise too
    return Image.fromarray(out)


def border_pixels(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The picture's border pixels, (N, 3) int16, and their positions, (N, 3) rows of (1, x, y) with
    x and y as fractions of the width and height."""
    height, width = pixels.shape[:2]
    xs, ys = np.arange(width) / width, np.arange(height) / height
    x = np.concatenate([xs, xs, np.zeros(height), np.full(height, (width - 1) / width)])
    y = np.concatenate([np.zeros(width), np.full(width, (height - 1) / height), ys, ys])
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]]).astype(np.int16)
    return border, np.stack([np.ones_like(x), x, y], axis=1)


def background_plane(border: np.ndarray, positions: np.ndarray) -> np.ndarray | None:
    """(3, 3) coefficients of the plane each channel's background follows (level = positions @
    coefficients), fitted to the border twice (the second time without the pixels far from the
    first fit, such as a part touching the border), or None where ``UNIFORM_SHARE`` of the border
    is not within ``BORDER_TOLERANCE`` of it."""
    level = np.linalg.lstsq(positions, border, rcond=None)[0]
    near = np.abs(border - positions @ level).max(axis=1) <= 2 * BORDER_TOLERANCE
    if near.sum() < 3:
        return None
    level = np.linalg.lstsq(positions[near], border[near], rcond=None)[0]
    fits = np.abs(border - positions @ level).max(axis=1) <= BORDER_TOLERANCE
    return level.astype(np.float32) if fits.mean() >= UNIFORM_SHARE else None


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


def picture_warning(image: Image.Image) -> str | None:
    """What makes a picture hard to read, in a sentence for the user, or None: a blank picture, a
    part that reaches every edge (a dark or busy background is read as the part), a part cut by
    the picture's edge (the program cannot have what is not shown)."""
    picture = on_white(image)
    box = ink_box(picture)
    if box is None:
        return "the picture is blank: no part found on it"
    touched = [box[0] == 0, box[1] == 0, box[2] == picture.width, box[3] == picture.height]
    if all(touched):
        return ("the part reaches every edge of the picture: img2cq reads one part drawn on a white or light, "
                "smooth background, and takes any other background for the part")
    if any(touched):
        return "the part touches the picture's edge: where it is cut off, the program cannot show it"
    return None


def frame_silhouette(image: Image.Image, size: int = SIZE, span: int | None = None) -> Image.Image:
    """The silhouette cropped, scaled so its longer side spans ``span`` px, centred on a white
    ``size`` x ``size`` RGB canvas. ``span`` defaults to ``size * SPAN / SIZE``. A blank image is
    returned resized (there is nothing to centre)."""
    image = on_white(image)
    return framed_crop(image, ink_box(image), size, span)


def framed_crop(image: Image.Image, box: tuple[int, int, int, int] | None, size: int = SIZE, span: int | None = None,
                resample: Image.Resampling = Image.Resampling.BILINEAR, background=BACKGROUND) -> Image.Image:
    """``box`` of the picture (any mode) framed as ``frame_silhouette`` frames the silhouette: its
    longer side scaled to ``span`` px, centred on a ``size`` x ``size`` canvas of ``background``;
    no box (a blank picture): the picture resized."""
    if box is None:
        return image.resize((size, size), resample)
    span = span or round(size * SPAN / SIZE)
    crop = image.crop(box)
    scale = span / max(crop.size)
    width, height = max(1, round(crop.width * scale)), max(1, round(crop.height * scale))
    canvas = Image.new(image.mode, (size, size), background)
    canvas.paste(crop.resize((width, height), resample), ((size - width) // 2, (size - height) // 2))
    return canvas


def jpeg_copy(image: Image.Image, quality: int) -> Image.Image:
    """The RGB picture as a JPEG file of this quality gives it back: what a user's copy often is."""
    data = io.BytesIO()
    image.convert("RGB").save(data, "JPEG", quality=quality)
    return Image.open(io.BytesIO(data.getvalue())).convert("RGB")
