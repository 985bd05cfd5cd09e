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

from img2cq.framing import INK_THRESHOLD, darkest_channel, frame_silhouette, framed_crop, ink_box, on_white

FRAME = 448                  # pictures are framed at the dataset's size, then reduced to RESOLUTION
RESOLUTION = 112             # agreement resolution (compared in benchmarks/bench_rerank.py)
EDGE_WEIGHT = 0.5            # agreement = (1 - EDGE_WEIGHT) * silhouette IoU + EDGE_WEIGHT * edge similarity
EDGE_SCALE = 0.02            # chamfer distance (fraction of the frame) at which edge similarity is 1/e
EDGE_THRESHOLD = 64          # darker than this: a drawn edge (edges are black, faces grey 141)
RIDGE_MARGIN = 16            # a blurred edge line: this much darker than the faces, and than its neighbours across it
BLURRED_INK_THRESHOLD = 220  # a blurred picture's part: darker than this (INK_THRESHOLD takes in its blurred rim)


# ----------------------------------------------------------------------------------------------
# Views: framed silhouette and edge masks of a picture

def framed_grey(pixels: np.ndarray) -> np.ndarray:
    """(FRAME, FRAME) uint8: an RGB picture framed, each pixel its darkest channel."""
    return darkest_channel(np.asarray(frame_silhouette(Image.fromarray(pixels), size=FRAME)))


def views_from_grey(framed: np.ndarray) -> np.ndarray:
    """(2, FRAME, FRAME) bool: silhouette and edge masks of a framed grey picture."""
    return np.stack([framed < INK_THRESHOLD, framed < EDGE_THRESHOLD])


def views_from_pixels(pixels: np.ndarray) -> np.ndarray:
    """(2, FRAME, FRAME) bool: silhouette and edge masks of an RGB picture after framing."""
    return views_from_grey(framed_grey(pixels))


def views_from_image(image: Image.Image) -> np.ndarray:
    """(2, FRAME, FRAME) bool views of a user's picture, whose edge lines may be thinner or lighter
    than a render's. A part drawn larger than the frame (its silhouette over FRAME px long) has its
    edges found at the picture's own size, each framed pixel an edge where any of its pixels is
    (shrunk, a one- or two-pixel line would be averaged with the faces into grey). Where its lines
    are blurred already (twice as many of its pixels grey between the edges' black and the faces'
    grey as black: a 224 px copy of a 448 px render), its edges are found as dark ridges, and its
    silhouette's rim, pixels mostly background, is left out. A render is neither: its views are as
    rendered."""
    picture = on_white(image)
    box = ink_box(picture)
    framed = darkest_channel(np.asarray(framed_crop(picture, box, FRAME)))  # as framed_grey, on_white once
    views = views_from_grey(framed)
    grey = darkest_channel(np.asarray(picture))
    if box is not None and max(box[2] - box[0], box[3] - box[1]) > FRAME:
        edges = Image.fromarray(np.where(grey < EDGE_THRESHOLD, 255, 0).astype(np.uint8))
        views[1] |= np.asarray(framed_crop(edges, box, FRAME, resample=Image.Resampling.BOX, background=0)) > 0
        return views
    faces = grey[(grey >= EDGE_THRESHOLD) & (grey < INK_THRESHOLD)]
    if faces.size:
        face = int(np.bincount(faces).argmax())
        if np.count_nonzero(faces <= face - RIDGE_MARGIN) > 2 * np.count_nonzero(grey < EDGE_THRESHOLD):
            views[0] = framed < BLURRED_INK_THRESHOLD
            views[1] |= dark_ridges(framed, face) & views[0]
    return views


