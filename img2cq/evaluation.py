"""Scoring programs against references and recording the result (enhanced_eval.py, baseline_eval.py).

Every program runs once, in the sandbox (``img2cq.executor``), with ``mesh=True, brep=True``; VSR is the share of
predictions that build a valid solid and IoU comes from ``metrics.best_iou.iou_from_results`` on the
two executed results (an invalid prediction scores 0; samples whose reference fails are left out).

``results.csv`` keeps the seed's header ``Model,VSR,IOU,Delta`` and adds columns after it.
``Delta`` = this row's IoU minus the IoU of the constant baseline (``CONSTANT_PROGRAM``, one fixed
box for every image) on the same samples, so rows scored on different samples stay comparable.
"""

from __future__ import annotations

import csv
import datetime
import json
import sys
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from img2cq.framing import frame_silhouette
from img2cq.training import DOWNLOAD_HINT

RESULTS_FIELDS = ["Model", "VSR", "IOU", "Delta", "samples", "decoding", "eval_json", "date", "command"]

# The constant-prediction baseline: a 1 x 1 x 0.5 box, written in the GenCAD-Code style.
CONSTANT_PROGRAM = """import cadquery as cq
# Generating a workplane for sketch 0
wp_sketch0 = cq.Workplane(cq.Plane(cq.Vector(-0.5, -0.5, -0.25), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))
loop0=wp_sketch0.moveTo(1.0, 0.0).lineTo(1.0, 1.0).lineTo(0.0, 1.0).lineTo(0.0, 0.0).close()
solid0=wp_sketch0.add(loop0).extrude(0.5)
solid=solid0
"""


class EvalError(ValueError):
    """Bad input to an evaluation (missing data, unreadable image): one line for the user."""


def load_samples(eval_json: str, samples: int | None):
    """The first ``samples`` rows of a split as dicts with a decoded RGB "image"."""
    from img2cq.data import load_split

    if not Path(eval_json).is_file():
        raise EvalError(f"no evaluation data at {eval_json}: create it with `{DOWNLOAD_HINT}`")
    split = load_split(eval_json)
    n = len(split) if samples is None else min(samples, len(split))
    if n == 0:
        raise EvalError(f"{eval_json} holds no samples")
    rows = []
    for i in range(n):
        try:
            row = split[i]
            row["image"] = row["image"].convert("RGB")
        except Exception as e:  # noqa: BLE001 - PIL and datasets raise many kinds for a bad file
            raise EvalError(f"cannot read the image of sample {i} in {eval_json}: {type(e).__name__}: {e}") from e
        rows.append(row)
    return rows


def execute_once(codes: list[str], executor, desc: str) -> list:
    """Executor results for ``codes``, running each distinct program only once."""
    unique = list(dict.fromkeys(codes))
    # brep=True lets the metric fall back to exact booleans for the ~1% of meshes manifold3d refuses
    results = dict(zip(unique, executor.map(unique, mesh=True, brep=True, progress=desc)))
    return [results[c] for c in codes]


def score_programs(references: list[str], predictions: list[str], executor=None, workers: int = 2) -> dict:
    """VSR, mean IoU and per-sample scores of ``predictions`` against ``references``.

    Also scores the constant baseline on the same samples (``constant_iou``) for the Delta column.
    """
    from img2cq.executor import Executor
    from metrics.best_iou import iou_from_results

    if executor is None:
        with Executor(workers=workers) as ex:
            return score_programs(references, predictions, ex)
    ref_results = execute_once(references, executor, "running references")
    pred_results = execute_once(predictions, executor, "running predictions")
    constant = executor.run(CONSTANT_PROGRAM, mesh=True, brep=True)
    per_sample, ious, constant_ious = [], [], []
    for ref, pred in zip(ref_results, pred_results):
        iou = None
        if ref.ok:
            iou = iou_from_results(ref, pred, executor=executor) if pred.ok else 0.0
            ious.append(iou)
            constant_ious.append(iou_from_results(ref, constant, executor=executor) if constant.ok else 0.0)
        per_sample.append({"valid": pred.ok, "error": None if pred.ok else f"{pred.error_kind}: {pred.message}",
                           "iou": iou, "reference_valid": ref.ok})
    return {
        "vsr": float(np.mean([s["valid"] for s in per_sample])),
        "iou": float(np.mean(ious)) if ious else 0.0,
        "constant_iou": float(np.mean(constant_ious)) if constant_ious else 0.0,
        "n": len(per_sample),
        "n_invalid_references": len(per_sample) - len(ious),
        "per_sample": per_sample,
    }


def append_result(results_csv: str | Path, row: dict) -> None:
    """Append one row, writing the header when the file is new."""
    path = Path(results_csv)
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=RESULTS_FIELDS, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow(row)


