"""The fidelity report: exact statistics of hand-written programs, and a CLI that fails cleanly."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from img2cq.fidelity import REAL, TOLERANCE, main, off_rows, program_statistics

ROOT = Path(__file__).resolve().parents[1]
PLATE = """import cadquery as cq
# Generating a workplane for sketch 0
wp_sketch0 = cq.Workplane(cq.Plane(cq.Vector(-0.75, -0.5, 0.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))
loop0=wp_sketch0.moveTo(0.0, 0.0).lineTo(1.5, 0.0).lineTo(1.5, 1.0).lineTo(0.0, 1.0).close()
loop1=wp_sketch0.moveTo(0.75, 0.5).circle(0.25)
solid0=wp_sketch0.add(loop0).add(loop1).extrude(0.125, both=True)
solid=solid0
"""
BRACKET = """import cadquery as cq
# Generating a workplane for sketch 0
wp_sketch0 = cq.Workplane(cq.Plane(cq.Vector(-0.75, 0.0, -0.25), cq.Vector(1.0, 6.123233995736766e-17, -6.123233995736766e-17), cq.Vector(6.123233995736766e-17, -1.0, 6.123233995736766e-17)))
loop0=wp_sketch0.moveTo(0.0, 0.0).lineTo(1.5, 0.0).threePointArc((1.6, 0.25), (1.5, 0.5)).lineTo(0.0, 0.5).close()
solid0=wp_sketch0.add(loop0).extrude(0.25)
solid=solid0
# Generating a workplane for sketch 1
wp_sketch1 = cq.Workplane(cq.Plane(cq.Vector(0.75, -0.1, 0.0), cq.Vector(0.0, 1.0, 0.0), cq.Vector(1.0, 0.0, 6.123233995736766e-17)))
loop1=wp_sketch1.moveTo(0.1, 0.1).circle(0.1)
solid1=wp_sketch1.add(loop1).extrude(-1.5)
solid=solid.cut(solid1)
# Generating a workplane for sketch 2
wp_sketch2 = cq.Workplane(cq.Plane(cq.Vector(0.0, 0.0, 0.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.7071067811865476, 0.7071067811865476)))
loop2=wp_sketch2.moveTo(0.0, 0.0).lineTo(0.2, 0.0).lineTo(0.2, 0.2).close()
solid2=wp_sketch2.add(loop2).extrude(0.1)
solid=solid.union(solid2)
"""


def test_statistics_of_hand_written_programs_are_exact():
    stats = program_statistics([PLATE, BRACKET])
    # four sketch planes: +Z, -Y, +X, tilted
    assert stats["normal +Z"] == stats["normal -Y"] == stats["normal +X"] == stats["normal tilted"] == 0.25
    assert stats["normal +Y"] == stats["normal -Z"] == stats["normal -X"] == 0
    assert stats["both=True per sketch"] == 0.25
    assert stats["union share of ops"] == stats["cut share of ops"] == 0.5 and stats["intersect share of ops"] == 0
    # curves: lineTo 3 + 2 + 2 = 7, threePointArc 1, circle 2
    assert stats["curve lineTo"] == 0.7 and stats["curve threePointArc"] == 0.1 and stats["curve circle"] == 0.2
    assert stats["one-sketch parts"] == 0.5
    assert stats["median characters"] == (len(PLATE) + len(BRACKET)) / 2


def test_every_statistic_has_a_real_figure_and_a_tolerance():
    stats = program_statistics([PLATE])
    assert set(stats) == set(REAL) == set(TOLERANCE)
    assert off_rows(dict(REAL)) == []
    assert "median characters" in off_rows({**REAL, "median characters": REAL["median characters"] + 500})


def test_empty_input_is_refused():
    with pytest.raises(ValueError):
        program_statistics([])


def test_cli_reads_a_jsonl_and_prints_the_table(tmp_path, capsys):
    path = tmp_path / "programs.jsonl"
    path.write_text("".join(json.dumps({"cadquery": code}) + "\n" for code in (PLATE, BRACKET)))
    assert main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "normal +Z" in out and "25.0%" in out and "real GenCAD-Code" in out
    assert main([str(path), "--check"]) == 1  # two hand-written programs are far from the real mix


def test_cli_samples_programs(capsys):
    assert main(["--n", "30", "--seed", "3"]) == 0
    assert "sampler seed 3 (n=30)" in capsys.readouterr().out


@pytest.mark.parametrize("content, message", [(None, "cannot read"), ("{not json\n", "not JSON"),
                                              ('{"image": "a.png"}\n', "no string field 'cadquery'"), ("\n", "no programs")])
def test_bad_file_gives_one_error_line(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    if content is not None:
        path.write_text(content)
    proc = subprocess.run([sys.executable, "-m", "img2cq.fidelity", str(path)], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("error: ") and message in proc.stderr and proc.stderr.count("\n") == 1


def test_help_answers_at_once_without_heavy_imports():
    proc = subprocess.run([sys.executable, "-m", "img2cq.fidelity", "--help"], capture_output=True, text=True,
                          cwd=ROOT, timeout=30)
    assert proc.returncode == 0 and "--n" in proc.stdout
    probe = "import sys; from img2cq import fidelity; print('numpy' in sys.modules, 'cadquery' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert proc.stdout.split() == ["False", "False"]
