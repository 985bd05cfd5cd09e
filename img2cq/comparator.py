"""A learned agreement: a small CNN that reads the input picture and a candidate's render side by
side and predicts the candidate's 3D IoU with the part in the picture.

The hand-made agreement (``img2cq.agreement``: silhouette IoU and edge chamfer) ranks one
picture's shortlist with a Spearman correlation of about 0.48 to the true 3D IoU: candidates of one
shortlist look alike, and which differences matter in 3D is not something a fixed formula knows.
This model learns it from sampler parts, whose true IoU the build workers measure:

- **pairs** (``generate_pairs``): query parts drawn from a sampler seed of their own; each query's
  candidates are what the search scores: parts of its library shortlist, and edits
  (``structured.mutate``) of its nearest part and of the query itself, as refinement makes them.
  Every candidate is built and rendered, and its IoU with the query measured by the project's
  metric. Resumable: a file per ``CHUNK`` queries. Or, with ``kind="variants"``, a near miss
  (what a short search keeps for the query's picture) and its single-number variants: a judge
  trained on those picked them no better than the hand-made agreement (docs/search.md).
- **model** (``Comparator``): both pictures' silhouette and edge masks plus the distance to the
  nearest edge of each, stacked as channels at ``agreement.RESOLUTION``, four strided
  convolutions, mean- and max-pooled, a small head; trained to regress the IoU
  (``scripts/train_comparator.py``). Given the hand-made comparison features beside the
  convolutions, or trained on the order of one query's candidates (a listwise loss), it learned
  nothing beyond the hand-made score; the plain regression did.

``LearnedAgreement.load()`` reads the shipped model (``models/agreement``: two such networks from
random starts of their own, trained on 8,000 and 6,000 sampler queries, their predictions
averaged; ``train_comparator.py --join`` made it from the two). The search ranks its
proposals by the mean of the predicted IoU and the hand-made agreement (``default_judge``); its
refinement keeps the hand-made agreement, which edits cannot fool as easily (measured:
``docs/search.md``).
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from img2cq import agreement, codec

log = logging.getLogger(__name__)

CHUNK = 25                   # queries per pair file
SHORTLIST_POOL = 64          # candidates are drawn from this many nearest library parts ...
FROM_SHORTLIST = 12          # ... this many of them (always the nearest)
EDITS_OF_NEAREST = 4         # edits of the nearest part (what refinement of a retrieved part tries)
EDITS_OF_QUERY = 4           # edits of the query itself (near-right candidates)
NEAR_MISS_SHORTLIST = 16     # variant groups: a query's near miss is the best of this many nearest parts ...
NEAR_MISS_REFINE_S = 1.0     # ... refined this long by the hand-made agreement ...
VARIANTS = 24                # ... and this many of its single-number variants are its candidates
MODEL_DIR = Path(__file__).resolve().parent.parent / "models" / "agreement"


# ----------------------------------------------------------------------------------------------
# Training pairs: sampler queries, their candidates, true IoU

def edited(sketches: list[codec.Sketch], rng: np.random.Generator) -> list[codec.Sketch]:
    """One to three successive random edits of a structure."""
    from img2cq.structured import mutate

    for _ in range(int(rng.integers(1, 4))):
        sketches = mutate(sketches, rng)
    return sketches


def query_candidates(query: list[codec.Sketch], shortlist: list[int], library,
                     rng: np.random.Generator) -> tuple[list[list[codec.Sketch]], list[int]]:
    """A query's candidate structures and their source codes (shortlist rank, or -1 for an edit of
    the nearest part, -2 for an edit of the query)."""
    ranks = [0] + sorted(rng.choice(np.arange(1, len(shortlist)), FROM_SHORTLIST - 1, replace=False).tolist())
    candidates = [library.sketches(shortlist[r]) for r in ranks]
    nearest = candidates[0]
    candidates += [edited(nearest, rng) for _ in range(EDITS_OF_NEAREST)]
    candidates += [edited(query, rng) for _ in range(EDITS_OF_QUERY)]
    return candidates, ranks + [-1] * EDITS_OF_NEAREST + [-2] * EDITS_OF_QUERY


def near_miss(pool, library, query_views: np.ndarray, thumb: np.ndarray, rng: np.random.Generator) -> list[codec.Sketch]:
    """What a short search keeps for a query's picture: the best of ``NEAR_MISS_SHORTLIST`` of its
    ``SHORTLIST_POOL`` nearest library parts (drawn: a sampler query's nearest parts are often
    near copies, a real part's are not) by the hand-made agreement, refined by it for
    ``NEAR_MISS_REFINE_S``: usually the right look and not quite the right part, as the search's
    kept parts are."""
    from img2cq.library import grey_features
    from img2cq.structured import refine, score_structures

    reference = agreement.Masks.from_reduced(*query_views)
    nearest = library.nearest_features(grey_features(thumb[None])[0], SHORTLIST_POOL)
    shortlist = [library.sketches(nearest[k]) for k in sorted(rng.choice(len(nearest), NEAR_MISS_SHORTLIST, replace=False))]
    scores = score_structures(shortlist, reference, pool)
    best = int(np.argmax(scores))
    return refine(shortlist[best], reference, pool, NEAR_MISS_REFINE_S, scores[best], seed=int(rng.integers(2**31)))[0]


def variant_candidates(start: list[codec.Sketch], rng: np.random.Generator) -> tuple[list[list[codec.Sketch]], list[int]]:
    """A near miss and ``VARIANTS`` of its single-number variants (``structured.number_variants``),
    drawn; source codes -3 for the near miss, -4 for a variant."""
    from img2cq.structured import number_variants

    variants = number_variants(start)
    drawn = [variants[k] for k in sorted(rng.choice(len(variants), min(VARIANTS, len(variants)), replace=False))]
    return [start] + drawn, [-3] + [-4] * len(drawn)


def pair_path(work: Path, seed: int, number: int) -> Path:
    return work / f"pairs-seed{seed}-{number:05d}.npz"


def chunk_pairs(pool, library, seed: int, number: int, kind: str = "shortlists") -> dict:
    """Pairs of the ``CHUNK`` queries of chunk ``number``: reference views (packed), candidate
    views (packed), the query of each candidate, its source code and its true IoU. ``kind``:
    "shortlists" (``query_candidates``: shortlist parts and edits) or "variants"
    (``variant_candidates``: a near miss and its number variants)."""
    from functools import partial

    from img2cq.build import structure_ious, structure_views
    from img2cq.library import draw_part, grey_features

    n = agreement.RESOLUTION
    references, views, query_of, sources, ious = [], [], [], [], []
    drawn = pool.map(draw_part, [(seed, number * CHUNK + q) for q in range(CHUNK)])
    for part in drawn:
        if part is None or part["reject"] is not None:
            continue
        rng = np.random.default_rng([seed, part["index"]])
        query = codec.from_tokens(part["tokens"].split())
        if kind == "variants":
            picture = agreement.unpack_views(part["views"], n)
            candidates, codes = variant_candidates(near_miss(pool, library, picture, part["thumb"], rng), rng)
        else:
            shortlist = library.nearest_features(grey_features(part["thumb"][None])[0], SHORTLIST_POOL)
            candidates, codes = query_candidates(query, shortlist, library, rng)
        rendered = pool.map(partial(structure_views, resolution=n), candidates)  # reduced in the workers
        halves = pool.map(structure_ious, [(query, candidates[k::2]) for k in range(2)])
        measured = [None] * len(candidates)
        for k, half in enumerate(halves):
            measured[k::2] = half or [None] * len(candidates[k::2])
        kept = [(v, c, iou) for v, c, iou in zip(rendered, codes, measured) if v is not None and iou is not None]
        if len(kept) < 2:
            continue
        references.append(part["views"])
        for packed, code, iou in kept:
            views.append(np.frombuffer(packed, np.uint8))
            query_of.append(len(references) - 1)
            sources.append(code)
            ious.append(iou)
    packed = 2 * n * n // 8
    return {"references": np.array(references, np.uint8).reshape(-1, packed),
            "views": np.array(views, np.uint8).reshape(-1, packed), "query_of": np.array(query_of, np.int32),
            "source": np.array(sources, np.int16), "iou": np.array(ious, np.float32)}


def generate_pairs(work: str | Path, queries: int, seed: int, library, workers: int = 2, progress: bool = True,
                   kind: str = "shortlists") -> None:
    """Write pair files of ``kind`` (``chunk_pairs``) for the first ``queries`` sampler draws of
    ``seed`` (resumes: chunks already written are skipped)."""
    from tqdm.auto import tqdm

    from img2cq.build import BuildPool

    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    todo = [c for c in range(-(-queries // CHUNK)) if not pair_path(work, seed, c).is_file()]
    if not todo:
        return
    with BuildPool(workers) as pool:
        for number in tqdm(todo, desc="comparator pairs", unit="chunk", disable=not progress):
            record = chunk_pairs(pool, library, seed, number, kind)
            path = pair_path(work, seed, number)
            np.savez(path.with_suffix(".tmp.npz"), **record)
            path.with_suffix(".tmp.npz").replace(path)  # a stopped run never leaves half a chunk
            log.info("chunk %d: %d queries, %d pairs, mean IoU %.3f", number, len(record["references"]),
                     len(record["iou"]), record["iou"].mean() if len(record["iou"]) else float("nan"))


def read_pairs(work: str | Path, seed: int) -> list[dict]:
    """Every pair file of ``seed`` in ``work``, in chunk order."""
    paths = sorted(Path(work).glob(f"pairs-seed{seed}-*.npz"))
    out = []
    for path in paths:
        if path.name.endswith(".tmp.npz"):
            continue
        with np.load(path) as data:
            out.append({k: data[k] for k in data.files})
    return out


# ----------------------------------------------------------------------------------------------
# The model: both pictures as channels, strided convolutions, a small head

DISTANCE_CLIP = 0.1          # distances to the nearest edge are clipped at 10 % of the frame


def picture_channels(silhouette: np.ndarray, edges: np.ndarray, edge_distance: np.ndarray) -> np.ndarray:
    """(3, n, n) uint8 channels of one framed picture: silhouette, edges, clipped edge distance."""
    distance = np.minimum(edge_distance / DISTANCE_CLIP, 1.0) * 255
    return np.stack([silhouette * 255, edges * 255, distance]).astype(np.uint8)


def masks_channels(masks: agreement.Masks) -> np.ndarray:
    return picture_channels(masks.silhouette, masks.edges, masks.edge_distance)


def candidate_channels(views: np.ndarray, resolution: int) -> np.ndarray:
    """Channels of a candidate's framed views."""
    return picture_channels(*agreement.reduced_views(views, resolution))


@dataclass
class ComparatorConfig:
    width: int = 16                              # channels of the first convolution
    resolution: int = agreement.RESOLUTION


def build_model(config: ComparatorConfig):
    import torch
    from torch import nn

    class Comparator(nn.Module):
        """Logit of the predicted 3D IoU of a (reference, candidate) pair of framed pictures."""

        def __init__(self, config: ComparatorConfig):
            super().__init__()
            w = config.width
            self.config = config
            self.convs = nn.Sequential(
                nn.Conv2d(6, w, 5, stride=2, padding=2), nn.ReLU(),
                nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.ReLU(),
                nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1), nn.ReLU(),
                nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1), nn.ReLU())
            self.head = nn.Sequential(nn.Linear(8 * w, 64), nn.ReLU(), nn.Linear(64, 1))

        def forward(self, reference: "torch.Tensor", candidate: "torch.Tensor"):
            """Logits for (B, 3, n, n) uint8 channels of the references and the candidates."""
            x = self.convs(torch.cat([reference, candidate], dim=1).float() / 255.0)
            return self.head(torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)).squeeze(-1)

    return Comparator(config)


