"""The part library: sampler parts stored as codec tokens with the features of their pictures.

Retrieval is the strongest single source of proposals on real pictures, and it grows with the
library (about +0.05 IoU per 4x more parts), so the project ships a large one. It is made by one
resumable command (``scripts/build_library.py``) in two stages:

1. **draw** (``build_chunks``): sampler parts are drawn, parsed into codec structures (the
   sampler's own output, never a model's or a user's text), built by ``img2cq.build`` in
   long-lived workers, checked (``data.reject_reason``), rendered in the dataset's style and reduced
   to the thumbnail retrieval features are made from; ``CHUNK`` draws per file under a work folder, so a
   stopped build resumes at the next chunk.
2. **pack** (``pack_library``): duplicates (same geometry) and parts whose program is in a held-out
   split are dropped, and the shipped artefact is written: token ids and features in files of at
   most ``MAX_SHARD_BYTES`` plus a card saying how it was made.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from img2cq import codec

log = logging.getLogger(__name__)

CHUNK = 1000                 # draws per work file
THUMB = 64                   # stored thumbnail: the framed 448 px picture averaged in 7 x 7 blocks
DEFAULT_SEED = 2026          # library draws: a stream of their own (the test split is seed 1000)


def picture_thumbnail(framed_grey: np.ndarray, size: int = THUMB) -> np.ndarray:
    """(size, size) uint8 block average of a framed grey picture whose side is a multiple of size."""
    f = framed_grey.shape[0] // size
    return framed_grey.reshape(size, f, size, f).mean(axis=(1, 3)).round().astype(np.uint8)


def built_draw(seed: int, index: int):
    """(codec structure, shape, reject reason) of sampler draw ``index`` of ``seed``, built by the
    trusted path (the sampler's own program, never model-written or user text) and checked as the
    dataset's parts are; shape is None where it did not build."""
    from img2cq.build import build_shape, result_shape
    from img2cq.data import draw_rng, reject_reason
    from img2cq.sampler import sample_program

    sketches = codec.parse(sample_program(draw_rng(seed, "train", index)))
    try:
        shape = result_shape(build_shape(sketches, seams=True))
        reason = None if shape.isValid() else "invalid"
        return sketches, shape, reason or reject_reason(shape)
    except Exception as e:  # noqa: BLE001 - OCC raises many kinds for a part that does not build
        return sketches, None, f"build_{type(e).__name__}"


def shape_signature(shape) -> str:
    """``data.geometry_signature`` of a built shape (de-duplication by geometry)."""
    import cadquery as cq

    from img2cq.data import geometry_signature

    return geometry_signature(shape.Volume(), np.asarray(cq.Shape.matrixOfInertia(shape)))


def draw_part(job: tuple[int, int]) -> dict:
    """Worker job: sampler draw ``index`` of ``seed`` built, checked and rendered.

    Returns {"index", "reject"} for a draw that fails a check, else also "tokens" (codec tokens,
    space-joined), "signature" (geometry), "thumb" (THUMB^2 uint8) and "views" (packed agreement
    views at ``agreement.RESOLUTION``)."""
    from img2cq.agreement import FRAME, RESOLUTION, framed_grey, reduce_views, views_from_grey
    from img2cq.render import render_array

    seed, index = job
    sketches, shape, reason = built_draw(seed, index)
    if reason:
        return {"index": index, "reject": reason}
    framed = framed_grey(render_array(shape, size=FRAME))
    silhouette, edges = reduce_views(views_from_grey(framed), RESOLUTION)
    return {"index": index, "reject": None, "tokens": " ".join(codec.to_tokens(sketches)),
            "signature": shape_signature(shape),
            "thumb": picture_thumbnail(framed), "views": np.packbits(np.stack([silhouette, edges]))}


def draw_picture(job: tuple[int, int]) -> dict:
    """Worker job: sampler draw ``index`` of ``seed`` as a training sample: {"index", "reject"}, and for
    a draw that passes the checks "cadquery" (its program), "signature" (geometry) and "picture" (the
    dataset-style render, RGB uint8)."""
    from img2cq.agreement import FRAME
    from img2cq.render import render_array

    seed, index = job
    sketches, shape, reason = built_draw(seed, index)
    if reason:
        return {"index": index, "reject": reason}
    return {"index": index, "reject": None, "cadquery": codec.to_program(sketches),
            "signature": shape_signature(shape),
            "picture": render_array(shape, size=FRAME)}


def stream_built_samples(seed: int, workers: int = 2, start: int = 0, batch: int | None = None) -> Iterator[dict]:
    """``data.stream_samples(seed, workers, start=start)``'s endless samples {"id", "index", "cadquery",
    "image"}: the same draws, programs and pictures, built and rendered by ``draw_picture`` in a
    ``BuildPool`` instead of a sandbox child per program (they are the sampler's own programs, never
    model-written or user text), de-duplicated by geometry as that stream is."""
    from PIL import Image

    from img2cq.build import BuildPool
    from img2cq.data import sample_id

    batch = batch or 8 * workers
    seen: set = set()
    with BuildPool(workers) as pool:
        index = start
        while True:
            for rec in pool.map(draw_picture, [(seed, i) for i in range(index, index + batch)]):
                if rec is None or rec["reject"] is not None or rec["signature"] in seen:
                    continue
                seen.add(rec["signature"])
                yield {"id": sample_id(seed, "train", rec["index"]), "index": rec["index"], "cadquery": rec["cadquery"],
                       "image": Image.fromarray(rec["picture"])}
            index += batch


def redraw_part(job: tuple[int, int, str | None]) -> dict:
    """Worker job of a refresh: ``draw_part`` again unless draw ``index`` of ``seed`` still samples
    the program it had (``stored``: its codec tokens, None for a draw rejected before)."""
    from img2cq.data import draw_rng
    from img2cq.sampler import sample_program

    seed, index, stored = job
    tokens = " ".join(codec.to_tokens(codec.parse(sample_program(draw_rng(seed, "train", index)))))
    return {"index": index, "unchanged": True} if tokens == stored else draw_part((seed, index))


def chunk_path(work: Path, seed: int, number: int) -> Path:
    return work / f"seed{seed}-chunk{number:05d}.npz"


def write_chunk(path: Path, records: list[dict]) -> None:
    """One work file (written to a temporary name, then renamed: a stopped build leaves no half file)."""
    kept = [r for r in records if r["reject"] is None]
    rejected: dict[str, int] = {}
    for r in records:
        if r["reject"] is not None:
            rejected[r["reject"]] = rejected.get(r["reject"], 0) + 1
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, index=np.array([r["index"] for r in kept], np.int64),
             tokens=np.array([r["tokens"] for r in kept]), signature=np.array([r["signature"] for r in kept]),
             thumb=np.stack([r["thumb"] for r in kept]) if kept else np.zeros((0, THUMB, THUMB), np.uint8),
             draws=np.array(len(records)), rejected=np.array(json.dumps(rejected)))
    tmp.rename(path)


