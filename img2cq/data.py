"""Dataset I/O: the jsonl + images layout, `datasets` loading, synthetic generation and streaming.

One layout serves both sources (the hub's CADCODER/GenCAD-Code and the procedural sampler):
``<out>/<split>.jsonl`` rows with ``id``, ``image`` (PNG path relative to the jsonl), ``cadquery``,
``token_count`` and source metadata, images under ``<out>/images/``, and ``<out>/dataset_card.json``
saying how it was made. Synthetic programs run in the sandboxed executor; the renderer and the
validity checks run there too (``validate_and_render``), so a bad draw can never hurt the caller.
Every jsonl file (a split, a program file, predictions) is read here, by ``read_rows`` or
``read_programs``; a file that cannot be used raises ``DataError``, whoever reads it.
"""
from __future__ import annotations

import io
import json
import logging
import math
import os
import platform
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

import numpy as np
import regex

from img2cq.geometry import MIN_PART_EXTENT, MIN_PART_FILL, MIN_PART_VOLUME
from img2cq.sandbox import ProgramRunner

SPLITS = ("train", "val", "test")
HUB_DATASET = "CADCODER/GenCAD-Code"
HUB_SPLITS = {"train": "train", "val": "validation", "test": "test"}
DOWNLOAD_HINT = "python scripts/download_hf_dataset.py --source synthetic --out data"  # named in missing-data errors
PROGRAM_FIELDS = ("cadquery",)  # where a row keeps its program

logger = logging.getLogger(__name__)


class DataError(ValueError):
    """A data file that cannot be used (missing, unreadable, not JSON objects, without the programs it
    should hold): the one error for bad input files, one line for the user naming the file and line."""

# GPT-2's pre-tokenizer pattern (openai/gpt-2 encoder.py). GPT-2's BPE vocabulary cannot be
# downloaded here, so token_count is an approximation: one token per pre-token, except digit runs,
# which count one token per 3 digits (GPT-2's vocabulary holds most 1-3 digit strings).
_GPT2_PATTERN = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
TOKEN_COUNT_METHOD = "approx-gpt2: GPT-2 pre-tokenizer pieces, digit runs counted per 3 digits"


def count_tokens(code: str) -> int:
    """Approximate GPT-2 token count of a program (see TOKEN_COUNT_METHOD)."""
    total = 0
    for piece in _GPT2_PATTERN.findall(code):
        digits = piece.strip()
        total += math.ceil(len(digits) / 3) if digits.isdigit() else 1
    return total


# ----------------------------------------------------------------------------------------------
# Runs inside the executor's sandboxed child, on the result shape of a generated program.

def reject_reason(shape) -> str | None:
    """Why a generated part is degenerate (dust, sliver, disconnected pieces), or None if it is fine."""
    if len(shape.Solids()) > 1:
        return "disconnected"
    bb = shape.BoundingBox()
    extent = [bb.xlen, bb.ylen, bb.zlen]
    volume = shape.Volume()
    if volume < MIN_PART_VOLUME:
        return "too_small"
    if min(extent) < MIN_PART_EXTENT or volume / (extent[0] * extent[1] * extent[2]) < MIN_PART_FILL:
        return "sliver"
    return None


def validate_and_render(shape, size: int = 448, line_width: float = 1.0, view_jitter_deg: float = 0.0,
                        seed: int | None = None, fit: str = "bbox") -> dict:
    """reject_reason(shape), and a PNG render of the parts that pass.

    Returns {"reject": reason or None, "png": bytes or None}.
    """
    from img2cq.render import render_png

    reason = reject_reason(shape)
    if reason is not None:
        return {"reject": reason, "png": None}
    # the view jitter differs per part yet is reproducible: seeded by the seed and the part's volume
    jitter_seed = None if seed is None else [seed, int(shape.Volume() * 1e9)]
    return {"reject": None, "png": render_png(shape, size=size, line_width=line_width,
                                               view_jitter_deg=view_jitter_deg, seed=jitter_seed, fit=fit)}


_BOOLEAN_CALL = regex.compile(r"\.(union|cut|intersect)\((\w+)\)")


