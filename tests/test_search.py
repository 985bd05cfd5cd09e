"""Test-time search: agreement, candidate choice, refinement of programs outside the codec."""

import io
import json
import tokenize
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from img2cq import agreement, search
from img2cq.evaluation import CONSTANT_PROGRAM

ROOT = Path(__file__).resolve().parents[1]
PLATE_BOSS = (ROOT / "tests/fixtures/render/plate_boss.py").read_text()
L_SHAPE = """import cadquery as cq
# Generating a workplane for sketch 0
wp_sketch0 = cq.Workplane(cq.Plane(cq.Vector(-0.7499382086298804, -0.641548701913843, 0.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))
loop0=wp_sketch0.moveTo(1.4998764172597607, 0.0).lineTo(1.4998764172597607, 0.32809796627557264).lineTo(0.32809796627557264, 0.32809796627557264).lineTo(0.32809796627557264, 1.283097403827686).lineTo(0.0, 1.283097403827686).lineTo(0.0, 0.0).close()
solid0=wp_sketch0.add(loop0).extrude(0.5683125487273312, both=True)
solid=solid0
"""


@pytest.fixture(scope="module")
def executor():
    from img2cq.sandbox import Executor

    with Executor(workers=2, preload=search.PRELOAD) as ex:
        yield ex


def rendered_image(code, executor) -> Image.Image:
    """The program's dataset-style PNG, rendered in the sandbox, as a user would hold it."""
    result = executor.run(code, mesh=False, postprocess="img2cq.data:validate_and_render")
    assert result.ok, result.message
    return Image.open(io.BytesIO(result.extras["value"]["png"]))


def test_agreement_prefers_the_right_program(executor):
    reference = agreement.Masks.from_views(agreement.views_from_image(rendered_image(PLATE_BOSS, executor)))
    right, wrong = agreement.render_programs([PLATE_BOSS, CONSTANT_PROGRAM], executor)
    assert agreement.agreement(reference, right) > 0.95
    assert agreement.agreement(reference, right) > agreement.agreement(reference, wrong) + 0.1


class FixedModel:
    """A model that writes a broken program greedily and a valid one with beam search."""

    edits = False  # writes from the picture alone, not from a retrieved part

    def generate(self, images, num_beams=1, max_new_tokens=None, **kwargs):
        return ["import cadquery as cq\nsolid = cq.Workplane().box(1, 1,"] if num_beams == 1 else [CONSTANT_PROGRAM]


def test_a_candidate_that_fails_to_build_never_wins(executor, build_pool):
    image = rendered_image(CONSTANT_PROGRAM, executor)
    result = search.search(FixedModel(), image, candidates=2, pool=build_pool, executor=executor,
                           judge=agreement.agreements)
    assert result.program == CONSTANT_PROGRAM and result.source.startswith("beam")
    scores = {c.source: c.agreement for c in result.candidates}
    assert scores["greedy"] == -np.inf and scores[result.source] > 0.9


def test_consensus_ranks_look_alikes_by_their_3d_likeness_to_the_judges_best():
    """Minimum Bayes risk: each candidate's IoU with the judge's best few, weighted by the judge."""
    scores = np.array([0.90, 0.88, 0.60, -np.inf, 0.87])
    likeness = np.array([[1.0, 0.9, 0.2, 0.0, 0.3],     # 0 and 1 are alike; 4 looks right but is another part
                         [0.9, 1.0, 0.3, 0.0, 0.3],
                         [0.2, 0.3, 1.0, 0.0, 0.2],
                         [0.0, 0.0, 0.0, 1.0, 0.0],
                         [0.3, 0.3, 0.2, 0.0, 1.0]])
    asked = []

    def ious_with(columns):
        asked.append(columns)
        return likeness[:, columns]

    ranked = search.consensus(scores, ious_with, top=3, temperature=0.05)
    assert asked == [[0, 1, 4]]                          # only the judge's three best are compared against
    assert ranked[3] == -np.inf                          # what does not render stays last
    assert list(np.argsort(-ranked)[:3]) == [0, 1, 4]    # the pair that agrees with each other first
    assert ranked[2] < ranked[4]
    alone = search.consensus(scores, ious_with, top=1)  # likeness to the judge's best alone
    assert alone[0] == 1.0 and np.allclose(alone[[1, 2, 4]], [0.9, 0.2, 0.3])
    assert (search.consensus([-np.inf, -np.inf], ious_with) == -np.inf).all()


