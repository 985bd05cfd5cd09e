"""Test-time search: pick and refine programs by rendering them and comparing with the input picture.

Every candidate is rendered in the dataset's style and scored against the input picture by a
**judge**: proposals by default by the mean of the learned agreement (``img2cq.comparator``: the
candidate's predicted 3D IoU) and the hand-made one (``agreement.agreements``); refinement's edits
by the hand-made one. ``search(model, image, candidates=8,
refine_seconds=8)``:

1. proposals: the ``default_shortlist`` parts of the part library (``img2cq.library``) whose pictures are
   nearest to the input in feature space, and, with a model, its greedy and beam programs and
   ``candidates - 2`` sampled ones; a retrieve-and-edit model (``img2cq.editing``) instead writes
   one program from each of the ``candidates`` library parts the judge ranks best (after step 2);
2. re-ranking: every proposal that is a codec structure (all library parts, and every program
   the codec model writes) is built and rendered by ``img2cq.build.BuildPool``'s long-lived
   workers; anything else runs in the sandboxed executor as before; the proposal the judge
   scores best is kept. With ``consensus_top`` the workers also measure each solid and the
   judge's best-ranked proposals are re-ranked by their ``consensus``: each one's 3D IoU with the
   few the judge scores best, weighted by the judge (minimum Bayes risk; a judge of pictures tells
   look-alikes apart poorly, their 3D likeness to its surest picks much better), the first then
   kept;
3. refinement for ``refine_seconds``, shared by the few best-ranked proposals when there is time
   for each (``default_refine_top``), the judge keeping the best: a structure is edited by
   ``img2cq.structured.refine`` (proportions, depths, offsets, holes, loops, sketches,
   operations); a program outside the codec has its number literals tuned by CMA-ES through the
   sandbox (``refine_text``).
"""
from __future__ import annotations

import ast
import math
import time
from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image

from img2cq import codec
from img2cq.agreement import Masks, agreements, render_programs, views_from_image
from img2cq.framing import on_white

PRELOAD = ("img2cq.render", "img2cq.agreement")  # modules the executor's workers import before forking
NUM_BEAMS = 4
DEFAULT_CANDIDATES = 1       # the search a user gets unless they ask (img2cq generate, /generate): the model's
DEFAULT_REFINE_SECONDS = 1.0  # greedy program beside the library's nearest parts, the best refined 1 s (about 2 s)
SHORTLIST = 64               # library parts rendered and re-ranked per picture, ...
SHORTLIST_ONE_START = 24     # ... where only the best is refined: as good, 0.5 s sooner (default_shortlist)
CONSENSUS_ROWS = 24          # with consensus on, the judge's best-ranked candidates re-ranked, each ...
CONSENSUS_TOP = 4            # ... compared in 3D with the judge's best few (the best ranking measured) ...
CONSENSUS_TEMPERATURE = 0.05  # ... weighted by softmax(judge's score / this)
KEPT_WEIGHT = 0.5            # alternatives: this much of a candidate's rank is its 3D IoU with the kept part
MAX_ALTERNATIVES = 16        # most alternatives a user may ask for (of the CONSENSUS_ROWS ranked)
REFINE_TOP = 7               # at most this many of the best-ranked candidates share the refinement ...
REFINE_SECONDS_EACH = 1.0    # ... each given at least this many seconds (so 1 s refines the best alone)
REFINE_SIGMA = 0.1           # CMA-ES start step, in log-scale units (about 10 % of each number)
REFINE_BOUND = 1.0           # numbers move at most a factor e from their start value


# ----------------------------------------------------------------------------------------------
# Refining a program outside the codec: its number literals as parameters

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