def finished_chunk_paths(work: Path, seed: int) -> list[Path]:
    """The paths of a build's finished work files, in draw order."""
    paths = []
    while chunk_path(work, seed, len(paths)).is_file():
        paths.append(chunk_path(work, seed, len(paths)))
    return paths


def read_chunks(work: Path, seed: int) -> list[dict]:
    """The finished work files of a build, in draw order."""
    chunks = []
    for path in finished_chunk_paths(work, seed):
        with np.load(path, allow_pickle=False) as data:
            chunks.append({k: data[k] for k in data.files})
    return chunks


_dask_pool = None


def draw_parts_here(jobs: list[tuple[int, int]]) -> list[dict | None]:
    """``draw_part`` for each job on this process's long-lived build pool (a Dask task of
    ``build_chunks(cluster=...)``; each Dask worker process keeps its own pool)."""
    global _dask_pool
    from img2cq.build import BuildPool

    if _dask_pool is None:
        _dask_pool = BuildPool(1)
    return _dask_pool.map(draw_part, jobs)


def build_chunks(work: str | Path, parts: int, seed: int = DEFAULT_SEED, workers: int = 2,
                 progress: bool = True, chunk: int = CHUNK, cluster: str | None = None) -> int:
    """Draw chunks until the work folder holds at least ``parts`` distinct parts (by geometry
    signature; ``pack_library`` drops the duplicates); resumable. Returns the number of distinct parts.
    ``cluster``: a Dask scheduler address ("local": a cluster of ``workers`` processes here, "auto":
    $DASK_SCHEDULER_ADDRESS); each chunk is split over its workers."""
    from contextlib import ExitStack

    from tqdm.auto import tqdm

    from img2cq.build import BuildPool

    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    settings_path, settings = work / "build.json", {"seed": seed, "chunk": chunk}
    if settings_path.is_file() and json.loads(settings_path.read_text()) != settings:
        raise ValueError(f"{work} holds a build with {settings_path.read_text().strip()}; "
                         f"resume it with the same seed and chunk, or use another work folder")
    settings_path.write_text(json.dumps(settings))
    done = read_chunks(work, seed)
    seen = {str(signature) for c in done for signature in c["signature"]}
    accepted = len(seen)
    bar = tqdm(total=parts, initial=min(accepted, parts), desc=f"drawing library parts (seed {seed})", unit="part",
               disable=not progress, smoothing=0.05)
    number = len(done)
    with ExitStack() as stack:
        if cluster is None:
            pool = stack.enter_context(BuildPool(workers))
            draw = lambda jobs: pool.map(draw_part, jobs)
        else:
            from img2cq.sandbox.cluster import connect

            client = stack.enter_context(connect(cluster, workers=workers)).client
            pieces = max(1, sum(w["nthreads"] for w in client.scheduler_info()["workers"].values()))
            draw = lambda jobs: [r for f in client.map(draw_parts_here, [jobs[k::pieces] for k in range(pieces)], pure=False)
                                 for r in f.result()]
        while accepted < parts:
            jobs = [(seed, number * chunk + i) for i in range(chunk)]
            by_index = {r["index"]: r for r in draw(jobs) if r is not None}
            records = [by_index.get(index, {"index": index, "reject": "worker"}) for _, index in jobs]
            write_chunk(chunk_path(work, seed, number), records)
            kept = sum(r["reject"] is None for r in records)
            seen.update(r["signature"] for r in records if r["reject"] is None)
            bar.update(len(seen) - accepted)
            accepted = len(seen)
            log.info("chunk %d: %d of %d draws accepted, %d distinct parts in all", number, kept, chunk, accepted)
            number += 1
    bar.close()
    return accepted


