"""enhanced_eval.py and baseline_eval.py end to end on a tiny model and a few generated samples."""

import csv
import json
import os
import subprocess
import sys

import pytest

from img2cq.evaluation import CONSTANT_PROGRAM, score_programs
from img2cq.modeling import build_model, save_pretrained
from metrics.best_iou import score_pair

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

# Runs a front door in this interpreter, then reports which heavy modules it imported.
IMPORTS_PROBE = """import runpy, sys
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as e:
    code = e.code
print("imported:", *sorted(m for m in ("torch", "transformers", "img2cq.evaluation") if m in sys.modules))
sys.exit(code)
"""


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """data/{train,test}.jsonl with a few synthetic samples and an untrained tiny model."""
    from img2cq.data import generate_synthetic

    root = tmp_path_factory.mktemp("eval")
    generate_synthetic(root / "data", {"train": 6, "test": 3}, seed=11, workers=2, progress=False)
    model, tokenizer, processor = build_model("tiny")
    save_pretrained(root / "model", model, tokenizer, processor, {"command": "test"})
    return root


def run(args, cwd, probe=False):
    prefix = [sys.executable, "-c", IMPORTS_PROBE] if probe else [sys.executable]
    return subprocess.run([*prefix, *map(str, args)], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300)


def results(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def mean(values):
    return sum(values) / len(values)


@pytest.mark.integration
def test_enhanced_eval_writes_predictions_to_the_run_dir_and_a_results_row(workspace, repo_root):
    out = run([repo_root / "enhanced_eval.py", "model", "--samples", "3", "--batch-size", "2",
               "--max-new-tokens", "24", "--output-dir", "runs/mine"], workspace)
    assert out.returncode == 0, out.stderr[-2000:]
    assert not list((workspace / "model").glob("predictions*")), "the model directory stays as trained"
    rows = jsonl(workspace / "runs" / "mine" / "predictions_test_greedy.jsonl")
    assert len(rows) == 3 and set(rows[0]) == {"id", "prediction", "valid", "error", "iou", "metric_error"}
    how = json.loads((workspace / "runs" / "mine" / "predictions_test_greedy.json").read_text())
    assert how["command"].startswith("python ") and how["model"] == "model" and how["samples"] == 3
    assert how["versions"]["torch"] and how["scores"]["n"] == 3
    with open(workspace / "results.csv") as f:
        assert f.readline().startswith("Model,VSR,IOU,Delta,IOU_valid,")
    row = results(workspace / "results.csv")[-1]
    assert row["Model"] == "model" and row["samples"] == "3" and row["decoding"] == "greedy"
    # the row is the per-sample file summed up
    assert float(row["VSR"]) == pytest.approx(mean([r["valid"] for r in rows]), abs=1e-4)
    assert float(row["IOU"]) == pytest.approx(mean([r["iou"] for r in rows if r["iou"] is not None]), abs=1e-4)
    valid = [r["iou"] for r in rows if r["valid"] and r["iou"] is not None]
    assert row["IOU_valid"] == ("" if not valid else f"{mean(valid):.4f}")
    delta = float(row["IOU"]) - how["scores"]["constant_iou"]
    assert float(row["Delta"]) == pytest.approx(delta, abs=1e-4)


@pytest.mark.integration
def test_baseline_eval_scores_both_baselines_without_torch(workspace, repo_root):
    out = run([repo_root / "baseline_eval.py", "3", "--results-csv", "baselines.csv"], workspace, probe=True)
    assert out.returncode == 0, out.stderr[-2000:]
    # no torch: transformers is there for its argument parser only
    assert out.stdout.strip().splitlines()[-1] == "imported: img2cq.evaluation transformers"
    rows = {r["Model"]: r for r in results(workspace / "baselines.csv")}
    constant, nearest = rows["baseline-constant-box"], rows["baseline-nearest-train-image"]
    assert float(constant["VSR"]) == 1.0 and float(nearest["VSR"]) == 1.0
    # both are scored on the same samples: the nearest row's Delta is measured from the constant row
    assert float(nearest["Delta"]) == pytest.approx(float(nearest["IOU"]) - float(constant["IOU"]), abs=2e-4)
    for row in (constant, nearest):  # every prediction valid: the two means coincide
        assert row["IOU_valid"] == row["IOU"]
    for decoding, row in (("fixed", constant), ("nearest", nearest)):
        scored = jsonl(workspace / "runs" / "eval" / "baselines" / f"predictions_test_{decoding}.jsonl")
        assert float(row["IOU"]) == pytest.approx(mean([r["iou"] for r in scored]), abs=1e-4)
    library = rows["baseline-nearest-library-part"]  # the shipped part library
    assert float(library["VSR"]) == 1.0 and library["decoding"].startswith("nearest-of-")


def test_nearest_image_baseline_leaves_out_the_programs_training_left_out(workspace, tmp_path):
    from img2cq.evaluation import load_samples, nearest_neighbour_programs

    train_json = workspace / "data" / "train.jsonl"
    queries = load_samples(str(train_json), 2)  # two training images as test images: each finds itself
    assert nearest_neighbour_programs(str(train_json), queries) == [q["cadquery"] for q in queries]
    held_out = tmp_path / "held_out.jsonl"
    held_out.write_text("".join(train_json.read_text().splitlines(keepends=True)[:2]))
    found = nearest_neighbour_programs(str(train_json), queries, exclude_programs_in=str(held_out))
    assert len(found) == 2 and not set(found) & {q["cadquery"] for q in queries}


@pytest.mark.parametrize("script", ["enhanced_eval.py", "baseline_eval.py"])
def test_help_answers_before_heavy_imports(repo_root, script):
    out = run([repo_root / script, "--help"], repo_root, probe=True)
    assert out.returncode == 0 and "--output-dir" in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "imported: transformers"  # its argument parser, not torch


@pytest.mark.integration
def test_constant_iou_is_the_constant_programs_score_on_the_same_samples(executor, reference_programs):
    references = [reference_programs["box"], reference_programs["cylinder"]]
    scores = score_programs(references, references, executor)
    assert scores["vsr"] == 1.0 and scores["iou"] == pytest.approx(1.0, abs=1e-6) and scores["iou_valid"] == scores["iou"]
    expected = mean([score_pair(r, CONSTANT_PROGRAM, executor=executor)["iou"] for r in references])
    assert scores["constant_iou"] == pytest.approx(expected, abs=1e-9) and expected < 0.99


def one_error_line(out, *needles):
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and out.stderr.count("error:") == 1, out.stderr[-2000:]
    line = out.stderr.strip().splitlines()[-1]
    assert "error: " in line
    for needle in needles:
        assert needle in line


def test_missing_model_dir(workspace, repo_root):
    one_error_line(run([repo_root / "enhanced_eval.py", "no-such-model"], workspace), "no model in no-such-model")


def test_bad_flag(workspace, repo_root):
    one_error_line(run([repo_root / "enhanced_eval.py", "model", "--workers", "0"], workspace),
                   "workers must be at least 1")
    one_error_line(run([repo_root / "baseline_eval.py", "0"], workspace), "samples must be at least 1")


def test_missing_data(workspace, repo_root):
    one_error_line(run([repo_root / "enhanced_eval.py", "model", "--eval-json", "nope/test.jsonl"], workspace),
                   "python scripts/download_hf_dataset.py --source synthetic")
    one_error_line(run([repo_root / "baseline_eval.py", "2", "--eval-json", "nope/test.jsonl"], workspace),
                   "python scripts/download_hf_dataset.py --source synthetic")


def test_unreadable_image(workspace, tmp_path, repo_root):
    first = json.loads((workspace / "data" / "test.jsonl").read_text().splitlines()[0])
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "broken.png").write_bytes(b"not a png at all")
    (tmp_path / "test.jsonl").write_text(json.dumps({**first, "image": "images/broken.png"}) + "\n")
    one_error_line(run([repo_root / "enhanced_eval.py", "model", "--eval-json", tmp_path / "test.jsonl"],
                       workspace), "cannot read the image of sample 0")