def refine_text(program: str, reference: Masks, executor, seconds: float, start_score: float | None = None,
                seed: int = 0, judge=agreements) -> tuple[str, float, int]:
    """Tune the program text's numbers by CMA-ES to maximise ``judge``'s score for about ``seconds``.

    Returns (best program, its agreement, programs evaluated). Programs with fewer than two tunable
    groups are returned unchanged: one group is a uniform scale, which framing cannot see.
    """
    import cma

    try:
        params = numeric_parameters(program)
    except SyntaxError:
        return program, start_score if start_score is not None else -math.inf, 0
    best_program = program
    best = start_score if start_score is not None else judge(reference, render_programs([program], executor))[0]
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
        scores = judge(reference, render_programs(programs, executor))
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
    source: str            # "greedy", "beam4", "sample", "library:<part index>", "edit:<its prompt>", + "+refined"
    agreement: float       # -inf: does not build or render
    sketches: list | None = None  # its codec structure, None for a program outside the codec
    solid: object = field(default=None, repr=False)  # its measured solid (``build.measured``) once built


@dataclass
class SearchResult:
    program: str           # the kept program (never one that fails to build, unless all do)
    agreement: float
    source: str            # which candidate it came from (+ "+refined" when refinement improved it)
    candidates: list[Candidate] = field(default_factory=list)
    alternatives: list[Candidate] = field(default_factory=list)  # other candidates, best first (``ranked_after``)
    refine_evaluations: int = 0
    seconds: float = 0.0


def as_candidate(source: str, program: str) -> Candidate:
    """A proposal with its codec structure where the codec reads it (nothing is executed)."""
    try:
        sketches = codec.parse(program)
    except codec.CodecError:
        sketches = None
    return Candidate(program, source, -math.inf, sketches)


def propose(model, images: list[Image.Image], candidates: int,
            max_new_tokens: int | None = None) -> list[list[Candidate]]:
    """The model's proposals per image: greedy; with ``candidates > 1`` also beam search and
    ``candidates - 2`` samples. Batched over images; duplicates dropped."""
    programs = [[("greedy", p)] for p in model.generate(images, max_new_tokens=max_new_tokens)]
    if candidates > 1:
        beams = model.generate(images, num_beams=NUM_BEAMS, max_new_tokens=max_new_tokens)
        samples = model.sample(images, candidates - 2, max_new_tokens) if candidates > 2 else [[] for _ in images]
        for own, beam, sampled in zip(programs, beams, samples):
            own += [(f"beam{NUM_BEAMS}", beam)] + [("sample", p) for p in sampled]
    return [list({p: as_candidate(s, p) for s, p in reversed(own)}.values())[::-1] for own in programs]


def retrieve(library, image: Image.Image, shortlist: int) -> list[Candidate]:
    """The ``shortlist`` library parts nearest to the picture, nearest first."""
    out = []
    for i in library.nearest(image, shortlist) if library is not None and shortlist > 0 else []:
        sketches = library.sketches(i)
        out.append(Candidate(codec.to_program(sketches), f"library:{i}", -math.inf, sketches))
    return out


def edits_of(model, image: Image.Image, ranked: list[Candidate], count: int) -> list[Candidate]:
    """A retrieve-and-edit model's greedy programs for the picture, one written from each of the
    ``count`` best-ranked candidates that have a codec structure; copies of a candidate are dropped."""
    best = sorted((c for c in ranked if c.sketches is not None and math.isfinite(c.agreement)),
                  key=lambda c: -c.agreement)[:count]
    if not best:
        return []
    pixels = model.pixel_values([image]).expand(len(best), -1, -1, -1)  # the picture is framed once
    programs = model.programs(pixels, [c.program for c in best], num_beams=1, do_sample=False)
    known = {c.program for c in ranked}
    return [as_candidate(f"edit:{c.source}", p) for c, p in zip(best, programs) if p not in known]