def dark_ridges(framed: np.ndarray, face: int) -> np.ndarray:
    """(FRAME, FRAME) bool: pixels at least ``RIDGE_MARGIN`` darker than the faces' grey ``face``
    and no lighter than their two neighbours across some direction: the middle of a blurred line."""
    n = framed.shape[0]
    padded = np.pad(framed, 1, mode="edge")
    ridge = np.zeros((n, n), bool)
    for (r0, c0), (r1, c1) in (((1, 0), (1, 2)), ((0, 1), (2, 1)), ((0, 0), (2, 2)), ((0, 2), (2, 0))):
        ridge |= (framed <= padded[r0:r0 + n, c0:c0 + n]) & (framed <= padded[r1:r1 + n, c1:c1 + n])
    return ridge & (framed.astype(np.int16) <= face - RIDGE_MARGIN)


def pack_views(views: np.ndarray) -> bytes:
    return np.packbits(views).tobytes()


def unpack_views(data: bytes, size: int = FRAME) -> np.ndarray:
    """(2, size, size) views of ``pack_views``' bytes: framed (FRAME) or reduced to a judge's resolution."""
    return np.unpackbits(np.frombuffer(data, np.uint8))[:2 * size * size].reshape(2, size, size).astype(bool)


def render_views(shape, resolution: int = FRAME) -> dict:
    """Executor postprocess (runs in the sandbox): the shape rendered in the dataset style, as
    packed framed views (``{"views": bytes}``, 50 KB instead of a 600 KB picture); reduced to
    ``resolution`` (``reduce_views``) where a judge reads no more (3 KB at 112 px)."""
    from img2cq.render import render_array

    views = views_from_pixels(render_array(shape, size=FRAME))
    if resolution != FRAME:
        views = np.stack(reduce_views(views, resolution))
    return {"views": pack_views(views)}