def refresh_chunks(work: str | Path, seed: int = DEFAULT_SEED, workers: int = 2, progress: bool = True) -> dict:
    """Bring a build's finished work files up to the current sampler and part checks, after a change
    to either: a draw that still samples its stored program keeps its record (the renderer is
    assumed unchanged), every other one (a changed program, or a draw rejected before) is built
    again, so a change that touches a sixth of the draws costs a sixth of a build. Resumable: a
    refreshed chunk costs only its rejected draws again. Returns how many draws were kept, how many
    built again and how many of those were accepted."""
    from tqdm.auto import tqdm

    from img2cq.build import BuildPool

    work = Path(work)
    counts = {"kept": 0, "rebuilt": 0, "rebuilt_accepted": 0}
    if not (work / "build.json").is_file():  # a new work folder: nothing drawn yet, nothing to refresh
        return counts
    chunk = json.loads((work / "build.json").read_text())["chunk"]
    with BuildPool(workers) as pool:
        for number, path in enumerate(tqdm(finished_chunk_paths(work, seed), desc=f"refreshing library draws (seed {seed})", unit="chunk",
                                           disable=not progress)):
            with np.load(path, allow_pickle=False) as data:
                stored = {int(i): (str(t), str(g), th) for i, t, g, th in
                          zip(data["index"], data["tokens"], data["signature"], data["thumb"])}
                indices = range(number * chunk, number * chunk + int(data["draws"]))
            results = pool.map(redraw_part, [(seed, i, stored[i][0] if i in stored else None) for i in indices])
            records, rebuilt = [], 0
            for index, result in zip(indices, results):
                if result is not None and result.get("unchanged"):
                    tokens, signature, thumb = stored[index]
                    records.append({"index": index, "reject": None, "tokens": tokens, "signature": signature, "thumb": thumb})
                else:
                    records.append(result or {"index": index, "reject": "worker"})
                    rebuilt += 1
                    counts["rebuilt_accepted"] += records[-1]["reject"] is None
            write_chunk(path, records)
            counts["kept"] += len(records) - rebuilt
            counts["rebuilt"] += rebuilt
            log.info("refreshed chunk %d: %d draws kept, %d built again", number, len(records) - rebuilt, rebuilt)
    return counts


