"""The training loop: a tiny model memorises a few programs; checkpoints resume after kill -9 with the
same batches; arguments come from flags and config files; weight decay spares biases and norms."""

import csv
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import VisionEncoderDecoderModel
from transformers.pytorch_utils import Conv1D

from img2cq.sandbox import Executor
from img2cq.modeling import MAX_PROGRAM_TOKENS, Img2CQ, build_model, load_pretrained
from img2cq.sampler import sample_program
from img2cq.codec import canonical_program
from img2cq.data import DataError
from img2cq.tokenizer import encode_program, load_codec_tokenizer, load_tokenizer
from img2cq.training import (Collator, TrainingArguments, TrainingError, augment_image, epoch_order, evaluate,
                             length_grouped_order, parameter_groups, train)
from img2cq.training_args import BasicTrainingArguments, parse_arguments
from metrics.best_iou import iou_from_results

ROOT = Path(__file__).resolve().parents[1]
# one intra-op thread: on a small shared CPU, tiny matrices run many times faster than with two
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def short_samples():
    """The 8 shortest of 200 sampler programs, rendered in the GenCAD style through the sandbox."""
    rng = np.random.default_rng(7)
    programs = sorted((sample_program(rng) for _ in range(200)), key=len)[:8]
    with Executor(workers=2, preload=("img2cq.render",)) as ex:
        results = ex.map(programs, mesh=False, postprocess="img2cq.render:render_png", postprocess_kwargs={"size": 448})
    assert all(r.ok for r in results), [r.message for r in results if not r.ok]
    return [{"image": Image.open(io.BytesIO(r.extras["value"])).convert("RGB"), "cadquery": p}
            for r, p in zip(results, programs)]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from img2cq.data import generate_synthetic

    out = tmp_path_factory.mktemp("data")
    generate_synthetic(out, {"train": 8, "test": 2}, seed=3, workers=2, progress=False)
    return out


def test_tiny_model_learns_to_reproduce_a_training_program(short_samples, tmp_path, executor):
    args = TrainingArguments(output_dir=str(tmp_path / "model"), model_size="tiny", eval_json=None, batch_size=8,
                             max_steps=150, learning_rate=3e-3, warmup_steps=10, save_steps=1000, log_steps=50)
    train(args, train_rows=short_samples)
    model = load_pretrained(tmp_path / "model", device="cpu")
    predictions = model.generate([s["image"] for s in short_samples])
    exact = [i for i, (p, s) in enumerate(zip(predictions, short_samples)) if p == canonical_program(s["cadquery"])]
    assert exact, "no training program reproduced exactly"
    # the reference is the program as the codec writes it (its rounding is measured in bench_codec.py)
    reference, predicted = executor.map([canonical_program(short_samples[exact[0]]["cadquery"]), predictions[exact[0]]],
                                        mesh=True)
    assert predicted.ok and iou_from_results(reference, predicted) == pytest.approx(1.0, abs=1e-6)
    log = (tmp_path / "model" / "logs" / "train_log.csv").read_text().splitlines()
    assert log[0].startswith("step,epoch,loss")
    rates = [float(row["samples_per_s"]) for row in csv.DictReader(log) if row["samples_per_s"]]
    assert len(rates) == 3 and min(rates) > 0  # one per 50 steps: the rate over those steps
    assert (tmp_path / "model" / "checkpoints" / "step-150" / "trainer_state.json").is_file()


def test_collator_appends_eos_and_masks_padding(short_samples):
    from img2cq.modeling import image_processor

    tokenizer = load_tokenizer()
    batch = Collator(tokenizer, image_processor(64), max_tokens=MAX_PROGRAM_TOKENS)(short_samples[:3])
    assert batch["pixel_values"].shape == (3, 3, 64, 64)
    labels, mask = batch["labels"], batch["decoder_attention_mask"]
    for row, m in zip(labels, mask):
        real = row[row != -100]
        assert real[-1].item() == tokenizer.eos_token_id and int(m.sum()) == len(real)


def test_augmentation_keeps_size_and_is_seeded(short_samples):
    image = short_samples[0]["image"]
    a = [augment_image(image, random.Random(5)) for _ in range(2)]
    assert a[0].size == image.size and a[0].mode == "RGB"
    assert np.array_equal(np.asarray(a[0]), np.asarray(a[1]))
    changed = [augment_image(image, random.Random(s)) for s in range(8)]
    assert any(not np.array_equal(np.asarray(c), np.asarray(image)) for c in changed)


def run_script(args, **kw):
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=ENV, capture_output=True, text=True, **kw)


