"""The learned agreement: training pairs (resumable, measured), the model's save/load, scoring."""
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from img2cq import agreement, codec, comparator
from img2cq.data import draw_rng
from img2cq.library import PartLibrary
from img2cq.sampler import sample_program

SEED = 77
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shipped_library():
    return PartLibrary.load(None)


def test_pairs_are_measured_and_a_stopped_run_resumes(tmp_path, shipped_library, monkeypatch):
    monkeypatch.setattr(comparator, "CHUNK", 2)
    monkeypatch.setattr(comparator, "SHORTLIST_POOL", 6)
    monkeypatch.setattr(comparator, "FROM_SHORTLIST", 3)
    monkeypatch.setattr(comparator, "EDITS_OF_NEAREST", 1)
    monkeypatch.setattr(comparator, "EDITS_OF_QUERY", 2)
    comparator.generate_pairs(tmp_path, 2, SEED, shipped_library, progress=False)
    first = comparator.pair_path(tmp_path, SEED, 0)
    written = first.stat().st_mtime_ns
    comparator.generate_pairs(tmp_path, 4, SEED, shipped_library, progress=False)  # resumes at chunk 1
    assert first.stat().st_mtime_ns == written and comparator.pair_path(tmp_path, SEED, 1).is_file()
    records = comparator.read_pairs(tmp_path, SEED)
    pairs = comparator.PairSet.from_records(records, progress=False)
    assert len(pairs.references) >= 3 and len(pairs.iou) == len(pairs.candidates) == len(pairs.hand)
    assert set(np.unique(pairs.source)) <= {-2, -1, 0, 1, 2, 3, 4, 5} and 0 in pairs.source
    assert ((pairs.iou >= 0) & (pairs.iou <= 1 + 1e-6)).all()
    # an edit of the query itself is, on the whole, far closer to it than a retrieved stranger
    assert pairs.iou[pairs.source == -2].mean() > pairs.iou[pairs.source >= 1].mean()


def test_variant_pairs_are_a_near_miss_and_its_number_variants(tmp_path, shipped_library, monkeypatch):
    monkeypatch.setattr(comparator, "CHUNK", 2)
    monkeypatch.setattr(comparator, "NEAR_MISS_SHORTLIST", 3)
    monkeypatch.setattr(comparator, "NEAR_MISS_REFINE_S", 0.2)
    monkeypatch.setattr(comparator, "VARIANTS", 5)
    comparator.generate_pairs(tmp_path, 2, SEED, shipped_library, progress=False, kind="variants")
    pairs = comparator.PairSet.from_records(comparator.read_pairs(tmp_path, SEED), progress=False)
    assert len(pairs.references) >= 1 and ((pairs.iou >= 0) & (pairs.iou <= 1 + 1e-6)).all()
    for group in pairs.groups():  # the near miss first, then up to 5 distinct variants of it
        assert pairs.source[group[0]] == -3 and set(pairs.source[group[1:]]) == {-4} and 2 <= len(group) <= 6


def test_variant_candidates_differ_from_the_near_miss_in_one_number():
    start = codec.parse(sample_program(draw_rng(5, "train", 3)))
    candidates, sources = comparator.variant_candidates(start, np.random.default_rng(0))
    assert candidates[0] == start and sources == [-3] + [-4] * (len(candidates) - 1) and len(candidates) >= 6
    assert all(c != start for c in candidates[1:]) and len({repr(c) for c in candidates}) == len(candidates)


def test_a_saved_model_loads_and_scores_alike(tmp_path):
    members = [comparator.build_model(comparator.ComparatorConfig(width=4)) for _ in range(2)]
    comparator.LearnedAgreement(members).save(tmp_path / "m", {"note": "test"})
    loaded = comparator.LearnedAgreement.load(tmp_path / "m")
    rng = np.random.default_rng(0)
    views = [rng.random((2, agreement.FRAME, agreement.FRAME)) < 0.3 for _ in range(2)]
    reference = agreement.Masks.from_views(views[0])
    scores = loaded.scores(reference, [views[0], None, views[1]])
    assert scores[1] == -math.inf and all(0 < s < 1 for s in (scores[0], scores[2]))
    assert scores == pytest.approx(comparator.LearnedAgreement(members).scores(reference, [views[0], None, views[1]]))
    alone = [comparator.LearnedAgreement([m]).scores(reference, [views[0], views[1]]) for m in members]
    assert alone[0] != pytest.approx(alone[1])  # two random starts, and the ensemble scores their mean
    assert [scores[0], scores[2]] == pytest.approx(np.mean(alone, axis=0).tolist())
    assert loaded.card == {"note": "test"}
    comparator.LearnedAgreement(members[:1]).save(tmp_path / "m", {"note": "one"})  # replaces the pair
    assert len(comparator.LearnedAgreement.load(tmp_path / "m").members) == 1
    with pytest.raises(FileNotFoundError, match="no comparator"):
        comparator.LearnedAgreement.load(tmp_path / "missing")


def test_saved_comparators_join_into_one_that_scores_their_mean(tmp_path):
    sources = []
    for k, width in enumerate((4, 4, 8)):
        sources.append(tmp_path / f"c{k}")
        comparator.LearnedAgreement([comparator.build_model(comparator.ComparatorConfig(width=width))]).save(
            sources[-1], {"note": k})
    script = [sys.executable, "scripts/train_comparator.py", "--join"]
    done = subprocess.run([*script, *map(str, sources[:2]), "--out", str(tmp_path / "joined")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    joined = comparator.LearnedAgreement.load(tmp_path / "joined")
    assert [c["note"] for c in joined.card["joined"]] == [0, 1] and "--join" in joined.card["command"]
    rng = np.random.default_rng(1)
    views = [rng.random((2, agreement.FRAME, agreement.FRAME)) < 0.3 for _ in range(3)]
    reference = agreement.Masks.from_views(views[0])
    alone = [comparator.LearnedAgreement.load(s).scores(reference, views[1:]) for s in sources[:2]]
    assert joined.scores(reference, views[1:]) == pytest.approx(np.mean(alone, axis=0).tolist())
    refused = subprocess.run([*script, *map(str, sources[1:]), "--out", str(tmp_path / "mixed")], cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "cannot join comparators of different architectures" in refused.stderr
    assert not (tmp_path / "mixed").exists()


def test_the_search_judges_with_the_shipped_model():
    judge = comparator.default_judge()
    assert judge.__func__ is comparator.LearnedAgreement.blended_scores
    shipped = judge.__self__
    assert len(shipped.members) == shipped.card["members"] == len(shipped.card["joined"]) == 2
    assert all(member["held_out"]["spearman"] > 0.5 for member in shipped.card["joined"])


def test_rank_quality_counts_the_kept_candidate_and_the_order():
    rho, kept = comparator.rank_quality([(np.array([3.0, 2.0, 1.0]), np.array([0.9, 0.5, 0.1])),
                                         (np.array([1.0, 2.0, 3.0]), np.array([0.9, 0.5, 0.1]))])
    assert rho == pytest.approx(0.0) and kept == pytest.approx(0.5)


def test_the_shipped_judge_keeps_the_pictured_part(shipped_library, build_pool):
    from PIL import Image

    from img2cq import search
    from img2cq.build import build_shape, result_shape
    from img2cq.render import render_array

    for part in (123, 45678):
        shape = result_shape(build_shape(shipped_library.sketches(part), seams=True))
        image = Image.fromarray(render_array(shape, size=agreement.FRAME))
        result = search.search(None, image, refine_seconds=0, pool=build_pool, library=shipped_library, shortlist=8)
        assert result.source == f"library:{part}" and result.agreement > 0.8
