"""scripts/render_programs.py: a programs jsonl becomes a rendered split; bad input is one error line."""
import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "render_programs.py"
BOX = "import cadquery as cq\nsolid = cq.Workplane().box(1.0, 0.6, 0.2)\n"
BROKEN = "import cadquery as cq\nsolid = cq.Workplane().box(1.0, 0.6\n"


def run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


def test_programs_become_a_split_and_failures_are_counted(tmp_path):
    src = tmp_path / "programs.jsonl"
    src.write_text("".join(json.dumps({"cadquery": c, "train_index": i}) + "\n" for i, c in enumerate([BOX, BROKEN])))
    proc = run(src, tmp_path / "out", "--size", "64", "--workers", "1", "--id-prefix", "demo")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in (tmp_path / "out" / "test.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["train_index"] == 0 and rows[0]["cadquery"] == BOX
    assert rows[0]["id"] == "demo-00000" and rows[0]["image"] == "images/demo-00000.png"
    assert Image.open(tmp_path / "out" / rows[0]["image"]).size == (64, 64)
    card = json.loads((tmp_path / "out" / "test.card.json").read_text())
    assert card["written"] == 1 and card["rows_in"] == 2 and sum(card["failed"].values()) == 1
    # the failed row is named (row number, its other fields) with the reason
    [failure] = card["failures"]
    assert failure["row"] == 1 and failure["train_index"] == 1 and "cadquery" not in failure
    assert failure["reason"].startswith(next(iter(card["failed"])) + ":")
    assert card["render"]["size"] == 64 and card["render"]["fit"] == "bbox"


def test_bad_input_gives_one_error_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image": "x.png"}\n')
    for path in (bad, tmp_path / "missing.jsonl"):
        proc = run(path, tmp_path / "out")
        assert proc.returncode == 2 and proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()
