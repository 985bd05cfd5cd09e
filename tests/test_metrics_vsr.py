"""VSR on a batch with known outcomes, program loading, and the two metric CLIs' error paths."""

import json
import subprocess
import sys

import pytest

from metrics import best_iou, valid_syntax_rate
from img2cq.data import DataError
from metrics.valid_syntax_rate import evaluate_syntax_rate, load_programs


@pytest.fixture
def mixed(reference_programs):
    """Three programs that build a solid (one in a Markdown fence) and four that fail, each its own way."""
    p = reference_programs
    return {"box": p["box"], "fenced": "```python\n" + p["box"] + "```", "cylinder": p["cylinder"],
            "syntax": p["syntax_error"], "runtime": p["runtime_error"], "no_solid": p["no_solid"],
            "not_a_shape": p["not_a_shape"]}


def test_mixed_batch_gives_exact_rate(executor, mixed):
    report = evaluate_syntax_rate(mixed, executor=executor)
    assert (report["total"], report["valid"], report["invalid"]) == (7, 3, 4)
    assert report["vsr"] == 3 / 7
    assert set(report["failures"]) == {"syntax", "runtime", "no_solid", "not_a_shape"}
    assert report["failures"]["syntax"].startswith("syntax: ")
    assert report["failures"]["runtime"].startswith("runtime: ")


def test_empty_batch_has_zero_rate():
    assert evaluate_syntax_rate({}) == {"total": 0, "valid": 0, "invalid": 0, "vsr": 0.0,
                                                     "failures": {}}


def test_load_programs_from_py_folder_and_jsonl(tmp_path, reference_programs):
    box = reference_programs["box"]
    (tmp_path / "a.py").write_text(box)
    (tmp_path / "b.py").write_text("solid = 5\n")
    assert load_programs(tmp_path) == {"a": box, "b": "solid = 5\n"}
    assert load_programs(tmp_path / "a.py") == {"a": box}
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"id": "x", "prediction": box}) + "\n\n" + json.dumps({"code": "y"}) + "\n")
    assert load_programs(rows) == {"x": box, "3": "y"}
    with pytest.raises(DataError, match=r"rows.jsonl:1: no string field 'cadquery'"):
        load_programs(rows, field="cadquery")


@pytest.mark.parametrize("content, message", [
    ('{"cadquery": "x"}\n{"cadquery": \n', r"bad.jsonl:2: not JSON"),
    ('{"cadquery": "x"}\n[1, 2]\n', r"bad.jsonl:2: not a JSON object"),
    ('{"id": 1, "cadquery": "x"}\n{"id": 1, "cadquery": "y"}\n', r"bad.jsonl:2: duplicate id '1'"),
    ('{"other": "x"}\n', r"bad.jsonl:1: no string field"),
    ("\n", r"bad.jsonl: no programs"),
])
def test_malformed_jsonl_names_the_line(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        load_programs(path)


def cli(module, *args):
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("module", ["metrics.valid_syntax_rate", "metrics.best_iou"])
def test_cli_missing_file_is_one_line_and_exit_2(tmp_path, module):
    args = [tmp_path / "nope.jsonl"] * (2 if module == "metrics.best_iou" else 1)
    out = cli(module, *args)
    assert out.returncode == 2
    assert out.stderr.strip() == f"error: {tmp_path / 'nope.jsonl'}: no such file or folder"


@pytest.mark.parametrize("module", ["metrics.valid_syntax_rate", "metrics.best_iou"])
def test_cli_malformed_jsonl_is_one_line_and_exit_2(tmp_path, module):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"cadquery": "x"}\nnot json\n')
    out = cli(module, *([path] * (2 if module == "metrics.best_iou" else 1)))
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and f"{path}:2: not JSON" in out.stderr


@pytest.mark.integration
def test_vsr_cli_reports_rate(tmp_path, capsys, mixed):
    path = tmp_path / "preds.jsonl"
    path.write_text("".join(json.dumps({"id": k, "prediction": v}) + "\n" for k, v in mixed.items()))
    assert valid_syntax_rate.main([str(path), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "valid: 3/7  VSR: 0.4286" in out
    assert "syntax: syntax: line" in out


@pytest.mark.integration
def test_iou_cli_scores_two_files(tmp_path, capsys, reference_programs):
    (tmp_path / "gt.py").write_text(reference_programs["box"])
    (tmp_path / "pred.py").write_text(reference_programs["box"])
    assert best_iou.main([str(tmp_path / "gt.py"), str(tmp_path / "pred.py"), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "mean IoU: 1.0000" in out and "mean IoU over valid predictions: 1.0000" in out
