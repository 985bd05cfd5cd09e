"""Structured refinement: edits stay in the codec's grammar, and refinement recovers proportions."""
import dataclasses
import math

import numpy as np
import pytest
from PIL import Image

from img2cq import agreement, codec, search, structured
from img2cq.agreement import FRAME
from img2cq.build import build_shape, result_shape, structure_views
from img2cq.render import render_array
from img2cq.data import draw_rng
from img2cq.sampler import sample_program


def test_every_edit_stays_a_codec_structure():
    rng = np.random.default_rng(0)
    changed = 0
    for i in range(40):
        start = codec.parse(sample_program(draw_rng(5, "train", i)))
        before = codec.to_tokens(start)
        current = start
        for _ in range(10):
            current = structured.mutate(current, rng)
            assert codec.from_tokens(codec.to_tokens(current)) == current  # strict: every number in range
        assert codec.to_tokens(start) == before  # the input is never changed
        changed += current != start
    assert changed >= 35


def test_refinement_recovers_a_stretched_part(build_pool):
    target = codec.parse(sample_program(draw_rng(5, "train", 3)))
    first = target[0]
    stretched = [dataclasses.replace(first, scale=int(first.scale * 1.3), distance=int(first.distance * 0.6)), *target[1:]]
    reference = agreement.Masks.from_views(agreement.unpack_views(build_pool.map(structure_views, [target])[0]))
    start = structured.score_structures([stretched], reference, build_pool)[0]
    refined, score, evaluated = structured.refine(stretched, reference, build_pool, seconds=6.0, start_score=start)
    assert evaluated >= 16 and score > start + 0.03
    assert score == structured.score_structures([refined], reference, build_pool)[0]


def test_structures_refined_together_each_improve_on_their_own(build_pool):
    """refine_many interleaves the evolutions in the pool; each keeps its own best and count."""
    target = codec.parse(sample_program(draw_rng(5, "train", 3)))
    first = target[0]
    starts = [[dataclasses.replace(first, scale=int(first.scale * f), distance=int(first.distance * d)), *target[1:]]
              for f, d in ((1.3, 0.6), (0.75, 1.5), (1.0, 1.0))]
    reference = agreement.Masks.from_views(agreement.unpack_views(build_pool.map(structure_views, [target])[0]))
    scores = structured.score_structures(starts, reference, build_pool)
    results = structured.refine_many(starts, scores, reference, build_pool, seconds=9.0)
    for (refined, score, evaluated), start, start_score in zip(results, starts, scores):
        assert evaluated >= 16 and score >= start_score
        assert score == structured.score_structures([refined], reference, build_pool)[0]
    assert results[0][1] > scores[0] + 0.03 and results[1][1] > scores[1] + 0.03  # the stretched ones recover
    assert structured.refine_many([], [], reference, build_pool, seconds=1.0) == []


def test_the_search_refines_each_of_its_best_candidates(build_pool):
    target = codec.parse(sample_program(draw_rng(5, "train", 3)))
    image = Image.fromarray(render_array(result_shape(build_shape(target, seams=True)), size=agreement.FRAME))
    first = target[0]
    starts = [[dataclasses.replace(first, scale=int(first.scale * f), distance=int(first.distance * d)), *target[1:]]
              for f, d in ((1.3, 0.6), (0.75, 1.5))]
    proposals = [search.Candidate(codec.to_program(s), f"library:{i}", -math.inf, s) for i, s in enumerate(starts)]
    result = search.pick_and_refine(image, proposals, 8.0, build_pool, judge=agreement.agreements, refine_top=2)
    refined = [c for c in result.candidates if c.source.endswith("+refined")]
    assert sorted(c.source for c in refined) == ["library:0+refined", "library:1+refined"]  # both were refined
    assert result.refine_evaluations >= 32
    starts_scored = [c for c in result.candidates if not c.source.endswith("+refined")]
    assert sorted(c.source for c in starts_scored) == ["library:0", "library:1"]
    assert result.agreement == max(c.agreement for c in refined) > max(c.agreement for c in starts_scored) > -math.inf
    assert result.program == codec.to_program(max(refined, key=lambda c: c.agreement).sketches)
    # by default the best alone at 1 s; the best seven share 7 s or more (each gets 1 s or more)
    assert [search.default_refine_top(s) for s in (0, 1, 1.9, 4, 7, 20)] == [1, 1, 1, 4, 7, 7]
    assert [search.default_shortlist(s) for s in (0, 1, 1.9, 2, 7)] == [24, 24, 24, 64, 64]  # 24 when one is refined