def member_paths(path: Path) -> list[Path]:
    """A saved comparator's member weights, in member order."""
    return sorted(path.glob("member-*.pt"), key=lambda p: int(p.stem.split("-")[1]))


class LearnedAgreement:
    """The trained comparator, scoring candidates' renders against one reference picture: the mean
    predicted IoU of its members, networks trained alike from different random starts (``--members``
    of ``train_comparator.py``; two ranked held-out shortlists better than either alone)."""

    def __init__(self, members: list, card: dict | None = None):
        self.members, self.card = [m.eval() for m in members], card or {}

    @classmethod
    def load(cls, path: str | Path | None = None) -> "LearnedAgreement":
        import torch

        path = Path(path) if path is not None else MODEL_DIR
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"no comparator in {path} (config.json missing)")
        config = ComparatorConfig(**json.loads((path / "config.json").read_text()))
        members = []
        for weights in member_paths(path):
            members.append(build_model(config))
            members[-1].load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        if not members:
            raise FileNotFoundError(f"no comparator in {path} (no member-*.pt)")
        card = json.loads((path / "card.json").read_text()) if (path / "card.json").is_file() else {}
        return cls(members, card)

    def save(self, path: str | Path, card: dict) -> None:
        import torch

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.json").write_text(json.dumps(asdict(self.members[0].config), indent=1) + "\n")
        for stale in member_paths(path)[len(self.members):]:  # of a larger comparator saved there before
            stale.unlink()
        for k, member in enumerate(self.members):
            torch.save(member.state_dict(), path / f"member-{k}.pt")
        (path / "card.json").write_text(json.dumps(card, indent=1) + "\n")

    def scores(self, reference: agreement.Masks, views: list[np.ndarray | None]) -> list[float]:
        """Predicted IoU of each candidate's framed views (-inf where there is no render)."""
        return self.predict(reference, agreement.reduced_candidates(reference, views))

    def blended_scores(self, reference: agreement.Masks, views: list[np.ndarray | None]) -> list[float]:
        """The mean of the predicted IoU and the hand-made agreement (both 0-1, -inf for no render);
        each candidate's views are reduced once for both."""
        reduced = agreement.reduced_candidates(reference, views)
        hand = [-math.inf if r is None else agreement.agreement_of_reduced(reference, *r) for r in reduced]
        return [(a + b) / 2 for a, b in zip(self.predict(reference, reduced), hand)]

    def predicted_iou(self, reference_channels: np.ndarray, candidate_channels: np.ndarray) -> np.ndarray:
        """The members' mean predicted IoU for (B, 3, n, n) uint8 channels of pictures and candidates."""
        import torch

        reference, candidate = torch.from_numpy(reference_channels), torch.from_numpy(candidate_channels)
        with torch.no_grad():
            return torch.stack([torch.sigmoid(m(reference, candidate)) for m in self.members]).mean(0).numpy()

    def predict(self, reference: agreement.Masks, reduced: list[tuple | None]) -> list[float]:
        """Predicted IoU of each candidate's ``agreement.reduced_views`` (-inf for None)."""
        import torch

        present = [i for i, r in enumerate(reduced) if r is not None]
        out = [-math.inf] * len(reduced)
        if not present:
            return out
        channels = np.stack([picture_channels(*reduced[i]) for i in present])
        reference_channels = np.repeat(masks_channels(reference)[None], len(present), axis=0)
        for i, p in zip(present, self.predicted_iou(reference_channels, channels).tolist()):
            out[i] = p
        return out