def refine_candidates(starts: list[Candidate], reference: Masks, seconds_each: float, pool, executor, seed: int,
                      judge) -> tuple[list[Candidate], int]:
    """Each start refined for about ``seconds_each``, ``judge`` scoring the edits: structures
    together in the build pool (``structured.refine_many``), programs outside the codec one after
    another, their numbers tuned through the sandbox. Returns the refined candidates, in order,
    and the number of candidates evaluated."""
    from img2cq.structured import refine_many

    structured = [k for k, c in enumerate(starts) if c.sketches is not None]
    refined = refine_many([starts[k].sketches for k in structured], [starts[k].agreement for k in structured],
                          reference, pool, seconds_each * len(structured), seed, judge=judge)
    out, evaluated = list(starts), 0
    for k, (sketches, score, count) in zip(structured, refined):
        out[k] = Candidate(codec.to_program(sketches), starts[k].source + "+refined", score, sketches)
        evaluated += count
    for k, candidate in enumerate(starts):
        if candidate.sketches is None:
            program, score, count = refine_text(candidate.program, reference, executor, seconds_each,
                                                candidate.agreement, seed + k, judge)
            out[k] = Candidate(program, candidate.source + "+refined", score, None)
            evaluated += count
    return out, evaluated


def score_candidates(candidates: list[Candidate], reference: Masks, pool, executor, judge,
                     measure: bool = False) -> list[Candidate]:
    """Set each candidate's ``agreement`` to ``judge``'s score of its render, and with ``measure``
    each structure's ``solid``; returns those scored (structures in ``pool``, programs outside the
    codec in ``executor``, skipped without one)."""
    from img2cq.structured import score_and_measure_structures, score_structures

    structured = [c for c in candidates if c.sketches is not None]
    if measure:
        scores, solids = score_and_measure_structures([c.sketches for c in structured], reference, pool, judge)
        for candidate, solid in zip(structured, solids):
            candidate.solid = solid
    else:
        scores = score_structures([c.sketches for c in structured], reference, pool, judge)
    for candidate, score in zip(structured, scores):
        candidate.agreement = score
    texts = [c for c in candidates if c.sketches is None] if executor is not None else []
    for candidate, score in zip(texts, judge(reference, render_programs([c.program for c in texts], executor)) if texts else []):
        candidate.agreement = score
    return structured + texts


def consensus(scores, ious_with, top: int = CONSENSUS_TOP, temperature: float = CONSENSUS_TEMPERATURE) -> np.ndarray:
    """Each candidate's expected 3D IoU with the pictured part, were the part one of the judge's
    ``top`` best-scored candidates, each with probability softmax(score / ``temperature``): minimum
    Bayes risk. A judge of pictures ranks look-alike candidates poorly; their 3D likeness to the
    ones it is surest of ranks them much better (docs/search.md). ``ious_with(columns)``: the (n,
    len(columns)) 3D IoUs of every candidate with the candidates ``columns``. -inf where the
    judge's score is not finite (no render)."""
    scores = np.asarray(scores, float)
    finite = np.isfinite(scores)
    out = np.full(len(scores), -np.inf)
    columns = best_scored(scores, top)
    if columns:
        weights = np.exp((scores[columns] - scores[columns[0]]) / temperature)
        out[finite] = np.asarray(ious_with(columns))[finite] @ weights / weights.sum()
    return out


def best_scored(scores, top: int) -> list[int]:
    """The indices of the ``top`` best finite ``scores``, best first (ties: the earlier first)."""
    scores = np.asarray(scores, float)
    finite = np.flatnonzero(np.isfinite(scores))
    return finite[np.argsort(-scores[finite], kind="stable")][:top].tolist()


def ranked_after(scores, ious_with, kept_ious, top: int = CONSENSUS_TOP) -> np.ndarray:
    """Each candidate's rank once the search has kept a part: ``KEPT_WEIGHT`` of its 3D IoU with
    the kept (refined) part, ``kept_ious``, and the rest its ``consensus`` with the judge's ``top``
    best. The kept part is nearer the pictured one than the judge's pick, so likeness to it ranks
    the candidates better than the judge or its consensus (Spearman with the true IoU: docs/search.md)."""
    return KEPT_WEIGHT * np.asarray(kept_ious, float) + (1 - KEPT_WEIGHT) * consensus(scores, ious_with, top)


def with_solids(candidates: list[Candidate], reference: Masks, pool, executor, judge) -> list[Candidate]:
    """Copies of ``candidates``, each codec structure without a measured solid built and measured
    once more (a refined part is scored, not measured, while it is refined)."""
    copies = [replace(c) for c in candidates]
    unmeasured = [c for c in copies if c.solid is None and c.sketches is not None]
    if unmeasured:
        score_candidates(unmeasured, reference, pool, executor, judge, measure=True)
    return copies