def seamed_program(code: str) -> str:
    """The program with ``clean=False`` on every boolean (``solid.union(solid1, clean=False)``).

    The dataset's images keep the seam edges where sketches were joined, which CadQuery's default
    clean step merges away; the same solid (volume, inertia) with its seams is what gets rendered,
    while the stored program stays in the plain GenCAD-Code style."""
    return _BOOLEAN_CALL.sub(r".\1(\2, clean=False)", code)


def geometry_signature(volume: float, inertia: np.ndarray) -> str:
    """Rounded volume + principal moments of inertia: equal for the same part however it is written."""
    moments = np.sort(np.linalg.eigvalsh(np.asarray(inertia, dtype=float)))
    return " ".join(f"{v:.4g}" for v in (volume, *moments))


# ----------------------------------------------------------------------------------------------
# Synthetic generation

def sample_id(seed: int, split: str, index: int) -> str:
    """The id of a synthetic sample: its seed, split and draw index."""
    return f"syn-{seed}-{split}-{index:07d}"


def draw_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """Independent generator per (seed, split, draw index): splits never share a stream, and
    results do not depend on the worker count."""
    return np.random.default_rng([seed, SPLITS.index(split), index])


def _judge(result, seen: set) -> tuple[str | None, str | None]:
    """(reason, signature) for one executed draw; reason None means accepted."""
    if not result.ok:
        return f"exec_{result.error_kind}", None
    value = result.extras.get("value") or {}
    if value.get("reject"):
        return value["reject"], None
    signature = geometry_signature(result.volume, result.inertia)
    if signature in seen:
        return "duplicate", signature
    return None, signature


def generate_draws(executor: ProgramRunner, seed: int, split: str, start: int, count: int, seen: set,
                   render_kwargs: dict | None = None, weights: dict | None = None) -> Iterator[dict]:
    """Execute draws start..start+count-1 and yield one record per draw, in draw order.

    Each record has "index", "cadquery", "reason" (None if accepted), "signature" and "png". The
    executor runs each program's seamed_program, so the render shows the dataset's seam edges.
    Accepted signatures are added to `seen` (de-duplication by geometry).
    """
    from img2cq.sampler import sample_program

    indices = range(start, start + count)
    codes = [sample_program(draw_rng(seed, split, i), weights) for i in indices]
    kwargs = dict(render_kwargs or {})
    results = executor.map([seamed_program(c) for c in codes], mesh=False,
                           postprocess="img2cq.data:validate_and_render", postprocess_kwargs=kwargs)
    for i, code, result in zip(indices, codes, results):
        reason, signature = _judge(result, seen)
        if reason is None:
            seen.add(signature)
        png = result.extras.get("value", {}).get("png") if reason is None else None
        yield {"index": i, "cadquery": code, "reason": reason, "signature": signature, "png": png}


class ProgramRow(NamedTuple):
    """A row of a program file: its line number (from 1), the row, and its program."""
    line: int
    row: dict
    code: str


def _numbered_rows(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, row) of every non-blank line; DataError naming the line for one that is not a JSON
    object (a last line cut short by an interrupted write included)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{number}: not JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{number}: not a JSON object")
        yield number, row


def read_rows(path: str | Path) -> list[dict]:
    """The rows of a jsonl file (a split, programs, predictions); DataError if it cannot be read."""
    return [row for _, row in _numbered_rows(Path(path))]


def read_programs(path: str | Path, fields: tuple[str, ...] = PROGRAM_FIELDS) -> list[ProgramRow]:
    """The rows of a program file, each with its program: a string in the first of ``fields`` the row
    has. DataError naming the line of a row without one, or for a file without programs."""
    programs = []
    for number, row in _numbered_rows(Path(path)):
        code = next((row[f] for f in fields if f in row), None)
        if not isinstance(code, str):
            raise DataError(f"{path}:{number}: no string field {' / '.join(repr(f) for f in fields)}")
        programs.append(ProgramRow(number, row, code))
    if not programs:
        raise DataError(f"{path}: no programs")
    return programs


