"""Retrieve-and-edit: training rows from a library build, the prompted decoder sequence, and a
model that trains on it and generates after its prompt."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from PIL import Image, ImageDraw

from img2cq import codec, library, search
from img2cq.editing import edit_picture, library_rows, nearest_others
from img2cq.modeling import build_model, image_processor, load_pretrained, model_input_frame, prompt_prefix
from img2cq.tokenizer import encode_program
from img2cq.training import Collator, TrainingArguments, train
from img2cq.training_args import parse_training_cli

SEED = 41


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    """(work folder, library): a build of 24 draws and the library of its first 16 distinct parts."""
    work = tmp_path_factory.mktemp("library-build")
    library.build_chunks(work, 18, SEED, workers=2, progress=False, chunk=8)
    return work, library.pack_library(work, 16, SEED, dims=8)


def test_each_part_is_prompted_with_its_nearest_other_part(build):
    work, parts = build
    train_rows, eval_rows = library_rows(work, parts, eval_parts=4, progress=False)
    features = parts.features
    distance = ((features[:, None] - features[None]) ** 2).sum(-1)
    np.fill_diagonal(distance, np.inf)
    assert list(nearest_others(parts, batch=5, progress=False)) == list(distance.argmin(axis=1))
    assert list(eval_rows.parts) == [12, 13, 14, 15]
    assert set(train_rows.parts) <= set(range(12)) and all(p < 12 for p in train_rows.prompts)
    for row, part, prompt in zip(train_rows, train_rows.parts, train_rows.prompts):
        assert row["cadquery"] == parts.program(part) and row["prompt"] == parts.program(prompt) != row["cadquery"]
        assert row["image"].size == (library.THUMB, library.THUMB)
    assert train_rows.lengths[0] == len(parts.tokens(train_rows.parts[0])) + len(parts.tokens(train_rows.prompts[0])) + 2


def test_a_build_that_did_not_make_the_library_is_refused(build, tmp_path):
    work, parts = build
    other = tmp_path / "other-build"
    library.build_chunks(other, 16, SEED + 1, workers=2, progress=False, chunk=8)
    claims_other = library.PartLibrary(parts.ids, parts.offsets, parts.features, parts.mean, parts.components,
                                       {**parts.card, "seed": SEED + 1})
    with pytest.raises(ValueError, match="not the one that made the library"):
        library_rows(other, claims_other, progress=False)
    with pytest.raises(FileNotFoundError, match="no library build"):
        library_rows(tmp_path / "missing", parts, progress=False)


def test_the_prompt_is_read_but_not_learned(build):
    """Labels are -100 on ``bos prompt``; the second bos predicts the program's first token. Without
    a prompt the batch is the one the model's own label shift makes (same loss)."""
    work, parts = build
    rows = list(library_rows(work, parts, eval_parts=4, progress=False)[0])[:3]
    model, tokenizer, _ = build_model("tiny")
    collate = Collator(tokenizer, image_processor(64), max_tokens=512)
    batch = collate(rows)
    for i, row in enumerate(rows):
        prefix, target = prompt_prefix(tokenizer, row["prompt"]), encode_program(tokenizer, row["cadquery"])
        assert prefix == [tokenizer.bos_token_id, *encode_program(tokenizer, row["prompt"]), tokenizer.bos_token_id]
        n = len(prefix) + len(target)
        assert batch["decoder_input_ids"][i, :n].tolist() == prefix + target
        assert batch["labels"][i, :len(prefix) - 1].tolist() == [-100] * (len(prefix) - 1)
        assert batch["labels"][i, len(prefix) - 1:n].tolist() == target + [tokenizer.eos_token_id]
        assert int(batch["decoder_attention_mask"][i].sum()) == n
    plain = collate([{k: v for k, v in row.items() if k != "prompt"} for row in rows])
    model.eval()
    with torch.no_grad():
        ours = model(**plain).loss
        shifted = model(pixel_values=plain["pixel_values"], labels=plain["labels"],
                        decoder_attention_mask=plain["decoder_attention_mask"]).loss
    assert torch.allclose(ours, shifted)


def test_an_edit_model_learns_its_parts_and_writes_after_the_prompt(build, tmp_path, one_torch_thread):
    work, parts = build
    train_rows, eval_rows = library_rows(work, parts, eval_parts=4, progress=False)
    args = TrainingArguments(output_dir=str(tmp_path / "model"), model_size="tiny", library_build=str(work),
                             batch_size=6, max_steps=150, learning_rate=3e-3, warmup_steps=10, save_steps=1000,
                             log_steps=50, eval_samples=0)
    train(args, train_rows=train_rows, eval_rows=eval_rows)
    model = load_pretrained(tmp_path / "model", device="cpu", library=parts)
    assert model.edits and model.model.config.retrieval_prompt
    rows = list(train_rows)
    written = model.generate([r["image"] for r in rows], prompts=[r["prompt"] for r in rows])
    assert any(w == r["cadquery"] for w, r in zip(written, rows)), "no training part written from its prompt"
    pictures = [r["image"] for r in rows[:2]]
    assert model.prompts(pictures) == [parts.program(parts.nearest(p, 1)[0]) for p in pictures]
    for program in model.generate(pictures) + [p for ps in model.sample(pictures, 2) for p in ps]:
        codec.parse(program)  # grammar-constrained after the prompt: every program parses
    ranked = [replace(search.retrieve(parts, pictures[0], 4)[k], agreement=score) for k, score in enumerate([0.2, 0.9, 0.5, -np.inf])]
    edits = search.edits_of(model, pictures[0], ranked, 2)
    assert {c.source for c in edits} <= {f"edit:{ranked[1].source}", f"edit:{ranked[2].source}"}
    assert not {c.program for c in edits} & {c.program for c in ranked}
    assert search.proposes(model) is False and search.editor(None, pictures[0], 2) is None


def test_without_prompts_the_same_rows_train_a_plain_model_that_reads_library_pictures(build, tmp_path,
                                                                                       one_torch_thread):
    """The baseline a retrieve-and-edit model is compared with: same parts, same pictures, no prompt."""
    work, parts = build
    prompted = library_rows(work, parts, eval_parts=4, progress=False)[0]
    plain, eval_rows = library_rows(work, parts, eval_parts=4, prompted=False, progress=False)
    assert list(plain.parts) == list(prompted.parts) and all("prompt" not in row for row in plain)
    assert plain.lengths[0] == len(parts.tokens(plain.parts[0])) + 1
    args = parse_training_cli(TrainingArguments, "", [
        "--output-dir", str(tmp_path / "model"), "--model-size", "tiny", "--library-build", str(work),
        "--no-retrieval-prompt", "--max-steps", "2", "--save-steps", "1000", "--eval-samples", "0"])
    assert args.retrieval_prompt is False
    with pytest.raises(SystemExit):  # one error line: the flag means nothing without the library's rows
        parse_training_cli(TrainingArguments, "", ["--no-retrieval-prompt"])
    train(args, train_rows=plain, eval_rows=eval_rows)
    model = load_pretrained(tmp_path / "model", device="cpu", library=parts)
    assert not model.edits and model.library_pictures and not search.editor(model, None, 2)
    picture = Image.new("RGB", (448, 448), "white")
    ImageDraw.Draw(picture).rectangle((100, 150, 340, 300), fill=(120, 120, 120), outline=(0, 0, 0), width=3)
    expected = model.processor([model_input_frame(edit_picture(picture), model.processor)], return_tensors="pt")
    assert torch.equal(model.pixel_values([picture]), expected["pixel_values"])
    assert model.prompts([picture]) == [None]