def kept_of(finals: list[Candidate], reference: Masks, pool, executor, judge) -> Candidate:
    """The refined final to keep, measured: the one of highest ``consensus`` among ``finals``
    (``with_solids``; a program outside the codec has no solid, so no likeness). Refinement leaves several finals the judge scores alike; their 3D likeness to
    its surest ones picks the better part (Spearman with the true IoU among the finals 0.48 by the
    judge, 0.70 by consensus, synthetic; docs/search.md)."""
    from img2cq.iou import pairwise_ious

    measured = with_solids(finals, reference, pool, executor, judge)
    rank = consensus([c.agreement for c in measured], lambda columns: pairwise_ious([c.solid for c in measured], columns))
    return measured[int(np.argmax(rank))]  # with its solid: alternatives compare with it as it is


def alternatives_to(kept: Candidate, head: list[Candidate], reference: Masks, pool, executor, judge) -> list[Candidate]:
    """The measured candidates ``head`` best first by ``ranked_after`` the ``kept`` one, less the kept
    part's own start and those that do not build."""
    from img2cq.iou import pairwise_ious

    anchor, = with_solids([kept], reference, pool, executor, judge)
    scores = [c.agreement for c in head]
    voters = best_scored(scores, CONSENSUS_TOP)  # consensus's columns and the kept part's: each solid gridded once
    ious = pairwise_ious([c.solid for c in head] + [anchor.solid], voters + [len(head)])[:len(head)]
    rank = ranked_after(scores, lambda columns: ious[:, [voters.index(j) for j in columns]], ious[:, -1])
    start = kept.source.removesuffix("+refined")
    return [head[k] for k in np.argsort(-rank, kind="stable") if np.isfinite(rank[k]) and head[k].source != start]


def pick_and_refine(image: Image.Image, proposals: list[Candidate], refine_seconds: float, pool,
                    executor=None, seed: int = 0, judge=None, refine_judge=agreements, more=None,
                    refine_top: int | None = None, consensus_top: int = 0, alternatives: int = 0,
                    keep_by_consensus: bool = True) -> SearchResult:
    """Score the proposals by ``judge`` (default: ``comparator.default_judge()``), and those
    ``more(scored)`` adds (a retrieve-and-edit model's edits of the best, ``edits_of``); rank them
    by the judge (with ``consensus_top``, e.g. ``CONSENSUS_TOP``: its best ``CONSENSUS_ROWS``
    re-ranked by their ``consensus`` with the ``consensus_top`` it scores best; it ranks better,
    but searched no better: off by default, docs/search.md); refine each of the
    ``refine_top`` best (default: ``default_refine_top``) for ``refine_seconds / refine_top`` by
    ``refine_judge`` (default: the hand-made agreement; the learned one, which ranks a shortlist
    better, is fooled by edits), a refined program standing in for its start where
    ``refine_judge`` prefers it; of several such finals keep the one of highest consensus among
    them (``kept_of``; ``keep_by_consensus`` False: the one ``judge`` scores best). The result's
    ``agreement`` is ``judge``'s score; with ``alternatives``, that many other candidates, best first
    (``alternatives_to``: their likeness to the kept part)."""
    from img2cq.iou import pairwise_ious
    from img2cq.comparator import default_judge

    judge = judge or default_judge()
    started = time.perf_counter()
    reference = Masks.from_views(views_from_image(image))
    measure = consensus_top > 0 or alternatives > 0
    scored = score_candidates([replace(c) for c in proposals], reference, pool, executor, judge, measure)  # the caller's stay as given
    if more is not None:
        scored += score_candidates(more(scored), reference, pool, executor, judge, measure)
    if not scored:
        raise ValueError("no candidate to search: give a model, a library or an executor for its programs")
    ranked = sorted(scored, key=lambda c: -c.agreement)  # stable: ties keep the earlier
    if consensus_top > 0:
        head = ranked[:CONSENSUS_ROWS]
        rank = consensus([c.agreement for c in head], lambda columns: pairwise_ious([c.solid for c in head], columns),
                         consensus_top)
        ranked = [head[k] for k in np.argsort(-rank, kind="stable")] + ranked[CONSENSUS_ROWS:]
    result = SearchResult(ranked[0].program, ranked[0].agreement, ranked[0].source, scored)
    refine_top = default_refine_top(refine_seconds) if refine_top is None else refine_top
    starts = [c for c in ranked[:refine_top] if math.isfinite(c.agreement)] if refine_seconds > 0 else []
    finals = []
    if starts:
        starts_scored = [replace(c) for c in starts]
        if refine_judge is not judge:
            score_candidates(starts_scored, reference, pool, executor, refine_judge)
        refined, result.refine_evaluations = refine_candidates(starts_scored, reference, refine_seconds / len(starts),
                                                               pool, executor, seed, refine_judge)
        better = [r.agreement > s.agreement for r, s in zip(refined, starts_scored)]
        improved = [r for r, b in zip(refined, better) if b]
        if refine_judge is not judge:
            score_candidates(improved, reference, pool, executor, judge)
        result.candidates += improved
        finals = [r if b else c for r, b, c in zip(refined, better, starts)]
    if len(finals) > 1:
        kept = kept_of(finals, reference, pool, executor, judge) if keep_by_consensus else \
            max(finals, key=lambda c: c.agreement)
    else:
        kept = finals[0] if finals else ranked[0]
    result.program, result.agreement, result.source = kept.program, kept.agreement, kept.source
    if alternatives:
        result.alternatives = alternatives_to(kept, ranked[:CONSENSUS_ROWS], reference, pool, executor,
                                              judge)[:alternatives]
    result.seconds = time.perf_counter() - started
    return result