def test_candidates_are_measured_as_they_are_built_and_compared_as_the_metric_would(build_pool):
    """The search's build job renders a structure and measures its solid (a coarser mesh than the
    metric's): candidates' IoUs with one another stay within 0.01 of the metric's."""
    from img2cq.build import _measured, structure_views_and_solid
    from img2cq.iou import iou_from_results, pairwise_ious

    parts = [codec.parse(sample_program(draw_rng(8, "train", i))) for i in range(4)]
    built = build_pool.map(structure_views_and_solid, parts)
    assert all(views is not None and solid.ok for views, solid in built)
    assert [views for views, _ in built] == build_pool.map(structure_views, parts)  # rendered as alone
    fine = [_measured(p) for p in parts]
    matrix = pairwise_ious([solid for _, solid in built], [0, 1])
    for i in range(4):
        for k in range(2):
            assert matrix[i, k] == pytest.approx(1.0 if i == k else iou_from_results(fine[i], fine[k]), abs=0.01)
    image = Image.fromarray(render_array(result_shape(build_shape(parts[2], seams=True)), size=FRAME))
    proposals = [search.Candidate(codec.to_program(p), f"library:{i}", -math.inf, p) for i, p in enumerate(parts)]
    result = search.pick_and_refine(image, proposals, 0.0, build_pool, judge=agreement.agreements,
                                    consensus_top=search.CONSENSUS_TOP)
    assert result.program == codec.to_program(parts[2]) and all(c.solid.ok for c in result.candidates)
    assert all(c.agreement == -math.inf and c.solid is None for c in proposals)  # the caller's proposals stay as given
    plain = search.pick_and_refine(image, proposals, 0.0, build_pool, judge=agreement.agreements)  # the default
    assert plain.program == result.program and all(c.solid is None for c in plain.candidates)
    assert plain.alternatives == []
    others = search.pick_and_refine(image, proposals, 0.5, build_pool, judge=agreement.agreements, alternatives=2)
    start = others.source.removesuffix("+refined")
    assert start == "library:2" and [c.source for c in others.alternatives] != []
    assert len(others.alternatives) == 2 and start not in [c.source for c in others.alternatives]
    assert all(c.program == codec.to_program(c.sketches) for c in others.alternatives)
    two = search.pick_and_refine(image, proposals, 1.0, build_pool, judge=agreement.agreements, refine_top=2,
                                 alternatives=2)  # two refined finals: the one the other agrees with is kept
    assert two.source.removesuffix("+refined") == "library:2" and len(two.alternatives) == 2


def test_a_build_job_that_fails_is_a_candidate_that_does_not_build(build_pool):
    """A job that raised, timed out or killed its worker (the pool gives None for it) scores -inf and
    measures no solid; the search goes on with the others."""
    from img2cq.build import structure_views_and_solid

    parts = [codec.parse(sample_program(draw_rng(8, "train", i))) for i in range(2)]
    reference = agreement.Masks.from_views(agreement.unpack_views(build_pool.map(structure_views, parts[:1])[0]))

    class FirstJobFails:
        def map(self, function, items):
            assert function.func is structure_views_and_solid
            return [None, *build_pool.map(function, items[1:])]

    scores, solids = structured.score_and_measure_structures(parts, reference, FirstJobFails())
    assert scores[0] == -math.inf and solids[0] is None
    assert math.isfinite(scores[1]) and solids[1].ok


def test_number_variants_change_one_number_and_stay_codec_structures():
    """The grid of benchmarks/bench_number_edits.py: each variant differs from the part in one sketch, in
    range (strict codec round trip), and no variant repeats the part or another variant."""
    for i in range(20):
        part = codec.parse(sample_program(draw_rng(6, "train", i)))
        variants = structured.number_variants(part)
        assert len(variants) >= 10 * len(part)  # 26 per sketch and more, fewer where a number is at its bound
        assert part not in variants and len({repr(v) for v in variants}) == len(variants)
        for variant in variants:
            assert codec.from_tokens(codec.to_tokens(variant)) == variant
            assert sum(a != b for a, b in zip(part, variant)) == 1 and len(variant) == len(part)
