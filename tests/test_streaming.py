"""--stream: a tiny model trains on fresh procedural samples in length-grouped batches, and --resume goes
on with new ones."""

import json
import os
import subprocess
import sys

import pytest

from img2cq import training
from img2cq.modeling import load_pretrained
from img2cq.tokenizer import encode_program, load_tokenizer
from img2cq.training import TrainingArguments, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def batches_trained_on(monkeypatch):
    """Every batch the collator builds, in order, as a list of (draw index, program)."""
    batches = []
    collate = training.Collator.__call__

    def recording(self, rows):
        batches.append([(row["index"], row["cadquery"]) for row in rows])
        return collate(self, rows)

    monkeypatch.setattr(training.Collator, "__call__", recording)
    return batches


def test_stream_trains_on_fresh_programs_and_resumes_with_new_ones(tmp_path, batches_trained_on):
    out = tmp_path / "model"
    args = dict(output_dir=str(out), model_size="tiny", eval_json=None, stream=True, stream_workers=1,
                batch_size=2, save_steps=1, log_steps=1, warmup_steps=0, length_group_batches=2)
    train(TrainingArguments(**args, max_steps=2))
    first = [s for batch in batches_trained_on for s in batch]  # 2 steps x 2 samples + the prefetched batch
    state = json.loads((out / "checkpoints" / "step-2" / "trainer_state.json").read_text())
    assert len(first) >= 4 and state["stream_next_index"] > max(i for i, _ in first)
    # the first buffer of 4 streamed samples came as 2 batches of similar length: one all shorter
    tokenizer = load_tokenizer()
    a, b = ([len(encode_program(tokenizer, p)) for _, p in batch] for batch in batches_trained_on[:2])
    assert max(a) <= min(b) or max(b) <= min(a)

    train(TrainingArguments(**args, max_steps=4, resume=True))
    second = [s for batch in batches_trained_on for s in batch][len(first):]
    assert len(second) >= 4
    assert min(i for i, _ in second) >= state["stream_next_index"]  # nothing replayed
    programs = [code for batch in batches_trained_on for _, code in batch]
    assert len(set(programs)) == len(programs)  # every batch on distinct programs
    config = json.loads((out / "training_config.json").read_text())
    assert config["steps"] == 4 and config["train_seconds"] > state["train_seconds"]  # summed over resumes
    assert config["train_cpu_seconds"] > state["train_cpu_seconds"] > 0
    assert load_pretrained(out, device="cpu").model.config.decoder.n_layer == 2  # the saved model loads


def test_max_minutes_checkpoints_saves_and_stops(tmp_path, repo_root):
    """A spent budget stops after the first step with a checkpoint and a loadable model."""
    out = tmp_path / "model"
    code = subprocess.run(
        [sys.executable, "enhanced_train.py", "--stream", "--model-size", "tiny", "--max-steps", "1000",
         "--batch-size", "2", "--eval-json", "none", "--max-minutes", "0", "--no-group-by-length",
         "--output-dir", str(out)],
        cwd=repo_root, capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert code.returncode == 0, code.stderr[-2000:]
    assert "spent at step 1/1000" in code.stdout + code.stderr
    assert (out / "checkpoints" / "step-1" / "trainer_state.json").is_file()
    config = json.loads((out / "training_config.json").read_text())
    assert config["steps"] == 1 and config["finished"] is False
    assert load_pretrained(out, device="cpu").model.config.decoder.n_layer == 2


def test_stream_prompts_train_retrieve_and_edit_on_fresh_samples(tmp_path, monkeypatch):
    """--stream-prompts: each streamed sample is prompted with its nearest part of the shipped library,
    and the saved model is a retrieve-and-edit model that reads full pictures."""
    from img2cq.library import PartLibrary

    rows_seen = []
    collate = training.Collator.__call__

    def recording(self, rows):
        rows_seen.extend(rows)
        return collate(self, rows)

    monkeypatch.setattr(training.Collator, "__call__", recording)
    out = tmp_path / "model"
    train(TrainingArguments(output_dir=str(out), model_size="tiny", eval_json=None, stream=True, stream_workers=1,
                            stream_prompts=True, batch_size=2, max_steps=1, save_steps=1000, warmup_steps=0,
                            length_group_batches=1))
    library = PartLibrary.load()
    assert len(rows_seen) >= 2
    for row in rows_seen:
        assert row["prompt"] == library.program(library.nearest(row["image"], 1)[0])
    model = load_pretrained(out, device="cpu")
    assert model.edits and not model.library_pictures
    record = json.loads((out / "training_config.json").read_text())
    assert record["train_json"] is None and record["epochs"] is None and record["model_size"] == "tiny"
    again = training.provenance(TrainingArguments(output_dir=str(tmp_path / "again"), init_from=str(out), stream=True,
                                                  max_steps=1), "python enhanced_train.py", None)
    assert again["model_size"] is None and again["image_size"] is None and again["init_from"] == str(out)
    with pytest.raises(training.TrainingError, match="goes with --stream"):
        TrainingArguments(output_dir=str(tmp_path / "other"), stream_prompts=True)
