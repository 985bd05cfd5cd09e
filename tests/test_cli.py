"""The `img2cq` command, run as people run it (a subprocess): help, refusals, CAD files, scoring."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
PICTURE = REPO / "tests" / "fixtures" / "render" / "plate_boss.png"  # rendered from plate_boss.py
SCRIPT = Path(sys.executable).with_name("img2cq")


COMMAND = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "img2cq.cli"]
ENV = {**os.environ, "VTK_DEFAULT_OPENGL_WINDOW": os.environ.get("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")}


def img2cq(*args, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(COMMAND + [str(a) for a in args], cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("args", [["--help"], ["generate", "--help"], ["serve", "--help"], ["score", "--help"],
                                  ["export", "--help"]])
def test_help_answers_at_once(args):
    started = time.perf_counter()
    out = img2cq(*args)
    assert out.returncode == 0 and "usage: img2cq" in out.stdout
    assert time.perf_counter() - started < 3.0  # no torch, no CadQuery before the arguments are read


def png_header(width: int, height: int) -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def one_error_line(out: subprocess.CompletedProcess) -> str:
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    assert "Traceback" not in out.stderr
    return lines[0]


def test_bad_input_is_exit_2_with_one_line(tmp_path):
    out = img2cq("generate", tmp_path / "missing.png")
    assert out.returncode == 2 and "missing.png" in one_error_line(out)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(PICTURE.read_bytes()[:200])
    out = img2cq("generate", corrupt)
    assert out.returncode == 2 and "corrupt.png" in one_error_line(out)
    huge = tmp_path / "huge.png"  # a small file whose header declares 89,000,000 x 1 pixels
    huge.write_bytes(png_header(89_000_000, 1))
    out = img2cq("generate", huge)
    assert out.returncode == 2 and "too large" in one_error_line(out)
    out = img2cq("generate", "--frobnicate", PICTURE)
    assert out.returncode == 2 and "frobnicate" in one_error_line(out)
    out = img2cq("generate", PICTURE, "--format", "dwg")
    assert out.returncode == 2 and "dwg" in one_error_line(out)
    picture = tmp_path / "part.png"
    shutil.copy(PICTURE, picture)
    out = img2cq("generate", picture, "-o", picture)  # never overwrite what the user handed in
    assert out.returncode == 2 and "overwrite" in one_error_line(out)
    assert picture.read_bytes() == PICTURE.read_bytes()
    out = img2cq("generate", picture, "-o", tmp_path / "part.step", "--format", "stl")
    assert out.returncode == 2 and "step" in one_error_line(out)
    out = img2cq("generate", picture, "--no-search", "--refine", "2")
    assert out.returncode == 2 and "--no-search" in one_error_line(out)
    out = img2cq("generate", picture, "--no-search", "--alternatives", "2")
    assert out.returncode == 2 and "--no-search" in one_error_line(out)
    out = img2cq("generate", picture, "--alternatives", "17")
    assert out.returncode == 2 and "--alternatives" in one_error_line(out)
    out = img2cq("generate", picture, "--alternatives", "1", "-o", "-")
    assert out.returncode == 2 and "stdout" in one_error_line(out)
    disguised = tmp_path / "part.alt1.py"  # a picture whose name an alternative's file would take
    shutil.copy(PICTURE, disguised)
    out = img2cq("generate", disguised, "-o", tmp_path / "part.py", "--alternatives", "1")
    assert out.returncode == 2 and "overwrite" in one_error_line(out)
    assert disguised.read_bytes() == PICTURE.read_bytes()
    out = img2cq("score", tmp_path / "nope.py", tmp_path / "nope.py")
    assert out.returncode == 2 and "nope.py" in one_error_line(out)
    out = img2cq("export", tmp_path / "nope.py")
    assert out.returncode == 2 and "nope.py" in one_error_line(out)
    program = tmp_path / "part.py"
    program.write_text("import cadquery as cq\nresult = cq.Workplane().box(1, 1, 1)\n")
    out = img2cq("export", program, "-o", program)  # never overwrite what the user handed in
    assert out.returncode == 2 and "overwrite" in one_error_line(out)
    out = img2cq("export", program, "--format", "py")
    assert out.returncode == 2 and "py" in one_error_line(out)


@pytest.mark.integration
def test_generate_writes_a_step_file_with_the_volume_of_the_programs_solid(tmp_path):
    """The default search and the model's greedy program alone: the STEP of the kept program's solid,
    read back by CadQuery, has the volume of that program's solid as the sandbox builds it."""
    import cadquery as cq

    from img2cq.sandbox import Executor

    picture = tmp_path / "picture.png"
    shutil.copy(PICTURE, picture)
    out = img2cq("generate", "picture.png", "--no-search", "-o", "part.step", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout == ""
    assert [line.split()[0] for line in out.stderr.splitlines()] == ["loading", "writing", "[1/1]"], out.stderr  # no noise
    out = img2cq("generate", "picture.png", "--no-search", cwd=tmp_path)  # the program, beside the picture
    assert out.returncode == 0, out.stderr
    program = (tmp_path / "picture.py").read_text()
    assert "cadquery" in program
    with Executor(workers=1) as executor:
        solid = executor.run(program)
    assert solid.ok, solid.reason
    step = cq.importers.importStep(str(tmp_path / "part.step"))
    volume = sum(s.Volume() for s in step.solids().vals())
    assert abs(volume - solid.volume) / solid.volume < 1e-6
    out = img2cq("generate", "picture.png", "-o", "searched.py", "--alternatives", "2", cwd=tmp_path)  # default: a short search
    assert out.returncode == 0, out.stderr  # 0: the kept program and both alternatives build solids
    assert "searching (the model's greedy program, the library's 24 nearest parts, 1 s refinement)" in out.stderr
    assert "kept " in out.stderr
    written = [tmp_path / name for name in ("searched.py", "searched.alt1.py", "searched.alt2.py")]
    assert all("cadquery" in path.read_text() for path in written)
    assert len({path.read_text() for path in written}) == 3
    assert picture.read_bytes() == PICTURE.read_bytes()
    Image.new("RGB", (200, 150), "white").save(tmp_path / "blank.png")
    out = img2cq("generate", "blank.png", "--no-search", cwd=tmp_path)  # answered, with what is wrong with it
    assert out.stderr.splitlines()[0] == "warning: blank.png: the picture is blank: no part found on it", out.stderr


@pytest.mark.integration
def test_score_prints_one_json_line(tmp_path, reference_programs):
    (tmp_path / "ref.py").write_text(reference_programs["gencad_box"])
    (tmp_path / "pred.py").write_text(reference_programs["gencad_box"])
    (tmp_path / "broken.py").write_text(reference_programs["runtime_error"])
    out = img2cq("score", tmp_path / "ref.py", tmp_path / "pred.py")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["reference_valid"] and result["candidate_valid"] and result["iou"] > 0.999
    out = img2cq("score", tmp_path / "ref.py", tmp_path / "broken.py")
    assert out.returncode == 1 and json.loads(out.stdout)["iou"] == 0.0


def test_where_each_picture_goes(tmp_path):
    from img2cq.cli import BadInput, output_plan

    a, b = tmp_path / "a.png", tmp_path / "sub" / "b.png"
    assert output_plan([a], None, None) == ("py", [tmp_path / "a.py"])
    assert output_plan([a], str(tmp_path / "part.stl"), None) == ("stl", [tmp_path / "part.stl"])
    assert output_plan([a], str(tmp_path / "out") + "/", "step") == ("step", [tmp_path / "out" / "a.step"])
    assert output_plan([a, b], str(tmp_path / "out"), "stl") == ("stl", [tmp_path / "out" / "a.stl",
                                                                         tmp_path / "out" / "b.stl"])
    assert output_plan([a], "-", None) == ("py", [None])
    for pictures, output, fmt in [([a, tmp_path / "other" / "a.png"], str(tmp_path / "out"), None),  # same name
                                  ([a, b], "-", None), ([a], "-", "step"), ([a], str(a), None)]:
        with pytest.raises(BadInput):
            output_plan(pictures, output, fmt)


def test_ctrl_c_during_a_search_stops_at_once_with_one_line(tmp_path):
    """A terminal's Ctrl-C reaches the whole process group: the command and its build and sandbox
    workers. The command says it was interrupted and exits 130; the workers leave it to the caller."""
    import signal

    shutil.copy(PICTURE, tmp_path / "part.png")
    # as from a terminal: SIGINT acted on, whatever this test run inherited (a shell ignores it in the
    # commands it starts in the background, and Python then leaves it ignored)
    proc = subprocess.Popen(COMMAND + ["generate", "part.png", "--candidates", "2", "--refine", "30"], cwd=tmp_path,
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines = []
    for line in proc.stderr:  # wait until the search is under way
        lines.append(line)
        if "searching" in line:
            break
    time.sleep(8)  # the sandbox's workers are up by then
    os.killpg(proc.pid, signal.SIGINT)
    interrupted = time.perf_counter()
    _, rest = proc.communicate(timeout=60)
    stderr = "".join(lines) + rest
    assert proc.returncode == 130 and time.perf_counter() - interrupted < 15, stderr
    assert stderr.strip().splitlines()[-1] == "error: interrupted" and "Traceback" not in stderr
    assert not (tmp_path / "part.py").exists()


@pytest.mark.integration
def test_export_writes_each_programs_solid_and_says_which_build_nothing(tmp_path, reference_programs):
    """A program (a search's alternative, or one edited by hand) to STEP by default, or to the format
    of OUT's extension; several to a folder; one that builds nothing is an error line and exit 1."""
    import cadquery as cq

    (tmp_path / "box.py").write_text(reference_programs["gencad_box"])
    (tmp_path / "broken.py").write_text(reference_programs["runtime_error"])
    out = img2cq("export", "box.py", cwd=tmp_path)
    assert out.returncode == 0 and out.stdout == "", out.stderr
    assert out.stderr.strip() == "[1/1] box.py -> box.step (volume 0.5)"  # no noise
    step = cq.importers.importStep(str(tmp_path / "box.step"))
    assert abs(sum(s.Volume() for s in step.solids().vals()) - 0.5) < 1e-6
    out = img2cq("export", "box.py", "-o", "look.png", cwd=tmp_path)
    assert out.returncode == 0 and (tmp_path / "look.png").read_bytes().startswith(b"\x89PNG"), out.stderr
    out = img2cq("export", "box.py", "broken.py", "-o", "files", "--format", "glb", cwd=tmp_path)
    assert out.returncode == 1
    assert (tmp_path / "files" / "box.glb").read_bytes()[:4] == b"glTF" and not (tmp_path / "files" / "broken.glb").exists()
    assert "error: [2/2] broken.py: the program builds no solid" in out.stderr and "Traceback" not in out.stderr
    assert (tmp_path / "box.py").read_text() == reference_programs["gencad_box"]
