"""enhanced_eval.py and baseline_eval.py end to end on a tiny model and a few generated samples."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from img2cq.evaluation import CONSTANT_PROGRAM, score_programs
from img2cq.modeling import build_model, save_pretrained

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """data/{train,test}.jsonl with a few synthetic samples and an untrained tiny model."""
    from img2cq.data import generate_synthetic

    root = tmp_path_factory.mktemp("eval")
    generate_synthetic(root / "data", {"train": 6, "test": 3}, seed=11, workers=2, progress=False)
    model, tokenizer, processor = build_model("tiny")
    save_pretrained(root / "model", model, tokenizer, processor, {"command": "test"})
    return root


def run(args, cwd):
    return subprocess.run([sys.executable, *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300)


def results(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_enhanced_eval_writes_predictions_and_results_row(workspace):
    out = run([str(ROOT / "enhanced_eval.py"), "model", "--samples", "3", "--batch-size", "2",
               "--max-new-tokens", "24"], workspace)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [json.loads(line) for line in (workspace / "model" / "predictions_test_greedy.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and set(rows[0]) == {"id", "prediction", "valid", "error", "iou"}
    with open(workspace / "results.csv") as f:
        assert f.readline().startswith("Model,VSR,IOU,Delta,")
    row = results(workspace / "results.csv")[-1]
    assert row["Model"] == "model" and row["samples"] == "3" and row["decoding"] == "greedy"
    vsr, iou, delta = float(row["VSR"]), float(row["IOU"]), float(row["Delta"])
    assert 0 <= vsr <= 1 and 0 <= iou <= 1 and -1 <= delta <= 1


def test_baseline_eval_scores_both_baselines(workspace):
    out = run([str(ROOT / "baseline_eval.py"), "3", "--results-csv", "baselines.csv"], workspace)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = {r["Model"]: r for r in results(workspace / "baselines.csv")}
    constant, nearest = rows["baseline-constant-box"], rows["baseline-nearest-train-image"]
    assert float(constant["VSR"]) == 1.0 and float(constant["Delta"]) == 0.0
    assert float(nearest["VSR"]) == 1.0 and 0 < float(nearest["IOU"]) <= 1


def test_identical_programs_score_iou_one():
    scores = score_programs([CONSTANT_PROGRAM], [CONSTANT_PROGRAM], workers=1)
    assert scores["vsr"] == 1.0 and scores["iou"] == pytest.approx(1.0, abs=1e-6)
    assert scores["iou"] - scores["constant_iou"] == pytest.approx(0.0, abs=1e-6)


def one_error_line(out, *needles):
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and out.stderr.count("error:") == 1, out.stderr[-2000:]
    line = out.stderr.strip().splitlines()[-1]
    assert line.startswith("error:")
    for needle in needles:
        assert needle in line


def test_missing_model_dir(workspace):
    one_error_line(run([str(ROOT / "enhanced_eval.py"), "no-such-model"], workspace), "no model in no-such-model")


def test_missing_data(workspace):
    one_error_line(run([str(ROOT / "enhanced_eval.py"), "model", "--eval-json", "nope/test.jsonl"], workspace),
                   "python scripts/download_hf_dataset.py --source synthetic")
    one_error_line(run([str(ROOT / "baseline_eval.py"), "2", "--eval-json", "nope/test.jsonl"], workspace),
                   "python scripts/download_hf_dataset.py --source synthetic")


def test_unreadable_image(workspace, tmp_path):
    first = json.loads((workspace / "data" / "test.jsonl").read_text().splitlines()[0])
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "broken.png").write_bytes(b"not a png at all")
    (tmp_path / "test.jsonl").write_text(json.dumps({**first, "image": "images/broken.png"}) + "\n")
    one_error_line(run([str(ROOT / "enhanced_eval.py"), "model", "--eval-json", str(tmp_path / "test.jsonl")],
                       workspace), "cannot read the image of sample 0")
