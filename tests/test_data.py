"""Dataset I/O: synthetic generation through the executor, resume, hub layout, loading, streaming, CLI."""
import io
import json
import subprocess
import sys
from itertools import islice
from pathlib import Path

import cadquery as cq
import datasets
import numpy as np
import pytest
from PIL import Image

from img2cq import data

ROOT = Path(__file__).resolve().parents[1]


def test_count_tokens_is_positive_and_monotone():
    short = "import cadquery as cq\n"
    assert 0 < data.count_tokens(short) < data.count_tokens(short + "solid=solid0\n")
    assert data.count_tokens("0.24753289473684212") > data.count_tokens("0.25")


def test_validate_and_render_rejects_degenerate_parts():
    good = cq.Workplane().box(1, 0.5, 0.2).val()
    verdict = data.validate_and_render(good, size=64)
    assert verdict["reject"] is None and verdict["png"].startswith(b"\x89PNG")
    pin = cq.Workplane().cylinder(1.2, 0.005).val()  # thin is not degenerate: pins and wires are parts
    assert data.validate_and_render(pin, size=64)["reject"] is None
    apart = cq.Workplane().box(0.5, 0.5, 0.5).union(cq.Workplane().box(0.5, 0.5, 0.5).translate((2, 0, 0))).val()
    assert data.validate_and_render(apart)["reject"] == "disconnected"
    assert data.validate_and_render(cq.Workplane().box(0.02, 0.02, 0.02).val())["reject"] == "too_small"
    assert data.validate_and_render(cq.Workplane().box(1.4, 1.4, 0.004).val())["reject"] == "sliver"


def test_signature_ignores_placement():
    a, b = cq.Workplane().box(1, 0.5, 0.2).val(), cq.Workplane().box(0.2, 1, 0.5).translate((0.3, 0, 0)).val()
    from img2cq.measure import mass_properties
    sa, sb = (data.geometry_signature(*mass_properties(s)[::2]) for s in (a, b))
    assert sa == sb


def test_seamed_programs_keep_validity_and_signature():
    """clean=False only keeps seam edges: the same parts are accepted and de-duplicated alike."""
    from img2cq.measure import mass_properties
    from img2cq.sampler import sample_program

    combined = [c for c in (sample_program(data.draw_rng(3, "train", i)) for i in range(80))
                if "solid.union(" in c or "solid.cut(" in c][:6]
    assert len(combined) == 6
    for code in combined:
        shapes = []
        for program in (code, data.seamed_program(code)):
            namespace = {}
            exec(program, namespace)
            shapes.append(namespace["solid"].val())
        assert data.reject_reason(shapes[0]) == data.reject_reason(shapes[1])
        signatures = [data.geometry_signature(*mass_properties(s)[::2]) for s in shapes]
        assert signatures[0] == signatures[1], code


def test_fit_rule_passes_through_the_render_options():
    part = cq.Workplane().box(0.2, 0.2, 1.4).val()
    tall = {fit: np.asarray(Image.open(io.BytesIO(data.validate_and_render(part, size=64, fit=fit)["png"])))
            for fit in ("bbox", "silhouette")}
    heights = {fit: np.ptp(np.nonzero((image != 255).any(axis=-1))[0]) for fit, image in tall.items()}
    assert heights["bbox"] < heights["silhouette"]  # 300 vs 400 px of 448


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn")
    card = data.generate_synthetic(out, {"train": 6, "val": 0, "test": 3}, seed=5, workers=2, batch=8,
                                   render_kwargs={"size": 96, "fit": "bbox"}, progress=False)
    return out, card


def test_synthetic_layout_and_card(synthetic):
    out, card = synthetic
    rows = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and len(card["splits"]["test"]) and not (out / "val.jsonl").exists()
    for row in rows:
        assert {"id", "image", "cadquery", "token_count", "seed", "sample_index"} <= set(row)
        assert Image.open(out / row["image"]).size == (96, 96)
    saved = json.loads((out / "dataset_card.json").read_text())
    assert saved["splits"]["train"]["accepted"] == 6 and "provenance" in saved and saved["render"]["fit"] == "bbox"
    train_sigs = {r["signature"] for r in rows}
    test_rows = [json.loads(line) for line in (out / "test.jsonl").read_text().splitlines()]
    assert not train_sigs & {r["signature"] for r in test_rows}


def test_resume_after_interruption_gives_the_same_rows(synthetic, tmp_path):
    out, _ = synthetic
    full = (out / "train.jsonl").read_text()
    lines = full.splitlines(keepends=True)
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    (resumed / "images").mkdir()
    # two complete rows and half of the third, as if killed mid-write
    (resumed / "train.jsonl").write_text("".join(lines[:2]) + lines[2][:40])
    data.generate_synthetic(resumed, {"train": 6}, seed=5, workers=1, batch=8, render_kwargs={"size": 96},
                            progress=False)
    assert (resumed / "train.jsonl").read_text() == full