# ----------------------------------------------------------------------------------------------
# Retrieval features and the shipped artefact

FEATURE_SIDE = 32            # retrieval looks at the framed picture averaged down to 32 x 32
FEATURE_DIMS = 64            # ... projected on its first principal components (fitted on library parts)
NEAREST_MARGIN = 32          # parts per lookup kept by the fast float32 pass, re-ordered exactly
MAX_SHARD_BYTES = 14 << 20   # every shipped file stays under 15 MiB
LIBRARY_DIR = Path(__file__).resolve().parent.parent / "models" / "part-library"


def grey_features(thumbs: np.ndarray, side: int = FEATURE_SIDE) -> np.ndarray:
    """(N, side^2) float32 in [0, 1]: stored THUMB thumbnails averaged down to ``side``."""
    thumbs = np.asarray(thumbs, np.float32).reshape(len(thumbs), THUMB, THUMB)
    f = THUMB // side
    return thumbs.reshape(len(thumbs), side, f, side, f).mean(axis=(2, 4)).reshape(len(thumbs), -1) / 255.0


def picture_features(image) -> np.ndarray:
    """(FEATURE_SIDE^2,) float32 grey features of any picture (PIL image), framed as the library's."""
    from img2cq.agreement import framed_grey

    return grey_features(picture_thumbnail(framed_grey(np.asarray(image.convert("RGB"))))[None])[0]


