"""Test-time search: pick and refine programs by rendering them and comparing with the input picture.

A user holds one picture and no ground truth, but this project owns a renderer that draws the
GenCAD-Code image style. So every candidate program is run in the sandbox, rendered there in that
style, and scored by its **agreement** with the input: both pictures are framed alike
(``img2cq.framing.frame_silhouette``, so the score does not depend on which fit rule drew either
one), then compared by silhouette IoU and a symmetric chamfer distance between their edge maps.

``search(model, image, candidates=8, refine_seconds=20, executor=ex, index=idx)``:

1. candidates: the model's greedy and beam programs, sampled programs, and the programs of the
   ``candidates // 2`` nearest training images (``RetrievalIndex``, built once per training set
   and saved beside it); all run and rendered in the executor's pool in parallel;
2. the candidate with the highest agreement is kept (one that fails to build scores ``-inf``);
3. refinement: its continuous numbers (``numeric_parameters``: positions, sketch coordinates,
   extrusion depths; plane directions and integers stay fixed, equal magnitudes stay tied) are
   tuned by CMA-ES (the ``cma`` package) to maximise agreement until ``refine_seconds`` are spent,
   one population per parallel batch through the executor. The program keeps its text and
   structure; only the number literals change. CMA-ES because its ask/tell population is exactly
   one parallel batch, it needs no gradient of a rasterised (piecewise-constant) score, and it
   adapts step sizes and correlations between numbers by itself; scipy's derivative-free methods
   (Nelder-Mead, Powell) evaluate one point at a time.

The executor must preload the renderer: ``Executor(workers=2, preload=PRELOAD)``.
"""
from __future__ import annotations

import ast
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from img2cq.framing import frame_silhouette

PRELOAD = ("img2cq.render", "img2cq.search")  # modules the executor's workers import before forking
FRAME = 448                  # pictures are framed at the dataset's size, then reduced to RESOLUTION
RESOLUTION = 112             # agreement resolution (chosen in benchmarks/bench_agreement.py)
EDGE_WEIGHT = 0.5            # agreement = (1 - EDGE_WEIGHT) * silhouette IoU + EDGE_WEIGHT * edge similarity
EDGE_SCALE = 0.02            # chamfer distance (fraction of the frame) at which edge similarity is 1/e
INK_THRESHOLD = 250          # darker than this in any channel: the part (framing uses the same rule)
EDGE_THRESHOLD = 64          # darker than this: a drawn edge (edges are black, faces grey 141)
NUM_BEAMS = 4
REFINE_SIGMA = 0.1           # CMA-ES start step, in log-scale units (about 10 % of each number)
REFINE_BOUND = 1.0           # numbers move at most a factor e from their start value


# ----------------------------------------------------------------------------------------------
# Views: framed silhouette and edge masks of a picture

def views_from_pixels(pixels: np.ndarray) -> np.ndarray:
    """(2, FRAME, FRAME) bool: silhouette and edge masks of an RGB picture after framing."""
    framed = np.asarray(frame_silhouette(Image.fromarray(pixels), size=FRAME)).min(axis=2)
    return np.stack([framed < INK_THRESHOLD, framed < EDGE_THRESHOLD])


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
    results = executor.map(programs, mesh=False, postprocess="img2cq.search:render_views")
    return [unpack_views(r.extras["value"]["views"]) if r.ok and isinstance(r.extras.get("value"), dict) else None
            for r in results]


# ----------------------------------------------------------------------------------------------
# Retrieval index: programs of the training images nearest to the input

def thumbnail_features(image: Image.Image, size: int = 32) -> np.ndarray:
    """Framed grey thumbnail as a float vector: pixel features that ignore position and scale."""
    return np.asarray(frame_silhouette(image, size=size).convert("L"), np.float32).ravel() / 255.0


@dataclass
class RetrievalIndex:
    """Features and programs of a training set; ``nearest(image, k)`` gives the k closest programs."""

    features: np.ndarray
    programs: list[str]
    ids: list[str]
    meta: dict

    def nearest(self, image: Image.Image, k: int) -> list[tuple[str, str]]:
        """(id, program) of the k training images nearest in feature distance."""
        if k <= 0 or not self.programs:
            return []
        distance = ((self.features - thumbnail_features(image)) ** 2).sum(axis=1)
        return [(self.ids[i], self.programs[i]) for i in np.argsort(distance)[:k]]

    def save(self, path: str | Path) -> None:
        np.savez(path, features=self.features, programs=np.array(self.programs), ids=np.array(self.ids),
                 meta=np.array(json.dumps(self.meta)))

    @classmethod
    def load(cls, path: str | Path) -> "RetrievalIndex":
        with np.load(path, allow_pickle=False) as data:
            return cls(data["features"], [str(p) for p in data["programs"]], [str(i) for i in data["ids"]],
                       json.loads(str(data["meta"])))