def default_shortlist(refine_seconds: float) -> int:
    """How many library parts a search renders and re-ranks: ``SHORTLIST``, or
    ``SHORTLIST_ONE_START`` when ``refine_seconds`` refines the best alone (with 1 s, 64 parts
    searched no better than 24 and took 0.5 s longer; docs/search.md)."""
    return SHORTLIST_ONE_START if default_refine_top(refine_seconds) == 1 else SHORTLIST


def default_refine_top(refine_seconds: float) -> int:
    """How many of the best-ranked candidates share ``refine_seconds``: refining a few hedges the
    judge's ranking errors, once each still gets ``REFINE_SECONDS_EACH`` (docs/search.md)."""
    return max(1, min(REFINE_TOP, int(refine_seconds // REFINE_SECONDS_EACH)))


def search(model, image: Image.Image, candidates: int = 8, refine_seconds: float = 0.0, pool=None, executor=None,
           library=None, shortlist: int | None = None, max_new_tokens: int | None = None, seed: int = 0,
           judge=None, refine_top: int | None = None, alternatives: int = 0) -> SearchResult:
    """The program whose render agrees best with ``image``, from the model's ``candidates``
    proposals (no model: none) and the library's ``shortlist`` nearest parts (default:
    ``default_shortlist``), then refined for ``refine_seconds`` (shared by the ``refine_top``
    best), and ``alternatives`` other candidates, best first. ``pool``: a ``BuildPool`` (the
    process's shared one when None)."""
    from img2cq.build import shared_pool

    started = time.perf_counter()
    image = on_white(image)  # once: the model, the library and the agreement each read the picture
    shortlist = default_shortlist(refine_seconds) if shortlist is None else shortlist
    proposals = propose(model, [image], candidates, max_new_tokens)[0] if proposes(model) else []
    proposals += retrieve(library, image, shortlist)
    result = pick_and_refine(image, proposals, refine_seconds, pool or shared_pool(), executor, seed, judge,
                             more=editor(model, image, candidates), refine_top=refine_top, alternatives=alternatives)
    result.seconds = time.perf_counter() - started
    return result


def proposes(model) -> bool:
    """Whether the model writes proposals before re-ranking (a retrieve-and-edit model writes after it)."""
    return model is not None and not model.edits


def editor(model, image: Image.Image, candidates: int):
    """``pick_and_refine``'s ``more`` for a retrieve-and-edit model: its edits of the best ranked."""
    if model is None or not model.edits:
        return None
    return lambda ranked: edits_of(model, image, ranked, candidates)


def search_label(candidates: int, refine_seconds: float) -> str:
    """The ``decoding`` column of a searched row, e.g. ``greedy+cand8+refine20``."""
    label = "greedy"
    if candidates > 1:
        label += f"+cand{candidates}"
    if refine_seconds > 0:
        label += f"+refine{refine_seconds:g}"
    return label


def search_many(model, images: list[Image.Image], candidates: int = 8, refine_seconds: float = 0.0,
                workers: int = 2, library=None, shortlist: int | None = None, max_new_tokens: int | None = None,
                batch_size: int = 8, progress: bool = True, judge=None,
                refine_judge=agreements, refine_top: int | None = None,
                consensus_top: int = 0, keep_by_consensus: bool = True) -> list[SearchResult]:
    """``search`` for many images with one build pool and one sandbox pool, the model proposing
    for ``batch_size`` images at a time (each result's ``seconds`` includes its share of the
    batch); ``judge``, ``refine_judge``, ``refine_top``, ``consensus_top`` and
    ``keep_by_consensus`` as in ``pick_and_refine``. Ctrl-C returns the finished results."""
    from tqdm.auto import tqdm

    from img2cq.build import BuildPool
    from img2cq.sandbox import Executor

    shortlist = default_shortlist(refine_seconds) if shortlist is None else shortlist

    results: list[SearchResult] = []
    with BuildPool(workers) as pool, Executor(workers=workers, preload=PRELOAD) as ex:
        pool.wait_ready()  # workers started before the clock runs
        bar = tqdm(total=len(images), desc=f"searching ({search_label(candidates, refine_seconds)})", unit="img",
                   disable=not progress)
        try:
            for start in range(0, len(images), batch_size):
                started = time.perf_counter()
                batch = [on_white(image) for image in images[start:start + batch_size]]
                proposals = propose(model, batch, candidates, max_new_tokens) if proposes(model) else [[] for _ in batch]
                share = (time.perf_counter() - started) / len(batch)
                for i, (image, own) in enumerate(zip(batch, proposals)):
                    started = time.perf_counter()
                    own = own + retrieve(library, image, shortlist)
                    result = pick_and_refine(image, own, refine_seconds, pool, ex, seed=start + i, judge=judge,
                                             refine_judge=refine_judge, more=editor(model, image, candidates),
                                             refine_top=refine_top, consensus_top=consensus_top,
                                             keep_by_consensus=keep_by_consensus)
                    result.seconds = time.perf_counter() - started + share
                    results.append(result)
                    bar.update(1)
                    bar.set_postfix(agreement=f"{result.agreement:.3f}",
                                    s_per_img=f"{np.mean([r.seconds for r in results]):.1f}")
        except KeyboardInterrupt:
            bar.write(f"interrupted: keeping the {len(results)} searched images")
        finally:
            bar.close()
    return results


def search_rows(model, rows: list[dict], candidates: int, refine_seconds: float, train_json: str | None = None,
                workers: int = 2, max_new_tokens: int | None = None, shortlist: int | None = None,
                library_dir: str | None = None) -> tuple[list[str], str, list[SearchResult]]:
    """Searched programs for evaluation rows (``evaluate_model``), their ``decoding`` label and the
    search results. Retrieval from the library of ``train_json`` (built once and saved beside
    it), else from ``library_dir`` (default: the shipped part library).

    Fewer programs than rows come back after Ctrl-C: the rows searched so far.
    """
    from img2cq.library import PartLibrary

    library = PartLibrary.from_split(train_json) if train_json else PartLibrary.load(library_dir)
    results = search_many(model, [r["image"] for r in rows], candidates, refine_seconds, workers, library,
                          shortlist, max_new_tokens)
    return [r.program for r in results], search_label(candidates, refine_seconds), results
