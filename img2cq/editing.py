"""Retrieve-and-edit: the model reads the picture *and* the codec tokens of a library part that looks
like it, and writes the picture's program by editing that part.

A model that writes every program from scratch must first learn everything the part library already
holds; one prompted with the nearest library part starts from a program of roughly the right
structure and learns what to change (proportions, holes, extrusions). The decoder sees

    bos <prompt part's codec tokens> bos <the program> eos

and the loss counts only the program (``training.Collator``). The picture the model reads is the
library's stored thumbnail (``library.picture_thumbnail`` of the framed render, 64 px): library parts
have nothing sharper stored, so generation reads every picture through the same thumbnail
(``edit_picture``).

Training data (``library_rows``) are the part library's own parts, their thumbnails read from the
work folder of the build that made the library, each prompted with its nearest *other* library part
(``nearest_others``), which is what a new picture gets from the library at generation time.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

EVAL_PARTS = 256       # the library's last parts: held out of training, scored during it


def edit_picture(image: Image.Image) -> Image.Image:
    """The picture as a prompted model reads it: framed, darkest channel, averaged to the library's
    64 px thumbnail (the resolution its training pictures have)."""
    from img2cq.agreement import framed_grey
    from img2cq.library import picture_thumbnail

    return Image.fromarray(picture_thumbnail(framed_grey(np.asarray(image.convert("RGB"))))).convert("RGB")


def nearest_others(library, batch: int = 1024, progress: bool = True) -> np.ndarray:
    """(N,) int64: for each library part, the nearest *other* part in the library's feature space."""
    from tqdm.auto import tqdm

    features = library.features
    out = np.empty(len(features), np.int64)
    for start in tqdm(range(0, len(features), batch), desc="nearest other parts", unit="block", disable=not progress):
        block = features[start:start + batch]
        out[start:start + len(block)] = library.nearest_projected(block, exclude=np.arange(start, start + len(block)))
    return out


class LibraryRows(Sequence):
    """Rows {"image", "cadquery", "prompt"} of library parts: the part's stored thumbnail, its
    program, and the program of the part it is prompted with (no "prompt" unless ``prompted``).
    ``lengths``: the decoder's tokens per row (prompt and program), for length-grouped batches."""

    def __init__(self, library, thumbs: np.ndarray, parts: np.ndarray, prompts: np.ndarray, prompted: bool = True):
        self.library, self.thumbs, self.parts, self.prompts, self.prompted = library, thumbs, parts, prompts, prompted
        sizes = np.diff(library.offsets)
        self.lengths = (sizes[parts] + 1 + (sizes[prompts] + 1 if prompted else 0)).tolist()

    def __len__(self) -> int:
        return len(self.parts)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        part = int(self.parts[i])
        row = {"image": Image.fromarray(self.thumbs[part]).convert("RGB"), "cadquery": self.library.program(part)}
        if self.prompted:
            row["prompt"] = self.library.program(int(self.prompts[i]))
        return row


def library_rows(build_work: str | Path, library=None, eval_parts: int = EVAL_PARTS, prompted: bool = True,
                 progress: bool = True) -> tuple[LibraryRows, LibraryRows]:
    """(train, eval) rows of retrieve-and-edit from the part library (default: the shipped one) and
    the work folder of the build that made it; the last ``eval_parts`` parts are the eval rows,
    and no training row is prompted with one of them. Without ``prompted``, the same rows without
    their prompts: what a plain model trained at the same cost reads.

    The thumbnails are matched to the library by re-reading the build as ``pack_library`` did; a
    build that does not give the library's parts in its order is refused."""
    from img2cq.library import DEFAULT_SEED, PartLibrary, distinct_parts

    library = library or PartLibrary.load()
    work = Path(build_work)
    if not work.is_dir():
        raise FileNotFoundError(f"no library build at {work} (scripts/build_library.py --work {work} makes one)")
    tokens, thumbs, _ = distinct_parts(work, len(library), library.card.get("seed", DEFAULT_SEED),
                                       exclude_programs=_held_out_programs(library))
    for i in np.linspace(0, len(library) - 1, 50).astype(int):
        if tokens[i].split() != library.tokens(int(i)):
            raise ValueError(f"the build in {work} is not the one that made the library (part {i} differs)")
    cache = work / f"nearest-others-{len(library)}.npy"
    if cache.is_file():
        nearest = np.load(cache)
    else:
        nearest = nearest_others(library, progress=progress)
        np.save(cache, nearest)
    cut = len(library) - eval_parts
    train = np.flatnonzero(nearest[:cut] < cut)   # a training row's prompt is never an eval part
    log.info("retrieve-and-edit rows: %d training parts (%d prompted with an eval part left out), %d eval parts",
             len(train), cut - len(train), eval_parts)
    evaluation = np.arange(cut, len(library))
    return (LibraryRows(library, thumbs, train, nearest[train], prompted),
            LibraryRows(library, thumbs, evaluation, nearest[evaluation], prompted))


def _held_out_programs(library) -> set[str]:
    """The programs of the splits the library was built without (its card names them)."""
    from img2cq.data import read_programs

    root = Path(__file__).resolve().parent.parent
    programs = set()
    for split in library.card.get("held_out_splits", []):
        path = root / split
        if not path.is_file():
            raise FileNotFoundError(f"the library was built without the programs of {split}; it is needed to "
                                    "match the build to the library")
        programs |= {row.code for row in read_programs(path)}
    return programs


def prompt_programs(library, images: list[Image.Image]) -> list[str]:
    """The program of the library part nearest to each picture: what a prompted model edits."""
    from img2cq.library import picture_features

    return [library.program(i) for i in library.nearest_each(np.stack([picture_features(im) for im in images]))]