def index_path(train_json: str | Path) -> Path:
    """Where the index of a training split is kept: beside it."""
    path = Path(train_json)
    return path.with_name(path.stem + ".index.npz")


def load_or_build_index(train_json: str | Path, progress: bool = True) -> RetrievalIndex:
    """The index saved beside ``train_json``; built (and saved) when missing or older than the split."""
    from tqdm.auto import tqdm

    from img2cq.data import load_split

    train_json, path = Path(train_json), index_path(train_json)
    if not train_json.is_file():
        raise FileNotFoundError(f"no training split at {train_json} (the retrieval candidates come from it)")
    source = {"train_json": train_json.name, "bytes": train_json.stat().st_size}
    if path.is_file():
        index = RetrievalIndex.load(path)
        if index.meta.get("source") == source:
            return index
    split = load_split(train_json)
    features, programs, ids = [], [], []
    for row in tqdm(split, desc="indexing training images", unit="img", disable=not progress):
        features.append(thumbnail_features(row["image"]))
        programs.append(row["cadquery"])
        ids.append(row["id"])
    meta = {"source": source, "features": "framed 32x32 grey thumbnail", "rows": len(ids),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    index = RetrievalIndex(np.stack(features) if features else np.zeros((0, 1024), np.float32), programs, ids, meta)
    index.save(path)
    return index


# ----------------------------------------------------------------------------------------------
# Refinement: the number literals of a program as parameters

@dataclass
class Parameters:
    """Float literals of a program that may be tuned, grouped by equal magnitude.

    ``spans[i] = (start, end, sign, group)``: byte range of a literal (with its minus sign), whose
    value is ``sign * values[group]``. Tying equal magnitudes keeps rectangles rectangular and
    symmetric sketches symmetric.
    """

    source: bytes
    spans: list[tuple[int, int, float, int]]
    values: np.ndarray

    def program(self, values: np.ndarray) -> str:
        out, last = [], 0
        for start, end, sign, group in self.spans:
            out += [self.source[last:start], repr(float(sign * values[group])).encode()]
            last = end
        out.append(self.source[last:])
        return b"".join(out).decode()


def numeric_parameters(program: str) -> Parameters:
    """The tunable numbers of a program: every non-zero float literal except plane directions.

    Raises SyntaxError for a program that does not parse.
    """
    tree = ast.parse(program)
    source = program.encode()
    line_starts = np.concatenate([[0], np.cumsum([len(line) for line in source.splitlines(keepends=True)])])
    fixed: set[int] = set()
    for node in ast.walk(tree):  # cq.Plane(origin, xDir, normal): the directions keep the orientation
        if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "Plane":
            for arg in node.args[1:]:
                fixed.update(id(n) for n in ast.walk(arg))
    literals = []
    for node in ast.walk(tree):
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and _is_float(node.operand):
            fixed.add(id(node.operand))
            if id(node) not in fixed:
                literals.append((node, -1.0, node.operand.value))
        elif _is_float(node) and id(node) not in fixed:
            literals.append((node, 1.0, node.value))
    groups: dict[str, int] = {}
    values, spans = [], []
    for node, sign, value in literals:
        if value == 0.0:
            continue
        group = groups.setdefault(repr(abs(value)), len(groups))
        if group == len(values):
            values.append(abs(value))
        start = int(line_starts[node.lineno - 1]) + node.col_offset
        end = int(line_starts[node.end_lineno - 1]) + node.end_col_offset
        spans.append((start, end, sign, group))
    spans.sort()
    return Parameters(source, spans, np.array(values, dtype=float))


def _is_float(node) -> bool:
    return isinstance(node, ast.Constant) and type(node.value) is float


def refine(program: str, reference: Reference, executor, seconds: float, start_score: float | None = None,
           seed: int = 0) -> tuple[str, float, int]:
    """Tune the program's numbers by CMA-ES to maximise agreement for about ``seconds``.

    Returns (best program, its agreement, programs evaluated). Programs with fewer than two tunable
    groups are returned unchanged: one group is a uniform scale, which framing cannot see.
    """
    import cma

    try:
        params = numeric_parameters(program)
    except SyntaxError:
        return program, start_score if start_score is not None else -math.inf, 0
    best_program = program
    best = start_score if start_score is not None else agreement(reference, render_programs([program], executor)[0])
    n = len(params.values)
    if n < 2 or seconds <= 0:
        return best_program, best, 0
    options = {"bounds": [-REFINE_BOUND, REFINE_BOUND], "seed": seed + 1, "verbose": -9,
               "popsize": max(4 + int(3 * math.log(n)), 2 * executor.workers)}
    es = cma.CMAEvolutionStrategy(np.zeros(n), REFINE_SIGMA, options)
    deadline, evaluated, generation_s = time.perf_counter() + seconds, 0, 0.0
    while time.perf_counter() + generation_s <= deadline and not es.stop():
        started = time.perf_counter()
        steps = es.ask()
        programs = [params.program(params.values * np.exp(s)) for s in steps]
        scores = [agreement(reference, v) for v in render_programs(programs, executor)]
        es.tell(steps, [1.0 - s if math.isfinite(s) else 2.0 for s in scores])  # cma minimises
        evaluated += len(programs)
        top = int(np.argmax(scores))
        if scores[top] > best:
            best, best_program = scores[top], programs[top]
        generation_s = time.perf_counter() - started
    return best_program, best, evaluated


# ----------------------------------------------------------------------------------------------
# Candidates and the search

@dataclass
class Candidate:
    program: str
    source: str            # "greedy", "beam4", "sample", "nearest:<training id>", "refined"
    agreement: float       # -inf: does not build or render


@dataclass
class SearchResult:
    program: str           # the kept program (never one that fails to build, unless all do)
    agreement: float
    source: str            # which candidate it came from (+ "+refined" when refinement improved it)
    candidates: list[Candidate] = field(default_factory=list)
    refine_evaluations: int = 0
    seconds: float = 0.0


def sample_programs(model, images: list[Image.Image], n: int, max_new_tokens: int | None = None) -> list[list[str]]:
    """``n`` programs per image sampled from the model (nucleus sampling, as ``Img2CQ.generate(best_of=...)``)."""
    import torch

    if n <= 0:
        return [[] for _ in images]
    with torch.no_grad():
        sequences = model.model.generate(pixel_values=model.pixel_values(images), do_sample=True, top_p=0.95,
                                         temperature=0.8, num_return_sequences=n,
                                         max_new_tokens=max_new_tokens or model.max_new_tokens)
    programs = model.decode(sequences)
    return [programs[i * n:(i + 1) * n] for i in range(len(images))]


def propose(model, images: list[Image.Image], candidates: int, index: RetrievalIndex | None = None,
            max_new_tokens: int | None = None) -> list[list[tuple[str, str]]]:
    """(source, program) candidates per image: greedy; then beam, ``candidates // 2`` retrieved
    programs (with an index) and samples for the rest. Batched over images: for the tiny interim
    model, 8 candidates cost 19 s per image in batches of 8 against 65 s one image at a time (loaded
    2-core machine). Duplicates are dropped."""
    proposals = [[("greedy", p)] for p in model.generate(images, max_new_tokens=max_new_tokens)]
    if candidates > 1:
        beams = model.generate(images, num_beams=NUM_BEAMS, max_new_tokens=max_new_tokens)
        k = candidates // 2 if index is not None else 0
        samples = sample_programs(model, images, candidates - 2 - k, max_new_tokens)
    if candidates > 1:
        for own, image, beam, sampled in zip(proposals, images, beams, samples):
            own.append((f"beam{NUM_BEAMS}", beam))
            own += [(f"nearest:{i}", program) for i, program in (index.nearest(image, k) if k else [])]
            own += [("sample", p) for p in sampled]
    unique = []
    for own in proposals:
        first: dict[str, str] = {}
        for source, program in own:
            first.setdefault(program, source)
        unique.append([(source, program) for program, source in first.items()])
    return unique


def pick_and_refine(image: Image.Image, proposals: list[tuple[str, str]], refine_seconds: float, executor,
                    seed: int = 0) -> SearchResult:
    """Render and score the proposals in parallel, keep the best, refine it for ``refine_seconds``."""
    started = time.perf_counter()
    reference = Reference.from_views(views_from_image(image))
    views = render_programs([p for _, p in proposals], executor)
    scored = [Candidate(p, s, agreement(reference, v)) for (s, p), v in zip(proposals, views)]
    best = max(scored, key=lambda c: c.agreement)  # ties keep the earlier (greedy first)
    result = SearchResult(best.program, best.agreement, best.source, scored)
    if refine_seconds > 0 and math.isfinite(best.agreement):
        program, score, evaluated = refine(best.program, reference, executor, refine_seconds, best.agreement, seed)
        result.refine_evaluations = evaluated
        if score > best.agreement:
            result.program, result.agreement, result.source = program, score, best.source + "+refined"
            result.candidates.append(Candidate(program, "refined", score))
    result.seconds = time.perf_counter() - started
    return result


def search(model, image: Image.Image, candidates: int = 8, refine_seconds: float = 0.0, executor=None,
           index: RetrievalIndex | None = None, max_new_tokens: int | None = None, seed: int = 0) -> SearchResult:
    """The program whose render agrees best with ``image``, from ``candidates`` proposals, its
    numbers then tuned for ``refine_seconds``. ``executor`` must preload ``PRELOAD`` (one with
    two workers is opened and closed here when None)."""
    from img2cq.executor import Executor

    if executor is None:
        with Executor(workers=2, preload=PRELOAD) as ex:
            return search(model, image, candidates, refine_seconds, ex, index, max_new_tokens, seed)
    started = time.perf_counter()
    proposals = propose(model, [image], candidates, index, max_new_tokens)[0]
    result = pick_and_refine(image, proposals, refine_seconds, executor, seed)
    result.seconds = time.perf_counter() - started
    return result


def search_label(candidates: int, refine_seconds: float) -> str:
    """The ``decoding`` column of a searched row, e.g. ``greedy+cand8+refine20``."""
    label = "greedy"
    if candidates > 1:
        label += f"+cand{candidates}"
    if refine_seconds > 0:
        label += f"+refine{refine_seconds:g}"
    return label



def search_many(model, images: list[Image.Image], candidates: int = 8, refine_seconds: float = 0.0,
                workers: int = 2, index: RetrievalIndex | None = None, max_new_tokens: int | None = None,
                batch_size: int = 8, progress: bool = True) -> list[SearchResult]:
    """``search`` for many images with one executor, proposing for ``batch_size`` images at a time
    (each result's ``seconds`` includes its share of the batch). Ctrl-C returns the finished results."""
    from tqdm.auto import tqdm

    from img2cq.executor import Executor

    results: list[SearchResult] = []
    with Executor(workers=workers, preload=PRELOAD) as ex:
        bar = tqdm(total=len(images), desc=f"searching ({search_label(candidates, refine_seconds)})", unit="img",
                   disable=not progress)
        try:
            for start in range(0, len(images), batch_size):
                batch = images[start:start + batch_size]
                started = time.perf_counter()
                proposals = propose(model, batch, candidates, index, max_new_tokens)
                share = (time.perf_counter() - started) / len(batch)
                for i, (image, own) in enumerate(zip(batch, proposals)):
                    result = pick_and_refine(image, own, refine_seconds, ex, seed=start + i)
                    result.seconds += share
                    results.append(result)
                    bar.update(1)
                    bar.set_postfix(agreement=f"{result.agreement:.3f}",
                                    s_per_img=f"{np.mean([r.seconds for r in results]):.1f}")
        except KeyboardInterrupt:
            print(f"\ninterrupted: keeping the {len(results)} searched images", flush=True)
        finally:
            bar.close()
    return results


def search_rows(model, rows: list[dict], candidates: int, refine_seconds: float, train_json: str | None = None,
                workers: int = 2, max_new_tokens: int | None = None) -> tuple[list[str], str]:
    """Searched programs for evaluation rows (``evaluate_model``) and their ``decoding`` label.

    Fewer programs than rows come back after Ctrl-C: the rows searched so far.
    """
    index = load_or_build_index(train_json) if train_json else None
    results = search_many(model, [r["image"] for r in rows], candidates, refine_seconds, workers, index,
                          max_new_tokens)
    if results:
        print(f"search: {np.mean([r.seconds for r in results]):.1f} s per image over {len(results)} images "
              f"({workers} workers, load average {os.getloadavg()[0]:.1f})")
    return [r.program for r in results], search_label(candidates, refine_seconds)