# ----------------------------------------------------------------------------------------------
# Training data in memory, and how well a score ranks one query's candidates

@dataclass
class PairSet:
    """Pairs ready for the model: channels of each query's picture, of each candidate's render,
    the hand-made agreement of each pair, the query of each candidate, its source code and true IoU."""

    references: np.ndarray     # (Q, 3, n, n) uint8
    candidates: np.ndarray     # (P, 3, n, n) uint8
    hand: np.ndarray           # (P,) float32: agreement.agreement of the pair, to compare with
    query_of: np.ndarray       # (P,) int
    source: np.ndarray         # (P,) int: shortlist rank, -1 edit of the nearest part, -2 edit of the query,
                               # -3 a near miss, -4 its number variant
    iou: np.ndarray            # (P,) float32

    @classmethod
    def from_records(cls, records: list[dict], progress: bool = True) -> "PairSet":
        from tqdm.auto import tqdm

        n = agreement.RESOLUTION
        unpack = lambda packed: agreement.unpack_views(packed, n)  # noqa: E731
        references, candidates, hand, query_of, source, iou = [], [], [], [], [], []
        for record in tqdm(records, desc="preparing pairs", unit="file", disable=not progress):
            masks = [agreement.Masks.from_reduced(*unpack(r)) for r in record["references"]]
            for view, q in zip(record["views"], record["query_of"]):
                views = unpack(view)
                candidates.append(candidate_channels(views, n))
                hand.append(agreement.agreement(masks[q], views))
            query_of.append(record["query_of"] + len(references))
            references += [masks_channels(m) for m in masks]
            source.append(record["source"])
            iou.append(record["iou"])
        return cls(np.stack(references), np.stack(candidates), np.array(hand, np.float32),
                   np.concatenate(query_of), np.concatenate(source), np.concatenate(iou).astype(np.float32))

    def groups(self) -> list[np.ndarray]:
        """Pair indices of each query."""
        order = np.argsort(self.query_of, kind="stable")
        return np.split(order, np.flatnonzero(np.diff(self.query_of[order])) + 1)


def rank_quality(groups: list[tuple[np.ndarray, np.ndarray]]) -> tuple[float, float]:
    """(mean Spearman correlation of score with IoU within a query, mean IoU of the candidate
    each query keeps) over ``(scores, ious)`` groups."""
    from scipy.stats import spearmanr

    rhos, kept = [], []
    for scores, ious in groups:
        scores, ious = np.asarray(scores, float), np.asarray(ious, float)
        kept.append(ious[int(np.argmax(scores))])
        if ious.std() > 0 and scores.std() > 0:
            rhos.append(spearmanr(scores, ious).statistic)
    return float(np.mean(rhos)), float(np.mean(kept))


_default_judge = None


def default_judge():
    """The search's judge of proposals: the shipped learned agreement blended with the hand-made
    one (``blended_scores``, loaded once per process; it ranks shortlists best,
    ``benchmarks/bench_rerank.py``), or the hand-made ``agreement.agreements`` where no comparator
    is shipped."""
    global _default_judge
    if _default_judge is None:
        try:
            _default_judge = LearnedAgreement.load().blended_scores
        except FileNotFoundError:
            _default_judge = agreement.agreements
    return _default_judge
