"""Test-time search: agreement, candidate choice, refinement, retrieval index."""

import io
import json
import tokenize
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from img2cq import search
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
    from img2cq.executor import Executor

    with Executor(workers=2, preload=search.PRELOAD) as ex:
        yield ex


def rendered_image(code, executor) -> Image.Image:
    """The program's dataset-style PNG, rendered in the sandbox, as a user would hold it."""
    result = executor.run(code, mesh=False, postprocess="img2cq.data:validate_and_render")
    assert result.ok, result.message
    return Image.open(io.BytesIO(result.extras["value"]["png"]))


def test_agreement_prefers_the_right_program(executor):
    reference = search.Reference.from_views(search.views_from_image(rendered_image(PLATE_BOSS, executor)))
    right, wrong = search.render_programs([PLATE_BOSS, CONSTANT_PROGRAM], executor)
    assert search.agreement(reference, right) > 0.95
    assert search.agreement(reference, right) > search.agreement(reference, wrong) + 0.1


class FixedModel:
    """A model that writes a broken program greedily and a valid one with beam search."""

    def generate(self, images, num_beams=1, max_new_tokens=None, **kwargs):
        return ["import cadquery as cq\nsolid = cq.Workplane().box(1, 1,"] if num_beams == 1 else [CONSTANT_PROGRAM]


def test_a_candidate_that_fails_to_build_never_wins(executor):
    image = rendered_image(CONSTANT_PROGRAM, executor)
    result = search.search(FixedModel(), image, candidates=2, executor=executor)
    assert result.program == CONSTANT_PROGRAM and result.source.startswith("beam")
    scores = {c.source: c.agreement for c in result.candidates}
    assert scores["greedy"] == -np.inf and scores[result.source] > 0.9


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
    reference = search.Reference.from_views(search.views_from_image(rendered_image(L_SHAPE, executor)))
    params = search.numeric_parameters(L_SHAPE)
    perturbed = params.program(params.values * np.array([1, 1, 1, 1.6, 0.7, 1.4]))
    start = search.agreement(reference, search.render_programs([perturbed], executor)[0])
    refined, score, evaluated = search.refine(perturbed, reference, executor, seconds=8, start_score=start)
    assert evaluated > 0 and score > start
    assert score == pytest.approx(search.agreement(reference, search.render_programs([refined], executor)[0]))
    # structure kept: the same text apart from the numbers, still parsed into the same parameters
    assert non_number_tokens(refined) == non_number_tokens(L_SHAPE)
    assert len(search.numeric_parameters(refined).spans) == len(params.spans)


def test_index_save_load_round_trip(tmp_path):
    (tmp_path / "images").mkdir()
    rows = []
    for i, box in enumerate([(50, 50, 400, 150), (200, 30, 260, 420), (100, 100, 300, 300)]):
        image = Image.new("RGB", (448, 448), "white")
        ImageDraw.Draw(image).rectangle(box, fill=(141, 141, 138), outline=(0, 0, 0))
        image.save(tmp_path / "images" / f"{i}.png")
        rows.append({"id": f"part{i}", "image": f"images/{i}.png", "cadquery": f"# program {i}\n"})
    train_json = tmp_path / "train.jsonl"
    train_json.write_text("".join(json.dumps(r) + "\n" for r in rows))

    built = search.load_or_build_index(train_json, progress=False)
    path = search.index_path(train_json)
    assert path == tmp_path / "train.index.npz" and path.is_file()
    loaded = search.RetrievalIndex.load(path)
    assert loaded.ids == built.ids and loaded.programs == built.programs and loaded.meta == built.meta
    np.testing.assert_array_equal(loaded.features, built.features)
    probe = Image.open(tmp_path / "images" / "1.png")
    assert loaded.nearest(probe, 1) == [("part1", "# program 1\n")]
    saved = path.stat().st_mtime_ns
    assert search.load_or_build_index(train_json, progress=False).ids == built.ids
    assert path.stat().st_mtime_ns == saved  # reused, not rebuilt