def reduce_views(views: np.ndarray, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """Silhouette (majority of each block) and edges (any pixel of each block) at ``resolution``
    (views already at ``resolution`` are returned as they are)."""
    if views.shape[-1] == resolution:
        return views[0], views[1]
    if FRAME % resolution:
        raise ValueError(f"resolution must divide {FRAME}, got {resolution}")
    f = FRAME // resolution
    blocks = views.reshape(2, resolution, f, resolution, f)
    return blocks[0].mean(axis=(1, 3)) > 0.5, blocks[1].any(axis=(1, 3))


@dataclass
class Masks:
    """One framed picture at ``RESOLUTION``: silhouette, edges and outline masks, the distance
    transforms of edges and outline (fractions of the frame), a coarse grey picture, the log aspect
    of the silhouette's box: what comparing two pictures needs, computed once per picture."""

    silhouette: np.ndarray
    edges: np.ndarray
    edge_distance: np.ndarray
    outline: np.ndarray
    outline_distance: np.ndarray
    grey: np.ndarray
    aspect: float

    @classmethod
    def from_reduced(cls, silhouette: np.ndarray, edges: np.ndarray) -> "Masks":
        from scipy.ndimage import binary_erosion, distance_transform_edt

        n = silhouette.shape[0]
        outline = silhouette & ~binary_erosion(silhouette)
        shade = np.where(edges, 0.0, np.where(silhouette, 141.0, 255.0))
        grey = shade.reshape(n // 4, 4, n // 4, 4).mean(axis=(1, 3)) / 255.0
        rows, cols = np.flatnonzero(silhouette.any(axis=1)), np.flatnonzero(silhouette.any(axis=0))
        aspect = math.log((rows[-1] - rows[0] + 1) / (cols[-1] - cols[0] + 1)) if len(rows) else 0.0
        return cls(silhouette, edges, distance_transform_edt(~edges) / n, outline, distance_transform_edt(~outline) / n,
                   grey, aspect)

    @classmethod
    def from_views(cls, views: np.ndarray, resolution: int = RESOLUTION) -> "Masks":
        return cls.from_reduced(*reduce_views(views, resolution))


FEATURES = ("silhouette_iou", "silhouette_iou_coarse", "edges_to_reference", "edges_to_candidate",
            "outline_to_reference", "outline_to_candidate", "edge_similarity", "area_ratio", "edge_ratio",
            "grey_distance", "aspect_difference")


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def _mean_distance(distance: np.ndarray, mask: np.ndarray) -> float:
    return float(distance[mask].mean()) if mask.any() else 1.0


def comparison(reference: Masks, candidate: Masks) -> np.ndarray:
    """The ``FEATURES`` of a candidate's picture against the reference's."""
    coarse = lambda m: m.reshape(m.shape[0] // 4, 4, m.shape[1] // 4, 4).mean(axis=(1, 3)) > 0.5
    to_reference = _mean_distance(reference.edge_distance, candidate.edges)
    to_candidate = _mean_distance(candidate.edge_distance, reference.edges)
    log_ratio = lambda a, b: abs(math.log((a.sum() + 1) / (b.sum() + 1)))
    return np.array([
        _iou(reference.silhouette, candidate.silhouette), _iou(coarse(reference.silhouette), coarse(candidate.silhouette)),
        to_reference, to_candidate,
        _mean_distance(reference.outline_distance, candidate.outline),
        _mean_distance(candidate.outline_distance, reference.outline),
        math.exp(-(to_reference + to_candidate) / 2 / EDGE_SCALE),
        log_ratio(reference.silhouette, candidate.silhouette), log_ratio(reference.edges, candidate.edges),
        float(np.sqrt(((reference.grey - candidate.grey) ** 2).mean())), abs(reference.aspect - candidate.aspect)])


def score_features(features: np.ndarray) -> float:
    """Agreement from comparison features: silhouette IoU and edge similarity, mixed by EDGE_WEIGHT
    (fitted combinations of all ``FEATURES`` did no better: ``benchmarks/bench_agreement.py``)."""
    return float((1 - EDGE_WEIGHT) * features[0] + EDGE_WEIGHT * features[6])


def reduced_views(views: np.ndarray, resolution: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A candidate's framed views at ``resolution``: silhouette, edges and the distance to the nearest
    edge (in picture widths): what every judge reads of a candidate, computed once."""
    from scipy.ndimage import distance_transform_edt

    silhouette, edges = reduce_views(views, resolution)
    return silhouette, edges, distance_transform_edt(~edges) / resolution


def reduced_candidates(reference: Masks, views: list[np.ndarray | None]) -> list[tuple | None]:
    """``reduced_views`` of each candidate at the reference's resolution (None where there is no render)."""
    n = reference.silhouette.shape[0]
    return [None if v is None else reduced_views(v, n) for v in views]


def agreement_of_reduced(reference: Masks, silhouette: np.ndarray, edges: np.ndarray, edge_distance: np.ndarray) -> float:
    """``agreement`` of a candidate's ``reduced_views``."""
    to_reference = _mean_distance(reference.edge_distance, edges)
    to_candidate = _mean_distance(edge_distance, reference.edges)
    features = np.zeros(len(FEATURES))
    features[0] = _iou(reference.silhouette, silhouette)
    features[6] = math.exp(-(to_reference + to_candidate) / 2 / EDGE_SCALE)
    return score_features(features)


def agreement(reference: Masks, views: np.ndarray | None) -> float:
    """How well a candidate's framed render (``views``) matches the reference; -inf for no render.
    ``score_features`` of its ``comparison``, computing only the two features the mix uses."""
    if views is None:
        return -math.inf
    return agreement_of_reduced(reference, *reduced_views(views, reference.silhouette.shape[0]))


def agreements(reference: Masks, views: list[np.ndarray | None]) -> list[float]:
    """The hand-made ``agreement`` of each candidate's framed views. A *judge*: the search scores
    candidates with any function of this signature (the learned one: ``img2cq.comparator``)."""
    return [agreement(reference, v) for v in views]


def render_programs(programs: list[str], executor) -> list[np.ndarray | None]:
    """Framed views of each program's render (None where it does not build), in parallel."""
    results = executor.map(programs, mesh=False, postprocess="img2cq.agreement:render_views")
    return [unpack_views(r.extras["value"]["views"]) if r.ok and isinstance(r.extras.get("value"), dict) else None
            for r in results]