def _resume_rows(path: Path) -> list[dict]:
    """The writer's view of a split it appends to: a partial last line (its own interrupted write)
    is cut off the file before the complete rows are read."""
    if not path.exists():
        return []
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])
    return read_rows(path)


def provenance() -> dict:
    """How an artefact was made: command, versions, time."""
    import cadquery
    import vtk

    return {"command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]),
            "python": platform.python_version(), "cadquery": cadquery.__version__, "vtk": vtk.vtkVersion.GetVTKVersion(),
            "numpy": np.__version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def write_synthetic_split(out: Path, split: str, size: int, seed: int, executor: ProgramRunner, seen: set,
                          batch: int = 64, render_kwargs: dict | None = None, progress: bool = True) -> dict:
    """Append accepted samples to <out>/<split>.jsonl until it holds `size` rows; resumable.

    Returns the split's statistics (draws, accepted, rejections by reason) for the dataset card.
    """
    from tqdm import tqdm

    out.mkdir(parents=True, exist_ok=True)
    (out / "images").mkdir(exist_ok=True)
    path = out / f"{split}.jsonl"
    rows = _resume_rows(path)
    stats_path = out / f".{split}.progress.json"
    stats = json.loads(stats_path.read_text()) if stats_path.exists() else {}
    if stats.get("seed") != seed or stats.get("accepted") != len(rows):
        # no (matching) progress record: rebuild from the rows; rejections before them are unknown
        stats = {"seed": seed, "draws": (rows[-1]["sample_index"] + 1) if rows else 0, "accepted": len(rows),
                 "rejected": {}, "rejections_counted_from": (rows[-1]["sample_index"] + 1) if rows else 0}
    seen.update(r["signature"] for r in rows)
    bar = tqdm(total=size, initial=min(len(rows), size), desc=f"{split} (seed {seed})", unit="sample",
               disable=not progress)
    with path.open("a") as f:
        while stats["accepted"] < size:
            for rec in generate_draws(executor, seed, split, stats["draws"], batch, seen, render_kwargs):
                stats["draws"] += 1
                if rec["reason"] is not None:
                    stats["rejected"][rec["reason"]] = stats["rejected"].get(rec["reason"], 0) + 1
                    continue
                name = sample_id(seed, split, rec["index"])
                image = f"images/{name}.png"
                (out / image).write_bytes(rec["png"])
                row = {"id": name, "image": image, "cadquery": rec["cadquery"],
                       "token_count": count_tokens(rec["cadquery"]), "source": "synthetic", "seed": seed,
                       "split": split, "sample_index": rec["index"], "signature": rec["signature"]}
                f.write(json.dumps(row) + "\n")
                stats["accepted"] += 1
                bar.update(1)
                if stats["accepted"] >= size:
                    break
            f.flush()
            stats_path.write_text(json.dumps(stats))
    bar.close()
    return stats


def dataset_statistics(codes: Iterable[str]) -> dict:
    """Program statistics to compare with the real dataset (gencad-code.md)."""
    codes = list(codes)
    if not codes:
        return {"n": 0}
    sketches = np.array([c.count("# Generating a workplane for sketch") for c in codes])
    chars = np.array([len(c) for c in codes])
    tokens = np.array([count_tokens(c) for c in codes])
    ops = Counter(op for c in codes for op in ("union", "cut", "intersect") for _ in range(c.count(f"solid.{op}(")))
    curves = Counter({k: sum(c.count(f".{k}(") for c in codes) for k in ("lineTo", "threePointArc", "circle")})
    both = sum(c.count("both=True") for c in codes)
    normals = Counter()
    for c in codes:
        for line in c.splitlines():
            if line.startswith("wp_sketch"):
                n = [float(v) for v in line.rsplit("cq.Vector(", 1)[1].rstrip(")").split(",")]
                axis = int(np.argmax(np.abs(n)))
                normals["+-"[n[axis] < 0] + "XYZ"[axis] if abs(n[axis]) > 0.999 else "tilted"] += 1
    pct = lambda a: {p: float(np.percentile(a, p)) for p in (5, 50, 95)}
    return {"n": len(codes), "sketches": {int(k): int(v) for k, v in zip(*np.unique(sketches, return_counts=True))},
            "single_sketch_share": float(np.mean(sketches == 1)), "chars": pct(chars), "chars_mean": float(chars.mean()),
            "tokens": pct(tokens), "tokens_mean": float(tokens.mean()), "combine_ops": dict(ops),
            "curves": dict(curves), "extrudes": int(sketches.sum()), "symmetric_extrudes": both,
            "normals": dict(normals.most_common())}


def generate_synthetic(out: str | Path, sizes: dict[str, int], seed: int = 0, workers: int = 2,
                       batch: int = 64, render_kwargs: dict | None = None, progress: bool = True,
                       executor: ProgramRunner | None = None) -> dict:
    """Write the synthetic train/val/test splits and the dataset card; returns the card.

    Programs run on ``executor`` if given (e.g. an `img2cq.sandbox.ClusterExecutor` preloading
    img2cq.render; closed at the end), else on a local pool of ``workers``; the rows are the same either way.

    Splits are generated in the order train, val, test and later splits skip parts already in
    earlier ones, so test parts never appear in train.
    """
    from img2cq.sandbox import Executor

    out = Path(out)
    card_path = out / "dataset_card.json"
    seen: set = set()
    card = {"source": "synthetic (img2cq.sampler + img2cq.render, GenCAD-Code style)", "seed": seed,
            "workers": workers, "sizes": sizes, "render": render_kwargs or {}, "token_count": TOKEN_COUNT_METHOD,
            "provenance": provenance(), "splits": {}}
    with executor or Executor(workers=workers, preload=("img2cq.render",)) as executor:
        card["workers"] = executor.workers
        batch = max(batch, 8 * executor.workers)  # keep every worker of a large cluster busy; rows do not depend on it
        if hasattr(executor, "address"):
            card["cluster"] = executor.address
        for split in SPLITS:
            if sizes.get(split, 0) <= 0:
                continue
            stats = write_synthetic_split(out, split, sizes[split], seed, executor, seen, batch, render_kwargs, progress)
            stats["acceptance_rate"] = stats["accepted"] / max(1, stats["draws"])
            stats["statistics"] = dataset_statistics(r["cadquery"] for r in read_rows(out / f"{split}.jsonl"))
            card["splits"][split] = stats
    card_path.write_text(json.dumps(card, indent=2))
    return card


# ----------------------------------------------------------------------------------------------
# Hub data, written to the same layout

def write_hub_rows(rows: Iterable[dict], out: str | Path, split: str, limit: int, progress: bool = True) -> int:
    """Write GenCAD-Code rows (image PIL, deepcad_id, cadquery, token_count, prompt, hundred_subset)
    as <out>/<split>.jsonl + PNGs; returns the number written."""
    from tqdm import tqdm

    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    n = 0
    with (out / f"{split}.jsonl").open("w") as f:
        for row in tqdm(rows, total=limit, desc=f"{split} (hub)", unit="row", disable=not progress):
            if n >= limit:
                break
            name = f"{split}-{n:07d}-{row['deepcad_id']}".replace("/", "_")
            image = f"images/{name}.png"
            row["image"].convert("RGB").save(out / image)
            f.write(json.dumps({"id": name, "image": image, "cadquery": row["cadquery"],
                                "token_count": row["token_count"], "deepcad_id": row["deepcad_id"],
                                "prompt": row.get("prompt"), "hundred_subset": row.get("hundred_subset"),
                                "source": HUB_DATASET, "split": split}) + "\n")
            n += 1
    return n


def download_hub(out: str | Path, sizes: dict[str, int], progress: bool = True) -> dict:
    """Stream the first `sizes[split]` rows of each hub split into the local layout."""
    from datasets import load_dataset

    out = Path(out)
    card = {"source": HUB_DATASET, "sizes": sizes, "provenance": provenance(), "splits": {}}
    for split, n in sizes.items():
        if n <= 0:
            continue
        rows = load_dataset(HUB_DATASET, split=HUB_SPLITS[split], streaming=True)
        card["splits"][split] = {"rows": write_hub_rows(rows, out, split, n, progress)}
    (out / "dataset_card.json").write_text(json.dumps(card, indent=2))
    return card


# ----------------------------------------------------------------------------------------------
# Reading

def load_split(jsonl_path: str | Path, exclude_programs_in: str | Path | None = None):
    """A split as a `datasets.Dataset` whose "image" column is a `datasets.Image` feature.

    ``exclude_programs_in``: another split (e.g. the test split) whose programs are left out, so that
    no test part is trained on or retrieved, however often the sampler draws it again.
    """
    from datasets import Dataset, Image

    path = Path(jsonl_path)
    for split_path in (path, exclude_programs_in):
        if split_path is not None and not Path(split_path).is_file():
            raise DataError(f"no such split file: {split_path}")
    rows = read_rows(path)
    if exclude_programs_in is not None:
        held_out = {row["cadquery"] for row in read_rows(exclude_programs_in)}
        kept = [row for row in rows if row["cadquery"] not in held_out]
        if len(kept) < len(rows):
            logger.info("left out %d of %d samples of %s: their programs are in %s",
                        len(rows) - len(kept), len(rows), path, exclude_programs_in)
        rows = kept
    for row in rows:
        row["image"] = str(path.parent / row["image"])
    ds = Dataset.from_list(rows) if rows else Dataset.from_dict({"id": [], "image": [], "cadquery": []})
    return ds.cast_column("image", Image())


def stream_samples(seed: int, workers: int = 2, split: str = "train", start: int = 0, batch: int | None = None,
                   size: int = 448, line_width: float = 1.0, view_jitter_deg: float = 0.0,
                   weights: dict | None = None, executor: ProgramRunner | None = None, fit: str = "bbox") -> Iterator[dict]:
    """Endless fresh samples {"id", "cadquery", "image" (PIL), "index"} for online training.

    Draw order (and so the stream) is fixed by the seed; pass `start` to resume after a draw index.
    ``library.stream_built_samples`` gives the training split's samples in the default style without a
    sandbox child per program (what training's ``--stream`` reads).
    """
    from PIL import Image

    from img2cq.sandbox import Executor

    own = executor is None
    executor = executor or Executor(workers=workers, preload=("img2cq.render",))
    batch = batch or 8 * executor.workers
    seen: set = set()
    render_kwargs = {"size": size, "line_width": line_width, "view_jitter_deg": view_jitter_deg, "fit": fit}
    try:
        index = start
        while True:
            for rec in generate_draws(executor, seed, split, index, batch, seen, {**render_kwargs, "seed": seed},
                                      weights):
                if rec["reason"] is None:
                    yield {"id": sample_id(seed, split, rec["index"]), "index": rec["index"],
                           "cadquery": rec["cadquery"], "image": Image.open(io.BytesIO(rec["png"])).convert("RGB")}
            index += batch
    finally:
        if own:
            executor.close()


def make_contact_sheet(jsonl_path: str | Path, out_path: str | Path, n: int = 48, seed: int = 0,
                       tile: int = 224, columns: int = 8) -> None:
    """Grid of n random rows' images, each captioned with its program's first plane and loop lines."""
    from PIL import Image, ImageDraw

    path = Path(jsonl_path)
    rows = read_rows(path)
    picks = np.random.default_rng(seed).choice(len(rows), size=min(n, len(rows)), replace=False)
    caption_h = 44
    rows_n = math.ceil(len(picks) / columns)
    sheet = Image.new("RGB", (columns * tile, rows_n * (tile + caption_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for k, i in enumerate(picks):
        x, y = (k % columns) * tile, (k // columns) * (tile + caption_h)
        sheet.paste(Image.open(path.parent / rows[i]["image"]).convert("RGB").resize((tile, tile)), (x, y))
        lines = rows[i]["cadquery"].splitlines()
        body = [line for line in lines if line.startswith(("loop", "solid="))][:3]
        text = "\n".join(line[:36] for line in [f"{rows[i]['id']} ({len(lines)} lines)"] + body)
        draw.multiline_text((x + 3, y + tile), text, fill=(0, 0, 0), spacing=1)
    sheet.save(out_path, optimize=True)
