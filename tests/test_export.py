"""scripts/export_model.py: half-precision export, pieces for the return channel, join, load."""

import json
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import VisionEncoderDecoderModel

from img2cq.modeling import build_model, count_parameters, load_pretrained, save_pretrained

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import export_model  # noqa: E402


@pytest.fixture
def trained_dir(tmp_path):
    torch.manual_seed(0)
    model, tokenizer, processor = build_model("tiny")
    save_pretrained(tmp_path / "trained", model, tokenizer, processor, {"command": "python enhanced_train.py ..."})
    return tmp_path / "trained"


def test_export_split_join_round_trip(trained_dir, tmp_path):
    out = tmp_path / "export"
    assert export_model.main([str(trained_dir), str(out), "--split-mib", "0.5"]) == 0
    pieces = sorted(p.name for p in out.iterdir())
    assert pieces[-1] == "model.tar.sha256" and all(p.startswith("model.tar.part-") for p in pieces[:-1])
    assert len(pieces) - 1 >= 3  # ~1.8 MB of bf16 weights (tiny preset, codec tokenizer) in 0.5 MiB pieces
    assert all((out / p).stat().st_size <= 2**19 for p in pieces)

    assert export_model.main(["--join", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "preprocessor_config.json", "README.md",
            "training_config.json", "export.json"} <= names and not any(n.startswith("model.tar") for n in names)
    record = json.loads((out / "export.json").read_text())
    assert record["dtype"] == "bf16" and "--split-mib 0.5" in record["command"]
    assert "python enhanced_train.py ..." in (out / "README.md").read_text()

    # plain transformers keeps bf16; load_pretrained computes in fp32 on a CPU, with the same weights
    assert next(VisionEncoderDecoderModel.from_pretrained(out).parameters()).dtype == torch.bfloat16
    exported = load_pretrained(out, device="cpu")
    original = load_pretrained(trained_dir, device="cpu")
    assert next(exported.model.parameters()).dtype == torch.float32
    for a, b in zip(exported.model.parameters(), original.model.parameters()):
        torch.testing.assert_close(a, b.to(torch.bfloat16).float())
    assert isinstance(exported.generate([Image.new("RGB", (64, 64), "white")], max_new_tokens=4)[0], str)


def test_export_refuses_weights_over_the_limit_and_damaged_pieces(trained_dir, tmp_path):
    assert export_model.main([str(trained_dir), str(tmp_path / "big"), "--max-mb", "1"]) == 2
    out = tmp_path / "export"
    export_model.main([str(trained_dir), str(out), "--split-mib", "1"])
    (out / "model.tar.part-001").unlink()
    assert export_model.main(["--join", str(out)]) == 2


def test_compact_preset_fits_the_50_mb_limit_in_bf16():
    model, _, _ = build_model("compact")
    assert 2 * count_parameters(model) <= 50e6
