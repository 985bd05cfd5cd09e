"""The training loop: a tiny model memorises a few programs; checkpoints resume after kill -9."""

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
from PIL import Image

from img2cq.executor import Executor
from img2cq.modeling import load_pretrained
from img2cq.sampler import sample_program
from img2cq.tokenizer import load_tokenizer
from img2cq.training import Collator, TrainingArguments, TrainingError, augment_image, train
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
    exact = [i for i, (p, s) in enumerate(zip(predictions, short_samples)) if p == s["cadquery"]]
    assert exact, "no training program reproduced exactly"
    reference, predicted = executor.map([short_samples[exact[0]]["cadquery"], predictions[exact[0]]], mesh=True)
    assert predicted.ok and iou_from_results(reference, predicted) == pytest.approx(1.0, abs=1e-6)
    log = (tmp_path / "model" / "logs" / "train_log.csv").read_text().splitlines()
    assert log[0].startswith("step,epoch,loss")
    assert (tmp_path / "model" / "checkpoints" / "step-150" / "trainer_state.json").is_file()


def test_collator_appends_eos_and_masks_padding(short_samples):
    from img2cq.modeling import image_processor

    tokenizer = load_tokenizer()
    batch = Collator(tokenizer, image_processor(64))(short_samples[:3])
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


def test_kill_9_then_resume_loses_at_most_one_interval(dataset, tmp_path):
    out = tmp_path / "run"
    cmd = [str(ROOT / "enhanced_train.py"), "--model-size", "tiny", "--train-json", str(dataset / "train.jsonl"),
           "--eval-json", "none", "--batch-size", "2", "--max-steps", "400", "--save-steps", "2",
           "--output-dir", str(out)]
    proc = subprocess.Popen([sys.executable, *cmd], cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not list((out / "checkpoints").glob("step-4")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
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
    tokenizer = load_tokenizer()
    rows = [json.loads(line) for line in (dataset / "train.jsonl").read_text().splitlines()]
    lengths = sorted(len(tokenizer(r["cadquery"], add_special_tokens=False)["input_ids"]) for r in rows)
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
    assert seen and all(len(tokenizer(p, add_special_tokens=False)["input_ids"]) <= limit for p in seen)
    assert len(set(seen)) == sum(n <= limit for n in lengths)

    with pytest.raises(TrainingError, match="cannot fill one step"):
        train(TrainingArguments(**args, output_dir=str(tmp_path / "none"), epochs=1, max_program_tokens=1))
