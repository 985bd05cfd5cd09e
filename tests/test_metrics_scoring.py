"""The one scoring path: a pair the metric cannot score is recorded, and validity agrees everywhere."""

import dataclasses
import json

import pytest

from img2cq import iou, scoring
from img2cq.evaluation import score_programs
from img2cq.sandbox import Executor
from metrics import valid_syntax_rate
from metrics.best_iou import evaluate_codes, iou_from_results, score_pair

pytestmark = pytest.mark.integration

# Builds a solid at once, but meshing it at the metric's tolerance takes far longer than any timeout.
UNMESHABLE = "import cadquery as cq\nsolid = cq.Workplane().sphere(100000)\n"


def test_a_failing_fallback_is_recorded_for_its_pair(executor, reference_programs):
    reference, candidate = scoring.execute([reference_programs["box"], reference_programs["cylinder"]], executor)
    # a mesh manifold3d refuses, with a BREP OCC cannot read: the OCC fallback itself fails
    faces = candidate.faces.copy()
    faces[::3] = faces[::3, ::-1]
    broken = dataclasses.replace(candidate, faces=faces, brep=b"not a BREP")
    assert not iou._Solid(broken).is_manifold
    with pytest.raises(RuntimeError, match="exact boolean failed"):
        iou_from_results(reference, broken, executor=executor)
    out = scoring.score_results(reference, broken, executor)
    assert out["iou"] == 0.0 and out["candidate_valid"]
    assert out["metric_error"].startswith("RuntimeError: exact boolean failed")


def test_a_pair_whose_metric_raises_never_aborts_a_run(executor, reference_programs, monkeypatch):
    box, cylinder = reference_programs["box"], reference_programs["cylinder"]
    cylinder_volume = scoring.execute([cylinder], executor)[0].volume
    metric = scoring.iou_from_results

    def fails_on_the_cylinder(reference, candidate, *args):
        if candidate.volume == pytest.approx(cylinder_volume):
            raise RuntimeError("OCC boolean failed")
        return metric(reference, candidate, *args)

    monkeypatch.setattr(scoring, "iou_from_results", fails_on_the_cylinder)

    report = evaluate_codes({"same": box, "bad": box}, {"same": box, "bad": cylinder}, executor=executor)
    assert report["ious"] == {"same": pytest.approx(1.0), "bad": 0.0}
    assert report["errors"] == {"bad": "metric failed: RuntimeError: OCC boolean failed"}
    assert report["mean_iou"] == pytest.approx(0.5) and report["mean_iou_valid"] == pytest.approx(0.5)

    scores = score_programs([box, box], [box, cylinder], executor)
    assert scores["n_metric_failures"] == 1 and scores["per_sample"][1]["iou"] == 0.0
    assert scores["per_sample"][1]["metric_error"] == "RuntimeError: OCC boolean failed"
    assert scores["iou"] == pytest.approx(0.5) and scores["vsr"] == 1.0

    out = score_pair(box, cylinder, executor=executor)
    assert out["iou"] == 0.0 and out["metric_error"] == "RuntimeError: OCC boolean failed"


def test_a_program_counts_valid_in_every_path_or_in_none(reference_programs, tmp_path, capsys):
    with Executor(workers=1, timeout=2) as short:
        assert short.run(UNMESHABLE, mesh=False).ok  # it does build a solid: only meshing tells it apart
        scores = score_programs([reference_programs["box"]], [UNMESHABLE], short)
        report = evaluate_codes({"a": reference_programs["box"]}, {"a": UNMESHABLE}, executor=short)
    assert scores["vsr"] == 0.0 and scores["per_sample"][0]["candidate_error"].startswith("timeout")
    assert report["n_invalid_pred"] == 1 and report["errors"]["a"].startswith("timeout")

    path = tmp_path / "preds.jsonl"
    path.write_text(json.dumps({"id": "a", "prediction": UNMESHABLE}) + "\n")
    assert valid_syntax_rate.main([str(path), "--workers", "1", "--timeout", "2"]) == 0
    out = capsys.readouterr().out
    assert "valid: 0/1" in out and "a: timeout" in out


def test_valid_only_mean_leaves_out_invalid_predictions(executor, reference_programs):
    box, cylinder = reference_programs["box"], reference_programs["cylinder"]
    scores = score_programs([box, box, cylinder, reference_programs["syntax_error"]],
                            [box, reference_programs["runtime_error"], box, box], executor)
    pair = score_pair(cylinder, box, executor=executor)["iou"]
    assert scores["n_invalid_references"] == 1 and scores["n_valid"] == 3
    assert scores["iou"] == pytest.approx((1.0 + 0.0 + pair) / 3)
    assert scores["iou_valid"] == pytest.approx((1.0 + pair) / 2)
    assert scores["per_sample"][3]["iou"] is None


def test_exact_mode_runs_the_occ_booleans_in_the_sandbox(executor, reference_programs):
    box, cylinder = reference_programs["box"], reference_programs["cylinder"]
    exact = score_pair(box, cylinder, executor=executor, exact=True)
    assert exact["metric_error"] is None
    assert exact["iou"] == pytest.approx(score_pair(box, cylinder, executor=executor)["iou"], abs=0.01)