def test_alternatives_rank_by_likeness_to_the_kept_part_and_consensus():
    """Once a part is kept, a candidate's rank is half its 3D IoU with the kept part, half its consensus."""
    scores = np.array([0.90, 0.88, 0.60, -np.inf])
    likeness = np.array([[1.0, 0.5, 0.2, 0.0],
                         [0.5, 1.0, 0.3, 0.0],
                         [0.2, 0.3, 1.0, 0.0],
                         [0.0, 0.0, 0.0, 1.0]])
    kept_ious = np.array([0.6, 0.95, 0.1, 0.0])  # the kept (refined) part is most like candidate 1
    ranked = search.ranked_after(scores, lambda columns: likeness[:, columns], kept_ious, top=1)
    assert np.allclose(ranked[:3], 0.5 * kept_ious[:3] + 0.5 * likeness[:3, 0])
    assert list(np.argsort(-ranked)[:3]) == [0, 1, 2] and ranked[3] == -np.inf
    ranked = search.ranked_after(scores, lambda columns: likeness[:, columns], kept_ious, top=2)
    assert ranked[1] > ranked[0]  # with the judge's two best voting, likeness to the kept part decides


def test_of_several_refined_finals_the_one_the_others_agree_with_is_kept(monkeypatch):
    """The judge's best final is an outlier; the two it scores next are alike: one of them is kept."""
    from img2cq import iou

    finals = [search.Candidate(f"program {k}", f"library:{k}+refined", score, sketches=[], solid=f"solid {k}")
              for k, score in enumerate([0.90, 0.89, 0.88])]
    likeness = np.array([[1.0, 0.2, 0.2],
                         [0.2, 1.0, 0.9],
                         [0.2, 0.9, 1.0]])
    monkeypatch.setattr(iou, "pairwise_ious",
                        lambda solids, columns: likeness[:, columns] if solids == [c.solid for c in finals] else None)
    kept = search.kept_of(finals, reference=None, pool=None, executor=None, judge=None)  # every final has its solid
    assert kept.program == "program 1" and kept.solid == "solid 1"


def non_number_tokens(code):
    return [t.string for t in tokenize.generate_tokens(io.StringIO(code).readline) if t.type != tokenize.NUMBER]


def test_numeric_parameters_round_trip_and_keep_plane_directions():
    params = search.numeric_parameters(L_SHAPE)
    assert params.program(params.values) == L_SHAPE
    # origin (2 non-zero), 1.4998, 0.3281, 1.2831, depth; directions and zeros are not parameters
    assert len(params.values) == 6
    changed = params.program(params.values * 2)
    assert "cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)" in changed
    assert "cq.Vector(-1.4998764172597607, -1.283097403827686, 0.0)" in changed


def test_refinement_improves_a_perturbed_program(executor):
    reference = agreement.Masks.from_views(agreement.views_from_image(rendered_image(L_SHAPE, executor)))
    params = search.numeric_parameters(L_SHAPE)
    perturbed = params.program(params.values * np.array([1, 1, 1, 1.6, 0.7, 1.4]))
    start = agreement.agreement(reference, agreement.render_programs([perturbed], executor)[0])
    refined, score, evaluated = search.refine_text(perturbed, reference, executor, seconds=8, start_score=start,
                                                   judge=agreement.agreements)
    assert evaluated > 0 and score > start
    assert score == pytest.approx(agreement.agreement(reference, agreement.render_programs([refined], executor)[0]))
    # structure kept: the same text apart from the numbers, still parsed into the same parameters
    assert non_number_tokens(refined) == non_number_tokens(L_SHAPE)
    assert len(search.numeric_parameters(refined).spans) == len(params.spans)