def train_until_checkpoint(dataset, out: Path, save_steps: int, step: int, **popen) -> tuple[list[str], subprocess.Popen]:
    """A tiny 400-step training run in a subprocess, once its checkpoint of ``step`` is written (or it
    ended, or 240 s passed): its command (ending ``--save-steps N --output-dir OUT``) and process."""
    cmd = [str(ROOT / "enhanced_train.py"), "--model-size", "tiny", "--train-json", str(dataset / "train.jsonl"),
           "--eval-json", "none", "--batch-size", "2", "--max-steps", "400", "--save-steps", str(save_steps),
           "--output-dir", str(out)]
    proc = subprocess.Popen([sys.executable, *cmd], cwd=ROOT, env=ENV, **popen)
    deadline = time.time() + 240
    while not list((out / "checkpoints").glob(f"step-{step}")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    return cmd, proc


def test_kill_9_then_resume_loses_at_most_one_interval(dataset, tmp_path):
    out = tmp_path / "run"
    cmd, proc = train_until_checkpoint(dataset, out, save_steps=2, step=4, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = sorted(int(p.name.split("-")[1]) for p in (out / "checkpoints").glob("step-*"))
    assert saved and saved[-1] >= 4
    resumed = run_script([*cmd[:-4], "--max-steps", str(saved[-1] + 2), "--output-dir", str(out), "--resume"],
                         timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed from {out / 'checkpoints' / f'step-{saved[-1]}'}" in resumed.stdout
    state = json.loads((out / "checkpoints" / f"step-{saved[-1] + 2}" / "trainer_state.json").read_text())
    assert state["step"] == saved[-1] + 2
    assert (out / "config.json").is_file() and not list((out / "checkpoints").glob(".tmp-*"))


def test_ctrl_c_stops_after_the_step_with_a_checkpoint_and_the_final_model(dataset, tmp_path):
    out = tmp_path / "run"
    _, proc = train_until_checkpoint(dataset, out, save_steps=3, step=3, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-2000:]
    assert "SIGINT: stopping after this step" in stderr and "stopped on request" in stdout
    record = json.loads((out / "training_config.json").read_text())
    assert 3 <= record["steps"] < 400 and not record["finished"] and record["train_cpu_seconds"] > 0
    assert (out / "checkpoints" / f"step-{record['steps']}").is_dir()  # --resume goes on from there
    assert load_pretrained(out, device="cpu").model.config.decoder.n_layer == 2


def test_existing_checkpoints_need_resume(dataset, tmp_path):
    cmd = [str(ROOT / "train_vision_encoder_decoder.py"), "--model-size", "tiny", "--train-json",
           str(dataset / "train.jsonl"), "--eval-json", str(dataset / "test.jsonl"), "--batch-size", "4",
           "--epochs", "1", "--output-dir", str(tmp_path / "basic")]
    first = run_script(cmd, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    assert (tmp_path / "basic" / "best" / "config.json").is_file()
    again = run_script(cmd, timeout=120)
    assert again.returncode == 2 and "--resume" in again.stderr.strip().splitlines()[-1]


def test_missing_data_is_one_clear_line(tmp_path):
    result = run_script([str(ROOT / "train_vision_encoder_decoder.py"), "--train-json", str(tmp_path / "no.jsonl"),
                         "--output-dir", str(tmp_path / "m")], timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "scripts/download_hf_dataset.py --source synthetic" in result.stderr


def test_max_program_tokens_trains_only_on_short_programs(dataset, tmp_path, monkeypatch):
    tokenizer = load_codec_tokenizer()  # what build_model gives a new model
    rows = [json.loads(line) for line in (dataset / "train.jsonl").read_text().splitlines()]
    lengths = sorted(len(encode_program(tokenizer, r["cadquery"])) for r in rows)
    limit = lengths[len(lengths) // 2]  # keeps the shorter half (at least 4 of 8)
    seen = []
    collate = Collator.__call__

    def recording(self, batch):
        seen.extend(row["cadquery"] for row in batch)
        return collate(self, batch)

    monkeypatch.setattr(Collator, "__call__", recording)
    args = dict(train_json=str(dataset / "train.jsonl"), eval_json=None, model_size="tiny", batch_size=2,
                warmup_steps=0, save_steps=100)
    train(TrainingArguments(**args, output_dir=str(tmp_path / "short"), epochs=2, max_program_tokens=limit))
    assert seen and all(len(encode_program(tokenizer, p)) <= limit for p in seen)
    assert len(set(seen)) == sum(n <= limit for n in lengths)

    with pytest.raises(TrainingError, match="cannot fill one step"):
        train(TrainingArguments(**args, output_dir=str(tmp_path / "none"), epochs=1, max_program_tokens=1))


@pytest.fixture
def batches_trained_on(monkeypatch):
    """The programs of every batch the collator builds, in order (a prefetched batch included)."""
    batches = []
    collate = Collator.__call__

    def recording(self, rows):
        batches.append([row["cadquery"] for row in rows])
        return collate(self, rows)

    monkeypatch.setattr(Collator, "__call__", recording)
    return batches


def test_resume_continues_with_the_batches_an_uninterrupted_run_trains_on(dataset, tmp_path, batches_trained_on):
    """8 programs in batches of 2, length groups of 2 batches: stop mid-epoch at step 3, resume to 7."""
    args = dict(train_json=str(dataset / "train.jsonl"), eval_json=None, model_size="tiny", batch_size=2,
                warmup_steps=0, save_steps=3, log_steps=100, length_group_batches=2)
    train(TrainingArguments(**args, output_dir=str(tmp_path / "straight"), max_steps=7))
    straight = batches_trained_on[:7]
    batches_trained_on.clear()
    train(TrainingArguments(**args, output_dir=str(tmp_path / "split"), max_steps=3))
    first = batches_trained_on[:3]
    batches_trained_on.clear()
    train(TrainingArguments(**args, output_dir=str(tmp_path / "split"), max_steps=7, resume=True))
    assert first + batches_trained_on[:4] == straight
    assert sorted(p for b in straight[:4] for p in b) == sorted(json.loads(line)["cadquery"] for line in
                                                               (dataset / "train.jsonl").read_text().splitlines())


def test_programs_of_a_held_out_split_are_never_trained_on(dataset, tmp_path, batches_trained_on):
    lines = (dataset / "train.jsonl").read_text().splitlines(keepends=True)
    held_out = tmp_path / "held_out.jsonl"
    held_out.write_text("".join(lines[:2]))
    args = dict(train_json=str(dataset / "train.jsonl"), eval_json=None, model_size="tiny", batch_size=2,
                warmup_steps=0, save_steps=100, epochs=1)
    train(TrainingArguments(**args, exclude_programs_in=str(held_out), output_dir=str(tmp_path / "m")))
    assert {p for batch in batches_trained_on for p in batch} == {json.loads(line)["cadquery"] for line in lines[2:]}
    with pytest.raises(DataError, match="no split at .* to leave out of training"):
        train(TrainingArguments(**args, exclude_programs_in=str(tmp_path / "no.jsonl"), output_dir=str(tmp_path / "n")))


def test_training_and_generation_give_the_model_the_same_picture(short_samples):
    model, tokenizer, processor = build_model("tiny", 128)
    images = [row["image"] for row in short_samples[:2]]
    trained_on = Collator(tokenizer, processor, max_tokens=64)(short_samples[:2])["pixel_values"]
    assert torch.equal(trained_on, Img2CQ(model, tokenizer, processor, device="cpu").pixel_values(images))


def test_resuming_a_checkpoint_of_another_layout_is_one_clear_error(short_samples, tmp_path):
    args = dict(output_dir=str(tmp_path / "model"), model_size="tiny", eval_json=None, batch_size=8, max_steps=1,
                warmup_steps=0)
    train(TrainingArguments(**args), train_rows=short_samples)
    with pytest.raises(TrainingError, match="cannot resume from"):
        train(TrainingArguments(**args, image_size=128, resume=True), train_rows=short_samples)


def test_length_grouped_order_is_a_seeded_permutation_of_similar_length_batches():
    lengths = np.random.default_rng(0).integers(20, 2000, 103).tolist()
    usable = list(range(3, 103))  # rows 0-2 filtered out, e.g. by --max-program-tokens

    def order(seed, group_batches, batch_size=4):
        return length_grouped_order(usable, lengths, batch_size, group_batches, torch.Generator().manual_seed(seed))

    assert order(1, 5) == order(1, 5) and order(1, 5) != order(2, 5)
    assert len(order(1, 5)) == 100 and set(order(1, 5)) == set(usable)
    batches = [order(1, 25)[i:i + 4] for i in range(0, 100, 4)]  # one group: batches are runs of sorted lengths
    spans = sorted((min(lengths[i] for i in b), max(lengths[i] for i in b)) for b in batches)
    assert all(hi <= next_lo for (_, hi), (next_lo, _) in zip(spans, spans[1:]))
    assert order(1, 2, batch_size=3)[:3] != sorted(usable, key=lambda i: lengths[i])[:3]  # batch order shuffled

    def computed_positions(o, batch_size=8):
        return sum(batch_size * max(lengths[i] for i in o[s:s + batch_size]) for s in range(0, len(o), batch_size))

    random_args = TrainingArguments(batch_size=8, group_by_length=False)
    grouped_args = TrainingArguments(batch_size=8, length_group_batches=12)
    assert epoch_order(usable, lengths, random_args, 0) != epoch_order(usable, lengths, random_args, 1)
    assert (computed_positions(epoch_order(usable, lengths, grouped_args, 0))
            < 0.75 * computed_positions(epoch_order(usable, lengths, random_args, 0)))


def test_weight_decay_spares_biases_and_norms():
    model, _, _ = build_model("tiny")
    decay, no_decay = parameter_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0

    def ids(params):
        return {id(p) for p in params}

    norms = ids(p for m in model.modules() if isinstance(m, torch.nn.LayerNorm) for p in m.parameters())
    biases = ids(p for name, p in model.named_parameters() if name.endswith(".bias"))
    matrices = ids(m.weight for m in model.modules()
                   if isinstance(m, (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv2d, Conv1D)))
    assert norms and biases and ids(no_decay["params"]) == norms | biases
    assert matrices <= ids(decay["params"])
    assert ids(decay["params"]) | ids(no_decay["params"]) == ids(model.parameters())
    assert not ids(decay["params"]) & ids(no_decay["params"])


def test_evaluation_cuts_programs_to_the_models_position_table(short_samples):
    """A decoder with 32 positions (as a small pretrained one might be) still evaluates long programs."""
    model, tokenizer, processor = build_model("tiny", tokenizer="bpe")  # BPE programs run past 32 tokens
    config = model.config
    config.decoder.n_positions = 32
    model = VisionEncoderDecoderModel(config=config)
    assert min(len(encode_program(tokenizer, s["cadquery"])) for s in short_samples[:2]) > 32
    metrics = evaluate(model, tokenizer, processor, short_samples[:2], TrainingArguments(eval_samples=0, batch_size=2),
                       "cpu")
    assert np.isfinite(metrics["eval_loss"])


def test_checked_in_configs_parse_and_flags_after_them_win():
    configs = sorted((ROOT / "configs").glob("*.json"))
    assert {p.name for p in configs} >= {"cpu_default.json", "gpu_stream.json"}
    for path in configs:
        assert isinstance(parse_arguments(TrainingArguments, "", [str(path)]), TrainingArguments)
    cpu = parse_arguments(TrainingArguments, "", [str(ROOT / "configs" / "cpu_default.json"), "--max-steps", "5",
                                                  "--no-group-by-length", "--eval-json", "data/test.jsonl"])
    assert (cpu.max_steps, cpu.model_size, cpu.augment, cpu.group_by_length) == (5, "cpu", True, False)
    assert cpu.eval_json == "data/test.jsonl"
    assert "configs/gpu_stream.json" in (ROOT / "scripts" / "gpu_train.sh").read_text()
    basic = parse_arguments(BasicTrainingArguments, "", ["--batch-size", "3", "--eval-json", "none", "--resume"])
    assert (basic.batch_size, basic.eval_json, basic.resume) == (3, None, True)


@pytest.mark.parametrize("config, message", [
    ('{"batch_size": 2, "no_such_option": 1}', "unknown argument(s) no_such_option"),
    ('{"batch_size": 2', "cannot read the config file"),
    ('{"stream": true}', "--stream needs --max-steps"),
])
def test_bad_config_is_one_clear_line(tmp_path, config, message):
    path = tmp_path / "config.json"
    path.write_text(config)
    result = run_script([str(ROOT / "enhanced_train.py"), str(path)], timeout=60)
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0
    assert result.stderr.startswith("error: ") and message in result.stderr


def test_the_basic_script_shows_fewer_options():
    basic = run_script([str(ROOT / "train_vision_encoder_decoder.py"), "--help"], timeout=60)
    full = run_script([str(ROOT / "enhanced_train.py"), "--help"], timeout=60)
    assert basic.returncode == full.returncode == 0
    assert "--batch-size" in basic.stdout and "--stream" not in basic.stdout and "--group-by-length" in full.stdout
    refused = run_script([str(ROOT / "train_vision_encoder_decoder.py"), "--stream"], timeout=60)
    assert refused.returncode == 2 and "unrecognized arguments: --stream" in refused.stderr