def fit_projection(features: np.ndarray, dims: int, sample: int = 20000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(mean, components): PCA of a random sample of library features (never of evaluation pictures)."""
    rng = np.random.default_rng(seed)
    rows = features[rng.choice(len(features), min(sample, len(features)), replace=False)]
    mean = rows.mean(axis=0)
    _, _, vt = np.linalg.svd(rows - mean, full_matrices=False)
    return mean.astype(np.float32), vt[:dims].astype(np.float32)


_TOKENS = codec.KEYWORDS + codec.NUMBERS   # token id -> token string
_VOCAB = {t: i for i, t in enumerate(_TOKENS)}


def encode_tokens(token_strings: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(ids uint16, offsets int64): every part's codec tokens, concatenated."""
    parts = [[_VOCAB[t] for t in s.split()] for s in token_strings]
    offsets = np.cumsum([0] + [len(p) for p in parts]).astype(np.int64)
    return np.fromiter((i for p in parts for i in p), np.uint16, int(offsets[-1])), offsets


class PartLibrary:
    """Codec parts and their retrieval features. ``nearest(image, k)`` gives the indices of the k
    parts whose pictures look most like ``image``; ``sketches(i)`` / ``program(i)`` give a part."""

    def __init__(self, ids: np.ndarray, offsets: np.ndarray, features: np.ndarray, mean: np.ndarray,
                 components: np.ndarray, card: dict):
        self.ids, self.offsets, self.card = ids, offsets, card
        self.features = np.asarray(features, np.float32)
        self.mean, self.components = mean, components
        self._norms = (self.features ** 2).sum(axis=1)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def tokens(self, i: int) -> list[str]:
        return [_TOKENS[t] for t in self.ids[self.offsets[i]:self.offsets[i + 1]]]

    def sketches(self, i: int) -> list[codec.Sketch]:
        return codec.from_tokens(self.tokens(i))

    def program(self, i: int) -> str:
        return codec.to_program(self.sketches(i))

    def project(self, features: np.ndarray) -> np.ndarray:
        return (np.asarray(features, np.float64) - self.mean) @ self.components.T.astype(np.float64)

    def nearest(self, image, k: int) -> list[int]:
        """Indices of the k parts nearest to ``image`` in feature space, nearest first."""
        return self.nearest_features(picture_features(image), k)

    def nearest_features(self, features: np.ndarray, k: int) -> list[int]:
        """Indices of the k parts nearest to a picture's ``picture_features``, nearest first."""
        return [int(i) for i in self._nearest_rows(self.project(features)[None], k)[0]]

    def nearest_each(self, features: np.ndarray, block: int = 256) -> np.ndarray:
        """(B,) the nearest part to each row of (B, n) ``picture_features``: one pass over the library
        per block of rows instead of one per picture."""
        projected = self.project(features)
        return np.concatenate([self.nearest_projected(projected[start:start + block])
                               for start in range(0, len(projected), block)] or [np.zeros(0, np.int64)])

    def nearest_projected(self, projected: np.ndarray, exclude: np.ndarray | None = None) -> np.ndarray:
        """(B,) the nearest part to each row of (B, dims) features already in the library's space;
        part ``exclude[i]`` is never row i's answer (a library part's nearest *other* part)."""
        return self._nearest_rows(np.asarray(projected, np.float64), 1, exclude)[:, 0]

    def _nearest_rows(self, projected: np.ndarray, k: int, exclude: np.ndarray | None = None) -> np.ndarray:
        """(B, k) parts nearest to each row of ``projected``, nearest first: the one distance every
        lookup uses. A float32 pass over the whole library keeps ``k + NEAREST_MARGIN`` parts per
        row; their squared distances in float64 decide the order (ties: the lower index), so a
        picture gets the same parts alone or in a batch."""
        rows = np.arange(len(projected))
        approximate = self._norms[None, :] - 2 * projected.astype(np.float32) @ self.features.T
        if exclude is not None:
            approximate[rows, exclude] = np.inf
        k = min(k, len(self) - (exclude is not None))
        pool = min(k + NEAREST_MARGIN, len(self))
        kept = np.argpartition(approximate, pool - 1, axis=1)[:, :pool] if pool < len(self) \
            else np.broadcast_to(np.arange(len(self)), (len(projected), len(self)))
        distance = ((self.features[kept].astype(np.float64) - projected[:, None, :]) ** 2).sum(axis=2)
        if exclude is not None:
            distance[kept == np.asarray(exclude)[:, None]] = np.inf
        order = np.lexsort((kept, distance), axis=1)[:, :k]
        return np.take_along_axis(kept, order, axis=1)

    @classmethod
    def from_features(cls, tokens: list[str], features: np.ndarray, card: dict, dims: int = FEATURE_DIMS) -> "PartLibrary":
        """A library of parts (space-joined codec tokens) and the ``picture_features`` of their
        pictures, projected on the principal components of those features."""
        mean, components = fit_projection(features, dims)
        ids, offsets = encode_tokens(tokens)
        return cls(ids, offsets, (features - mean) @ components.T, mean, components, card)

    @classmethod
    def from_pictures(cls, images, programs: list[str], card: dict, dims: int = FEATURE_DIMS) -> "PartLibrary":
        """A library of the given pictures and their programs (those the codec reads; the others
        are left out and counted in the card)."""
        tokens, features = [], []
        for image, program in zip(images, programs):
            try:
                tokens.append(" ".join(codec.to_tokens(codec.parse(program))))
            except codec.CodecError:
                continue
            features.append(picture_features(image))
        if not tokens:
            raise ValueError("no picture with a program the codec reads: nothing to retrieve")
        card = {**card, "parts": len(tokens), "outside_codec": len(programs) - len(tokens)}
        return cls.from_features(tokens, np.stack(features), card, dims)

    @classmethod
    def from_split(cls, split: str | Path, progress: bool = True) -> "PartLibrary":
        """The library of a split's pictures, saved beside it (``<split>.library/``) and reused
        while the split is unchanged."""
        from tqdm.auto import tqdm

        from img2cq.data import load_split

        split = Path(split)
        if not split.is_file():
            raise FileNotFoundError(f"no split at {split} (its pictures and programs make the library)")
        cached = split.with_name(split.stem + ".library")
        source = {"split": split.name, "bytes": split.stat().st_size}
        if (cached / "card.json").is_file():
            library = cls.load(cached)
            if library.card.get("source") == source:
                return library
        rows = load_split(split)
        images = (row["image"] for row in tqdm(rows, desc=f"indexing {split.name}", unit="img", disable=not progress))
        library = cls.from_pictures(images, list(rows["cadquery"]), {"source": source})
        library.save(cached)
        return library

    def save(self, out: str | Path) -> list[Path]:
        """Shard files of at most MAX_SHARD_BYTES each, plus ``card.json``; returns the files written."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        for old in out.glob("parts-*.npz"):
            old.unlink()
        per_part = self.features.shape[1] * 2 + 2 * (len(self.ids) / max(len(self), 1)) + 8
        step = max(1, int(MAX_SHARD_BYTES / per_part))
        written = []
        for number, start in enumerate(range(0, len(self), step)):
            end = min(start + step, len(self))
            path = out / f"parts-{number:03d}.npz"
            np.savez_compressed(path, ids=self.ids[self.offsets[start]:self.offsets[end]],
                                lengths=np.diff(self.offsets[start:end + 1]).astype(np.uint16),
                                features=self.features[start:end].astype(np.float16))
            written.append(path)
        np.savez(out / "projection.npz", mean=self.mean, components=self.components)
        (out / "card.json").write_text(json.dumps({**self.card, "parts": len(self), "shards": len(written)}, indent=2))
        return written + [out / "projection.npz", out / "card.json"]

    @classmethod
    def load(cls, path: str | Path | None = None) -> "PartLibrary":
        """The library saved at ``path`` (None: the shipped one, ``LIBRARY_DIR``)."""
        path = Path(path or LIBRARY_DIR)
        if not (path / "card.json").is_file():
            raise FileNotFoundError(f"no part library at {path} (build one with scripts/build_library.py)")
        card = json.loads((path / "card.json").read_text())
        ids, lengths, features = [], [], []
        for number in range(card["shards"]):
            with np.load(path / f"parts-{number:03d}.npz", allow_pickle=False) as data:
                ids.append(data["ids"])
                lengths.append(data["lengths"])
                features.append(data["features"])
        with np.load(path / "projection.npz", allow_pickle=False) as data:
            mean, components = data["mean"], data["components"]
        offsets = np.concatenate([[0], np.cumsum(np.concatenate(lengths).astype(np.int64))])
        return cls(np.concatenate(ids), offsets, np.concatenate(features), mean, components, card)


def distinct_parts(work: str | Path, parts: int, seed: int = DEFAULT_SEED,
                   exclude_programs: set[str] = frozenset()) -> tuple[list[str], np.ndarray, dict]:
    """(token strings, thumbnails, counts) of the first ``parts`` distinct parts of a build's work
    files: duplicates (same geometry signature) and parts whose canonical program is in
    ``exclude_programs`` (a held-out split's) are dropped."""
    seen: set[str] = set()
    tokens, thumbs = [], []
    counts = {"draws_read": 0, "rejected": {}, "duplicates": 0, "excluded_held_out": 0}
    for chunk in read_chunks(Path(work), seed):
        if len(tokens) >= parts:
            break
        counts["draws_read"] += int(chunk["draws"])
        for reason, count in json.loads(str(chunk["rejected"])).items():
            counts["rejected"][reason] = counts["rejected"].get(reason, 0) + count
        for token_string, signature, thumb in zip(chunk["tokens"], chunk["signature"], chunk["thumb"]):
            if len(tokens) >= parts:
                break
            if signature in seen:
                counts["duplicates"] += 1
                continue
            if exclude_programs and codec.to_program(codec.from_tokens(str(token_string).split())) in exclude_programs:
                counts["excluded_held_out"] += 1
                continue
            seen.add(signature)
            tokens.append(str(token_string))
            thumbs.append(thumb)
    if len(tokens) < parts:
        raise ValueError(f"the build in {work} holds {len(tokens)} distinct parts, fewer than {parts}: draw more first")
    return tokens, np.stack(thumbs), counts


def pack_library(work: str | Path, parts: int, seed: int = DEFAULT_SEED, dims: int = FEATURE_DIMS,
                 exclude_programs: set[str] = frozenset(), provenance: dict | None = None) -> PartLibrary:
    """The first ``parts`` distinct parts of a build as a ``PartLibrary``, features projected on
    the principal components of the library's own pictures."""
    tokens, thumbs, counts = distinct_parts(work, parts, seed, exclude_programs)
    card = {**(provenance or {}), "seed": seed, **counts,
            "features": f"framed picture averaged to {FEATURE_SIDE}x{FEATURE_SIDE} grey, projected on {dims} "
                        "principal components of the library's own pictures, float16"}
    return PartLibrary.from_features(tokens, grey_features(thumbs), card, dims)
