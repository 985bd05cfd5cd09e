"""Model presets, save/load with tokenizer + image processor, batched generation, best-of-N."""

import json

import pytest
import torch
from PIL import Image, ImageDraw
from transformers import AutoImageProcessor, AutoTokenizer, GPT2Config, GPT2LMHeadModel, ViTConfig, ViTModel

from img2cq.codec import parse
from img2cq.modeling import (MAX_CODEC_TOKENS, MAX_PROGRAM_TOKENS, PRESETS, ModelError, build_model, build_pretrained,
                             count_parameters, load_pretrained, save_pretrained)
from img2cq.tokenizer import is_codec_tokenizer, load_tokenizer


def images(n):
    out = []
    for i in range(n):
        im = Image.new("RGB", (448, 448), "white")
        ImageDraw.Draw(im).rectangle((40 + 20 * i, 60, 300, 380 - 30 * i), fill=(141, 141, 138), outline=(0, 0, 0))
        out.append(im)
    return out


@pytest.mark.parametrize("size", list(PRESETS))
def test_presets_build_with_our_special_tokens(size):
    with torch.device("meta"):  # build without allocating
        model, tokenizer, processor = build_model(size)
    assert processor.size == {"height": PRESETS[size].image_size, "width": PRESETS[size].image_size}
    assert model.config.decoder_start_token_id == tokenizer.bos_token_id
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert model.config.decoder.eos_token_id == tokenizer.eos_token_id


def test_the_shippable_preset_fits_the_export_limit():
    """`compact` is the preset meant to ship: its bf16 weights (2 bytes each) must pass
    scripts/export_model.py's default --max-mb 50; `small`, the next size up, would not."""
    with torch.device("meta"):
        sizes = {name: count_parameters(build_model(name)[0]) for name in ("compact", "small")}
    assert 2 * sizes["compact"] <= 50e6 < 2 * sizes["small"]


def test_codec_is_the_default_and_bpe_stays_available():
    with torch.device("meta"):
        codec_model, codec_tok, _ = build_model("tiny")
        bpe_model, bpe_tok, _ = build_model("tiny", tokenizer="bpe")
    assert is_codec_tokenizer(codec_tok) and not is_codec_tokenizer(bpe_tok)
    assert codec_model.config.decoder.n_positions == MAX_CODEC_TOKENS
    assert bpe_model.config.decoder.n_positions == MAX_PROGRAM_TOKENS
    assert codec_model.config.decoder.vocab_size == len(codec_tok) < len(bpe_tok)
    with pytest.raises(ModelError, match="unknown tokenizer"):
        build_model("tiny", tokenizer="words")


def test_bad_preset_and_image_size():
    with pytest.raises(ModelError, match="model-size"):
        build_model("huge")
    with pytest.raises(ModelError, match="multiple of the patch size"):
        build_model("tiny", image_size=70)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    model, tokenizer, processor = build_model("tiny")
    out = tmp_path_factory.mktemp("tiny")
    save_pretrained(out, model, tokenizer, processor, {"seed": 0, "command": "test"}, {"eval_iou": 0.5})
    return out, model


def test_save_load_round_trip(saved):
    out, model = saved
    for name in ("config.json", "tokenizer.json", "preprocessor_config.json", "training_config.json", "README.md"):
        assert (out / name).is_file(), name
    assert json.loads((out / "training_config.json").read_text())["seed"] == 0
    assert "eval_iou" in (out / "README.md").read_text()
    loaded = load_pretrained(out, device="cpu")
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.model.state_dict()[key]), key
    assert AutoTokenizer.from_pretrained(out).eos_token_id == loaded.tokenizer.eos_token_id
    assert AutoImageProcessor.from_pretrained(out).size == {"height": 64, "width": 64}


def test_batched_greedy_matches_one_by_one_and_beam_runs(saved):
    model = load_pretrained(saved[0], device="cpu")
    ims = images(3)
    batched = model.generate(ims, max_new_tokens=12)
    assert batched == [model.generate([im], max_new_tokens=12)[0] for im in ims]
    beams = model.generate(ims, num_beams=3, max_new_tokens=12)
    assert len(beams) == 3 and all(isinstance(p, str) for p in beams)
    assert model.max_new_tokens >= 500  # room for ~4,000-character programs in codec tokens


def test_codec_model_writes_programs_that_parse(saved):
    model = load_pretrained(saved[0], device="cpu")
    for program in model.generate(images(2), max_new_tokens=30) + model.generate(images(2), num_beams=2,
                                                                                  max_new_tokens=30):
        assert parse(program)


def test_bpe_models_still_build_save_and_generate(tmp_path):
    torch.manual_seed(0)
    model, tokenizer, processor = build_model("tiny", tokenizer="bpe")
    save_pretrained(tmp_path, model, tokenizer, processor, {"seed": 0})
    loaded = load_pretrained(tmp_path, device="cpu")
    assert loaded.grammar is None and not is_codec_tokenizer(loaded.tokenizer)
    assert all(isinstance(p, str) for p in loaded.generate(images(2), max_new_tokens=6))


def test_missing_model_dir(tmp_path):
    with pytest.raises(ModelError, match="no model in"):
        load_pretrained(tmp_path / "nope")


def test_pretrained_encoder_decoder_from_local_dirs(tmp_path):
    tokenizer = load_tokenizer()
    ViTModel(ViTConfig(image_size=32, patch_size=16, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64)).save_pretrained(tmp_path / "enc")
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=1, n_head=2)
                    ).save_pretrained(tmp_path / "dec")
    tokenizer.save_pretrained(tmp_path / "dec")
    model, tok, processor = build_pretrained(str(tmp_path / "enc"), str(tmp_path / "dec"))
    assert model.config.decoder.add_cross_attention and model.config.pad_token_id == tok.pad_token_id
    assert processor.size == {"height": 32, "width": 32}


def test_unreachable_hub_fails_fast(monkeypatch):
    monkeypatch.setattr("img2cq.modeling._hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(ModelError, match="cannot reach the Hugging Face hub"):
        build_pretrained("google/vit-base-patch16-224-in21k", "gpt2")


def test_shipped_model_loads_and_writes_a_program():
    """The main job's default model: a from_pretrained directory in the repository, with provenance."""
    from pathlib import Path

    shipped = Path(__file__).resolve().parents[1] / "models" / "img2cq-cpu"
    config = json.loads((shipped / "training_config.json").read_text())
    assert config["finished"] and config["command"].startswith("python enhanced_train.py")
    assert json.loads((shipped / "export.json").read_text())["dtype"] == "bf16"
    model = load_pretrained(shipped, device="cpu")
    image = Image.new("RGB", (448, 448), "white")
    ImageDraw.Draw(image).rectangle((60, 80, 380, 360), fill=(141, 141, 138), outline=(0, 0, 0))
    program = model.generate([image], max_new_tokens=24)[0]
    assert program.startswith("import cadquery as cq")