def result_row(model: str, scores: dict, decoding: str, eval_json: str, command: str) -> dict:
    return {"Model": model, "VSR": f"{scores['vsr']:.4f}", "IOU": f"{scores['iou']:.4f}",
            "Delta": f"{scores['iou'] - scores['constant_iou']:+.4f}", "samples": scores["n"],
            "decoding": decoding, "eval_json": eval_json,
            "date": datetime.datetime.now().isoformat(timespec="seconds"), "command": command}


def print_table(rows: list[dict]) -> None:
    print(f"{'Model':40s} {'VSR':>7s} {'IOU':>7s} {'Delta':>8s} {'samples':>8s}")
    for r in rows:
        print(f"{r['Model']:40s} {r['VSR']:>7s} {r['IOU']:>7s} {r['Delta']:>8s} {r['samples']:>8d}")


def evaluate_model(model_dir: str, eval_json: str = "data/test.jsonl", samples: int | None = 50,
                   num_beams: int = 1, best_of: int | None = None, batch_size: int = 8, workers: int = 2,
                   max_new_tokens: int | None = None, results_csv: str = "results.csv",
                   command: str = "", device=None) -> dict:
    """Generate for the first ``samples`` test images, score, write predictions JSONL, append results.csv."""
    from img2cq.executor import Executor
    from img2cq.modeling import load_pretrained

    rows = load_samples(eval_json, samples)  # bad data fails before the (slower) model load
    model = load_pretrained(model_dir, device=device)
    decoding = f"beam{num_beams}" if num_beams > 1 else "greedy"
    if best_of and best_of > 1:
        decoding += f"+best_of{best_of}"
    with Executor(workers=workers) as ex:
        predictions = []
        for start in tqdm(range(0, len(rows), batch_size), desc="generating", unit="batch"):
            images = [r["image"] for r in rows[start:start + batch_size]]
            predictions += model.generate(images, num_beams=num_beams, best_of=best_of,
                                          max_new_tokens=max_new_tokens, executor=ex)
        scores = score_programs([r["cadquery"] for r in rows], predictions, ex)

    out = Path(model_dir) / f"predictions_{Path(eval_json).stem}_{decoding}.jsonl"
    with open(out, "w") as f:
        for row, pred, s in zip(rows, predictions, scores["per_sample"]):
            f.write(json.dumps({"id": row["id"], "prediction": pred, "valid": s["valid"], "error": s["error"],
                                "iou": s["iou"]}) + "\n")
    result = result_row(str(model_dir), scores, decoding, eval_json, command)
    append_result(results_csv, result)
    print_table([result])
    print(f"predictions: {out}\nappended to {results_csv}")
    return {**scores, "predictions_path": str(out)}


def _thumbnail(image) -> np.ndarray:
    """A 32 x 32 grey thumbnail as a unit-free float vector (for nearest-neighbour look-up)."""
    from PIL import Image

    return np.asarray(frame_silhouette(image).convert("L").resize((32, 32), Image.Resampling.BILINEAR), np.float32).ravel() / 255.0


def nearest_neighbour_programs(train_json: str, test_rows: list[dict], train_samples: int | None = None) -> list[str]:
    """For each test image, the program of the training image closest in 32 x 32 pixel distance."""
    train = load_samples(train_json, train_samples)
    bank = np.stack([_thumbnail(r["image"]) for r in tqdm(train, desc="indexing training images")])
    programs = []
    for row in test_rows:
        nearest = int(np.argmin(((bank - _thumbnail(row["image"])) ** 2).sum(axis=1)))
        programs.append(train[nearest]["cadquery"])
    return programs


def evaluate_baselines(samples: int = 50, eval_json: str = "data/test.jsonl", train_json: str = "data/train.jsonl",
                       train_samples: int | None = None, workers: int = 2, results_csv: str = "results.csv",
                       command: str = "") -> list[dict]:
    """Score the constant box and the nearest-training-image baselines on the same test samples."""
    from img2cq.executor import Executor

    rows = load_samples(eval_json, samples)
    references = [r["cadquery"] for r in rows]
    candidates = {
        "baseline-constant-box": [CONSTANT_PROGRAM] * len(rows),
        "baseline-nearest-train-image": nearest_neighbour_programs(train_json, rows, train_samples),
    }
    results = []
    with Executor(workers=workers) as ex:
        for name, predictions in candidates.items():
            scores = score_programs(references, predictions, ex)
            results.append(result_row(name, scores, "fixed" if "constant" in name else "nearest",
                                      eval_json, command))
    for r in results:
        append_result(results_csv, r)
    print_table(results)
    print(f"appended to {results_csv}")
    return results


def run_cli(fn, **kwargs) -> int:
    """Call an evaluation, turning bad input into one error line and exit code 2."""
    from img2cq.modeling import ModelError

    try:
        fn(**kwargs)
    except (EvalError, ModelError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