def test_load_split_has_image_feature(synthetic):
    out, _ = synthetic
    ds = data.load_split(out / "train.jsonl")
    assert isinstance(ds.features["image"], datasets.Image)
    assert ds[0]["image"].size == (96, 96) and ds[0]["cadquery"].startswith("import cadquery as cq")


def test_load_split_leaves_out_the_programs_of_another_split(synthetic, tmp_path):
    out, _ = synthetic
    lines = (out / "train.jsonl").read_text().splitlines(keepends=True)
    held_out = tmp_path / "held_out.jsonl"
    held_out.write_text("".join(lines[1:3]))  # two of the six training programs, as if drawn again for a test split
    kept = data.load_split(out / "train.jsonl", exclude_programs_in=held_out)
    assert len(kept) == 4 and not {json.loads(line)["cadquery"] for line in lines[1:3]} & set(kept["cadquery"])
    with pytest.raises(data.DataError, match="no such split file"):
        data.load_split(out / "train.jsonl", exclude_programs_in=tmp_path / "missing.jsonl")


def test_reading_a_split_never_writes_it(synthetic, tmp_path):
    out, _ = synthetic
    lines = (out / "train.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "images").symlink_to(out / "images")
    whole_last_row = tmp_path / "no_final_newline.jsonl"
    whole_last_row.write_text("".join(lines[:3]).rstrip("\n"))
    before = whole_last_row.read_bytes()
    assert len(data.load_split(whole_last_row)) == 3 and whole_last_row.read_bytes() == before
    cut_short = tmp_path / "cut_short.jsonl"
    cut_short.write_text("".join(lines[:2]) + lines[2][:40])
    before = cut_short.read_bytes()
    with pytest.raises(data.DataError, match=r"cut_short.jsonl:3: not JSON"):
        data.load_split(cut_short)
    result = subprocess.run([sys.executable, "baseline_eval.py", "3", "--eval-json", str(cut_short),
                             "--train-json", str(whole_last_row), "--output-dir", str(tmp_path / "eval")],
                            capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "not JSON" in result.stderr
    assert cut_short.read_bytes() == before


def test_hub_rows_use_the_same_layout(tmp_path):
    rows = [{"image": Image.new("RGB", (448, 448), "white"), "deepcad_id": f"0000/0000{i}",
             "cadquery": "import cadquery as cq\n", "token_count": 5, "prompt": "p", "hundred_subset": i == 0}
            for i in range(3)]
    assert data.write_hub_rows(iter(rows), tmp_path, "test", limit=2, progress=False) == 2
    ds = data.load_split(tmp_path / "test.jsonl")
    assert len(ds) == 2 and isinstance(ds.features["image"], datasets.Image)
    assert ds[0]["deepcad_id"] == "0000/00000" and ds[0]["image"].size == (448, 448)


def test_stream_samples_yields_fresh_images():
    samples = list(islice(data.stream_samples(seed=1, workers=1, batch=4, size=64), 3))
    assert len({s["id"] for s in samples}) == 3
    assert all(s["image"].size == (64, 64) and s["cadquery"].startswith("import") for s in samples)


def test_built_samples_are_the_sandboxed_streams_samples():
    """Built in build workers instead of a sandbox child per program: the same draws, programs and
    pictures, pixel for pixel."""
    from img2cq.library import stream_built_samples

    sandboxed = list(islice(data.stream_samples(seed=3, workers=1, batch=6), 4))
    built = list(islice(stream_built_samples(seed=3, workers=1, batch=6), 4))
    assert [(s["id"], s["index"], s["cadquery"]) for s in built] == [(s["id"], s["index"], s["cadquery"]) for s in sandboxed]
    for a, b in zip(built, sandboxed):
        assert np.array_equal(np.asarray(a["image"].convert("RGB")), np.asarray(b["image"].convert("RGB")))


def _cli(*args):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "download_hf_dataset.py"), *args],
                          capture_output=True, text=True, timeout=60)


def test_cli_bad_arguments_give_one_line():
    result = _cli("--source", "synthetic", "--train", "-3")
    assert result.returncode != 0 and "error" in result.stderr and "Traceback" not in result.stderr


def test_cli_hub_offline_fails_with_one_line_naming_the_alternative(tmp_path):
    import socket
    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
        pytest.skip("the hub is reachable here")
    except OSError:
        pass
    result = _cli("--out", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "--source synthetic" in result.stderr
