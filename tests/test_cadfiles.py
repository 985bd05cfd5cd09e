"""CAD files of a program's solid, made in the sandbox (img2cq.cadfiles), and /generate?format=."""

import base64
import io
from pathlib import Path

import pytest
from PIL import Image

from img2cq.cadfiles import CadFileError, cad_files

REPO = Path(__file__).resolve().parents[1]


def step_volume(data: bytes, tmp_path: Path) -> float:
    import cadquery as cq

    path = tmp_path / "read_back.step"
    path.write_bytes(data)
    return sum(solid.Volume() for solid in cq.importers.importStep(str(path)).solids().vals())


def test_a_step_file_has_the_volume_of_the_programs_solid(executor, reference_programs, tmp_path):
    program = reference_programs["gencad_box"]
    made = cad_files(program, ["step", "stl", "glb"], executor)
    assert made.files["step"].startswith(b"ISO-10303-21;")
    assert made.files["glb"][:4] == b"glTF"
    reference = executor.run(program)
    assert reference.ok
    assert abs(step_volume(made.files["step"], tmp_path) - reference.volume) / reference.volume < 1e-6
    assert abs(made.volume - 0.5) < 1e-9


def test_a_program_without_a_solid_or_an_unknown_format_is_refused(executor, reference_programs):
    with pytest.raises(CadFileError, match="runtime"):
        cad_files(reference_programs["runtime_error"], ["step"], executor)
    with pytest.raises(ValueError, match="unknown"):
        cad_files(reference_programs["box"], ["dwg"], executor)


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    """server.app with the shipped model and no database; generation answers a known program."""
    from fastapi.testclient import TestClient

    import server

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IMG2CQ_MODEL", str(REPO / "models" / "img2cq-cpu"))
        mp.setenv("IMG2CQ_DB", "")
        mp.delenv("DATABASE_URL", raising=False)
        mp.setenv("IMG2CQ_EXEC_WORKERS", "1")
        mp.setenv("IMG2CQ_WARM_UP", "false")  # generation is replaced: nothing to load ahead
        with TestClient(server.app) as client:
            yield client


@pytest.fixture
def known_program(monkeypatch, reference_programs):
    from img2cq.serving import model_api

    program = reference_programs["gencad_box"]
    monkeypatch.setattr(model_api, "generate_programs", lambda model, images, *args: [program] * len(images))
    return program


def picture() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), "white").save(out, format="PNG")
    return out.getvalue()


@pytest.mark.integration
def test_generate_answers_cad_files(api, known_program, tmp_path):
    upload = {"image": ("bracket.png", picture(), "image/png")}
    r = api.post("/generate", params={"format": "step", "search": "false"}, files=upload)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/step"
    assert 'filename="bracket.step"' in r.headers["content-disposition"]
    assert abs(step_volume(r.content, tmp_path) - 0.5) / 0.5 < 1e-6
    r = api.post("/generate", params={"format": "py", "search": "false"}, files=upload)
    assert r.status_code == 200 and r.text == known_program and 'filename="bracket.py"' in r.headers["content-disposition"]
    r = api.post("/generate", params={"embed": "png,stl", "search": "false"}, files=upload)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["valid"] and out["source"] is None and out["agreement"] is None
    assert base64.b64decode(out["files"]["png"]).startswith(b"\x89PNG")
    assert len(base64.b64decode(out["files"]["stl"])) > 84
    r = api.post("/generate", params={"embed": "dwg"}, files=upload)
    assert r.status_code == 422 and "dwg" in r.json()["detail"]
    r = api.post("/generate", params={"format": "dwg"}, files=upload)
    assert r.status_code == 422


@pytest.mark.integration
def test_a_cad_format_for_a_program_that_builds_nothing_is_422(api, monkeypatch, reference_programs):
    from img2cq.serving import model_api

    monkeypatch.setattr(model_api, "generate_programs",
                        lambda model, images, *args: [reference_programs["runtime_error"]] * len(images))
    r = api.post("/generate", params={"format": "stl", "search": "false"}, files={"image": ("p.png", picture(), "image/png")})
    assert r.status_code == 422 and "builds no solid" in r.json()["detail"]
    r = api.post("/generate", params={"embed": "stl", "search": "false"}, files={"image": ("p.png", picture(), "image/png")})
    assert r.status_code == 200 and r.json()["valid"] is False and r.json()["files"] is None


@pytest.mark.integration
def test_a_searched_answer_says_which_proposal_won_and_how_well_it_agrees(api, monkeypatch, reference_programs):
    from types import SimpleNamespace

    from img2cq.serving import model_api

    kept = SimpleNamespace(program=reference_programs["gencad_box"], source="library:7+refined", agreement=0.81)
    asked = []

    def searched(model, images, options, *rest):
        asked.append(options)
        return [model_api.SearchedProgram.of(kept) for _ in images]

    monkeypatch.setattr(model_api, "generate_programs", searched)
    monkeypatch.setattr(model_api.ModelService, "_search_library", lambda self: None)  # no retrieval
    r = api.post("/generate", files={"image": ("p.png", picture(), "image/png")})  # a plain request searches
    assert r.status_code == 200, r.text
    assert asked == [model_api.GenerateOptions(search=True, candidates=1, refine_seconds=1.0)]
    out = r.json()
    assert out["valid"] and out["source"] == "library:7+refined" and out["agreement"] == pytest.approx(0.81)


@pytest.mark.integration
def test_files_of_a_program_are_made_in_the_sandbox(api, reference_programs, tmp_path):
    """/files: a program (a search's alternative, or any) in, the files of its solid out; a program
    that builds nothing or a hostile one is one 422 line and the server stays up."""
    program = reference_programs["gencad_box"]
    r = api.post("/files", json={"program": program})  # default: png, step, stl in JSON
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["volume"] == pytest.approx(0.5) and sorted(out["files"]) == ["png", "step", "stl"]
    assert base64.b64decode(out["files"]["png"]).startswith(b"\x89PNG")
    assert abs(step_volume(base64.b64decode(out["files"]["step"]), tmp_path) - 0.5) / 0.5 < 1e-6
    r = api.post("/files", params={"format": "glb"}, json={"program": program})
    assert r.status_code == 200 and r.headers["content-type"] == "model/gltf-binary" and r.content[:4] == b"glTF"
    assert 'filename="part-' in r.headers["content-disposition"]
    for bad, words in [(reference_programs["runtime_error"], "builds no solid"),
                       ("import os\nos._exit(3)\n", "builds no solid")]:
        r = api.post("/files", json={"program": bad})
        assert r.status_code == 422 and words in r.json()["detail"] and "\n" not in r.json()["detail"]
        assert api.get("/health").status_code == 200
    assert api.post("/files", params={"embed": "dwg"}, json={"program": program}).status_code == 422
    assert api.post("/files", params={"format": "py"}, json={"program": program}).status_code == 422
    assert api.post("/files", json={}).status_code == 422
