"""Agreement: how well a candidate's render matches the input picture, without ground truth.

A user holds one picture and no ground truth, but this project owns a renderer that draws the
GenCAD-Code image style. A candidate is rendered in that style and compared with the input: both
pictures are framed alike (``img2cq.framing.frame_silhouette``, so the score does not depend on
which fit rule drew either one), reduced to ``RESOLUTION`` and compared by silhouette IoU and a
symmetric chamfer distance between their edge maps.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from img2cq.framing import INK_THRESHOLD, frame_silhouette

FRAME = 448                  # pictures are framed at the dataset's size, then reduced to RESOLUTION
RESOLUTION = 112             # agreement resolution (compared in benchmarks/bench_rerank.py)
EDGE_WEIGHT = 0.5            # agreement = (1 - EDGE_WEIGHT) * silhouette IoU + EDGE_WEIGHT * edge similarity
EDGE_SCALE = 0.02            # chamfer distance (fraction of the frame) at which edge similarity is 1/e
EDGE_THRESHOLD = 64          # darker than this: a drawn edge (edges are black, faces grey 141)


# ----------------------------------------------------------------------------------------------
# Views: framed silhouette and edge masks of a picture

def framed_grey(pixels: np.ndarray) -> np.ndarray:
    """(FRAME, FRAME) uint8: an RGB picture framed, each pixel its darkest channel."""
    return np.asarray(frame_silhouette(Image.fromarray(pixels), size=FRAME)).min(axis=2)


def views_from_grey(framed: np.ndarray) -> np.ndarray:
    """(2, FRAME, FRAME) bool: silhouette and edge masks of a framed grey picture."""
    return np.stack([framed < INK_THRESHOLD, framed < EDGE_THRESHOLD])


def views_from_pixels(pixels: np.ndarray) -> np.ndarray:
    """(2, FRAME, FRAME) bool: silhouette and edge masks of an RGB picture after framing."""
    return views_from_grey(framed_grey(pixels))


def views_from_image(image: Image.Image) -> np.ndarray:
    return views_from_pixels(np.asarray(image.convert("RGB")))


def pack_views(views: np.ndarray) -> bytes:
    return np.packbits(views).tobytes()


def unpack_views(data: bytes) -> np.ndarray:
    return np.unpackbits(np.frombuffer(data, np.uint8))[:2 * FRAME * FRAME].reshape(2, FRAME, FRAME).astype(bool)


def render_views(shape) -> dict:
    """Executor postprocess (runs in the sandbox): the shape rendered in the dataset style, as
    packed framed views (``{"views": bytes}``, 50 KB instead of a 600 KB picture)."""
    from img2cq.render import render_array

    return {"views": pack_views(views_from_pixels(render_array(shape, size=FRAME)))}


@dataclass
class Reference:
    """The input picture's masks at one resolution, with the distance transform of its edges."""

    silhouette: np.ndarray
    edges: np.ndarray
    edge_distance: np.ndarray

    @classmethod
    def from_views(cls, views: np.ndarray, resolution: int = RESOLUTION) -> "Reference":
        from scipy.ndimage import distance_transform_edt

        silhouette, edges = reduce_views(views, resolution)
        return cls(silhouette, edges, distance_transform_edt(~edges) / resolution)


def reduce_views(views: np.ndarray, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """Silhouette (majority of each block) and edges (any pixel of each block) at ``resolution``."""
    if FRAME % resolution:
        raise ValueError(f"resolution must divide {FRAME}, got {resolution}")
    f = FRAME // resolution
    blocks = views.reshape(2, resolution, f, resolution, f)
    return blocks[0].mean(axis=(1, 3)) > 0.5, blocks[1].any(axis=(1, 3))


def agreement(reference: Reference, views: np.ndarray | None, edge_weight: float = EDGE_WEIGHT,
              edge_scale: float = EDGE_SCALE) -> float:
    """How well a candidate's framed render matches the reference, in [0, 1]; -inf for no render."""
    from scipy.ndimage import distance_transform_edt

    if views is None:
        return -math.inf
    resolution = reference.silhouette.shape[0]
    silhouette, edges = reduce_views(views, resolution)
    union = np.logical_or(silhouette, reference.silhouette).sum()
    iou = np.logical_and(silhouette, reference.silhouette).sum() / union if union else 0.0
    if edges.any() and reference.edges.any():
        to_reference = reference.edge_distance[edges].mean()
        to_candidate = (distance_transform_edt(~edges) / resolution)[reference.edges].mean()
        edge_similarity = math.exp(-(to_reference + to_candidate) / 2 / edge_scale)
    else:
        edge_similarity = 0.0
    return float((1 - edge_weight) * iou + edge_weight * edge_similarity)


def render_programs(programs: list[str], executor) -> list[np.ndarray | None]:
    """Framed views of each program's render (None where it does not build), in parallel."""
    results = executor.map(programs, mesh=False, postprocess="img2cq.agreement:render_views")
    return [unpack_views(r.extras["value"]["views"]) if r.ok and isinstance(r.extras.get("value"), dict) else None
            for r in results]
