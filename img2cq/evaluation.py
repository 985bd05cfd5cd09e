"""Evaluating a model or the baselines on test images and recording the result (enhanced_eval.py, baseline_eval.py).

Programs are run and scored by `img2cq.scoring` (the path every metric shares): VSR is the share
of predictions that build a valid solid; IoU averages over the samples whose reference builds, an
invalid prediction scoring 0; IOU_valid averages over the valid predictions only.

Per-sample predictions go to a run directory (default ``runs/eval/<model name>/``), never into the
model directory, with a JSON file beside them saying how they were made. ``results.csv`` keeps the
seed's header ``Model,VSR,IOU,Delta`` first and adds columns after it. ``Delta`` = this row's IoU
minus the IoU of the constant baseline (``CONSTANT_PROGRAM``, one fixed box for every image) on
the same samples, so rows scored on different samples stay comparable.
"""

from __future__ import annotations

import csv
import datetime
import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from img2cq.data import DOWNLOAD_HINT, load_split
from img2cq.sandbox import Executor, ProgramRunner
from img2cq.scoring import execute, executor_or_new, score_executed

RESULTS_FIELDS = ["Model", "VSR", "IOU", "Delta", "IOU_valid", "samples", "decoding", "eval_json", "date", "command"]
RUNS_DIR = Path("runs") / "eval"
VERSIONED_PACKAGES = ("numpy", "cadquery", "manifold3d", "torch", "transformers")

# The constant-prediction baseline: a 1 x 1 x 0.5 box, written in the GenCAD-Code style.
CONSTANT_PROGRAM = """import cadquery as cq
# Generating a workplane for sketch 0
wp_sketch0 = cq.Workplane(cq.Plane(cq.Vector(-0.5, -0.5, -0.25), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))
loop0=wp_sketch0.moveTo(1.0, 0.0).lineTo(1.0, 1.0).lineTo(0.0, 1.0).lineTo(0.0, 0.0).close()
solid0=wp_sketch0.add(loop0).extrude(0.5)
solid=solid0
"""


class EvalError(ValueError):
    """Bad input to an evaluation (missing data, unreadable image, no model): one line for the user."""


def load_samples(eval_json: str, samples: int | None, exclude_programs_in: str | None = None):
    """The first ``samples`` rows of a split as dicts with a decoded RGB "image" (without the
    programs of the split ``exclude_programs_in``)."""
    for path in (eval_json, exclude_programs_in):
        if path is not None and not Path(path).is_file():
            raise EvalError(f"no split at {path}: create it with `{DOWNLOAD_HINT}`")
    try:
        split = load_split(eval_json, exclude_programs_in=exclude_programs_in)
    except ValueError as e:
        raise EvalError(str(e)) from None
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


def open_executor(workers: int, cluster: str | None = None) -> ProgramRunner:
    """A local sandbox pool of ``workers``, or with ``cluster`` (an address, "auto" or "local") a
    `img2cq.sandbox.ClusterExecutor` on that Dask cluster."""
    if cluster is None:
        return Executor(workers=workers)
    from img2cq.sandbox.cluster import ClusterUnavailable, connect

    try:
        return connect(cluster, workers=workers)
    except ClusterUnavailable as e:
        raise EvalError(str(e)) from e


def score_programs(references: list[str], predictions: list[str], executor: ProgramRunner | None = None,
                   workers: int = 2) -> dict:
    """`img2cq.scoring`'s scores of ``predictions`` against ``references``, plus the constant baseline.

    Keys: "vsr", "iou", "iou_valid", the counts of `img2cq.scoring.summarise`, "per_sample", and
    "constant_iou": the constant box's IoU on the same samples, for the Delta column. Every program
    (references, predictions, the constant box) runs once. Training-time evaluation calls this too.
    """
    with executor_or_new(executor, workers) as ex:
        refs = execute(references, ex, "running references")
        scores = score_executed(refs, execute(predictions, ex, "running predictions"), ex, progress="scoring")
        constant = score_executed(refs, execute([CONSTANT_PROGRAM], ex) * len(refs), ex)
    return {**scores, "constant_iou": constant["iou"]}


def default_output_dir(name: str) -> Path:
    """Where an evaluation of model ``name`` writes its predictions: ``runs/eval/<last path part>``."""
    return RUNS_DIR / Path(name).name


def write_predictions(out_dir: str | Path, rows: list[dict], predictions: list[str], scores: dict,
                      how: dict) -> Path:
    """``predictions_<split>_<decoding>.jsonl`` (one scored row per sample) and a ``.json`` saying how it was made."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"predictions_{Path(how['eval_json']).stem}_{how['decoding']}.jsonl"
    with open(path, "w") as f:
        for row, prediction, s in zip(rows, predictions, scores["per_sample"]):
            f.write(json.dumps({"id": row["id"], "prediction": prediction, "valid": s["candidate_valid"],
                                "error": s["candidate_error"], "iou": s["iou"], "metric_error": s["metric_error"]})
                    + "\n")
    summary = {k: v for k, v in scores.items() if k != "per_sample"}
    path.with_suffix(".json").write_text(json.dumps(
        {**how, "date": _now(), "python": platform.python_version(), "versions": _versions(), "scores": summary},
        indent=2) + "\n")
    return path


def _versions() -> dict:
    versions = {}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def _now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


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
    iou_valid = "" if scores["iou_valid"] is None else f"{scores['iou_valid']:.4f}"
    return {"Model": model, "VSR": f"{scores['vsr']:.4f}", "IOU": f"{scores['iou']:.4f}",
            "Delta": f"{scores['iou'] - scores['constant_iou']:+.4f}", "IOU_valid": iou_valid,
            "samples": scores["n"], "decoding": decoding, "eval_json": eval_json, "date": _now(), "command": command}


def print_table(rows: list[dict]) -> None:
    print(f"{'Model':40s} {'VSR':>7s} {'IOU':>7s} {'Delta':>8s} {'IOU_valid':>9s} {'samples':>8s}")
    for r in rows:
        print(f"{r['Model']:40s} {r['VSR']:>7s} {r['IOU']:>7s} {r['Delta']:>8s} {r['IOU_valid'] or '-':>9s} "
              f"{r['samples']:>8}")


def evaluate_model(model_dir: str, eval_json: str = "data/test.jsonl", samples: int | None = 50,
                   num_beams: int = 1, best_of: int | None = None, batch_size: int = 8, workers: int = 2,
                   max_new_tokens: int | None = None, results_csv: str = "results.csv",
                   output_dir: str | None = None, command: str = "", device=None, candidates: int = 1,
                   refine_seconds: float = 0.0, train_json: str | None = None, cluster: str | None = None,
                   shortlist: int | None = None, library_dir: str | None = None) -> dict:
    """Generate for the first ``samples`` test images, score, write predictions JSONL, append results.csv.

    ``candidates > 1`` or ``refine_seconds > 0``: test-time search (``img2cq.search``) instead of
    plain decoding, with ``shortlist`` retrieved parts (default ``search.SHORTLIST``) from the library
    of ``train_json``, else of ``library_dir`` (default: the shipped part library).
    """
    from img2cq.modeling import ModelError, load_pretrained  # torch: only model evaluation pays for it

    searching = candidates > 1 or refine_seconds > 0
    if searching and (num_beams > 1 or (best_of or 1) > 1):
        raise EvalError("--candidates/--refine replace --num-beams/--best-of: pass one or the other")
    rows = load_samples(eval_json, samples)  # bad data fails before the (slower) model load
    try:
        model = load_pretrained(model_dir, device=device)
    except ModelError as e:
        raise EvalError(str(e)) from e
    decoding = f"beam{num_beams}" if num_beams > 1 else "greedy"
    if best_of and best_of > 1:
        decoding += f"+best_of{best_of}"
    predictions = []
    if searching:
        from img2cq.search import SHORTLIST, search_rows

        shortlist = SHORTLIST if shortlist is None else shortlist

        try:
            predictions, decoding, results = search_rows(model, rows, candidates, refine_seconds, train_json, workers,
                                                         max_new_tokens, shortlist, library_dir)
        except (FileNotFoundError, ValueError) as e:
            raise EvalError(str(e)) from e
        if not predictions:
            raise EvalError("interrupted before any image was searched")
        print(f"search: {np.mean([r.seconds for r in results]):.1f} s per image over {len(results)} images "
              f"({workers} workers, load average {os.getloadavg()[0]:.1f})")
        rows = rows[:len(predictions)]  # Ctrl-C: score the images searched so far
    with open_executor(workers, cluster) as ex:
        for start in [] if searching else tqdm(range(0, len(rows), batch_size), desc="generating", unit="batch"):
            images = [r["image"] for r in rows[start:start + batch_size]]
            predictions += model.generate(images, num_beams=num_beams, best_of=best_of,
                                          max_new_tokens=max_new_tokens, executor=ex)
        scores = score_programs([r["cadquery"] for r in rows], predictions, ex)

    how = {"command": command, "model": str(model_dir), "eval_json": eval_json, "samples": len(rows),
           "decoding": decoding, "num_beams": num_beams, "best_of": best_of, "max_new_tokens": max_new_tokens,
           "candidates": candidates, "refine_seconds": refine_seconds, "train_json": train_json,
           "shortlist": shortlist, "library": None if not searching or train_json else (library_dir or "shipped")}
    out = write_predictions(output_dir or default_output_dir(model_dir), rows, predictions, scores, how)
    result = result_row(str(model_dir), scores, decoding, eval_json, command)
    append_result(results_csv, result)
    print_table([result])
    print(f"predictions: {out}\nappended to {results_csv}")
    return {**scores, "predictions_path": str(out)}


def nearest_neighbour_programs(train_json: str, test_rows: list[dict], train_samples: int | None = None,
                               exclude_programs_in: str | None = None) -> list[str]:
    """For each test image, the program of the training image nearest in retrieval features
    (``img2cq.library``: the same look-up the search uses)."""
    from img2cq.library import PartLibrary

    train = load_samples(train_json, train_samples, exclude_programs_in)
    library = PartLibrary.from_pictures([r["image"] for r in train], [r["cadquery"] for r in train],
                                        {"source": {"split": train_json, "rows": len(train)}})
    return [library.program(library.nearest(row["image"], 1)[0]) for row in test_rows]


def nearest_library_programs(test_rows: list[dict], library_dir: str | None = None) -> tuple[list[str], int]:
    """For each test image, the program of the nearest part of the part library (default: the
    shipped one), and the library's size."""
    from img2cq.library import PartLibrary

    library = PartLibrary.load(library_dir)
    return [library.program(library.nearest(row["image"], 1)[0]) for row in test_rows], len(library)


def evaluate_baselines(samples: int = 50, eval_json: str = "data/test.jsonl", train_json: str = "data/train.jsonl",
                       train_samples: int | None = None, workers: int = 2, results_csv: str = "results.csv",
                       output_dir: str | None = None, command: str = "", cluster: str | None = None,
                       exclude_programs_in: str | None = None, library_dir: str | None = None,
                       use_library: bool = True) -> list[dict]:
    """Score the baselines on the same test samples: the constant box, the nearest training image
    (with ``train_json``; ``exclude_programs_in``: leave the training samples whose program is in
    that split out of the look-up, as training left them out) and the nearest part of the part
    library (``use_library``; ``library_dir``, default the shipped one)."""
    rows = load_samples(eval_json, samples)
    references = [r["cadquery"] for r in rows]
    candidates = {("baseline-constant-box", "fixed"): [CONSTANT_PROGRAM] * len(rows)}
    if train_json:
        candidates[("baseline-nearest-train-image", "nearest")] = nearest_neighbour_programs(
            train_json, rows, train_samples, exclude_programs_in=exclude_programs_in)
    if use_library:
        try:
            programs, size = nearest_library_programs(rows, library_dir)
        except (FileNotFoundError, ValueError) as e:
            raise EvalError(str(e)) from e
        candidates[("baseline-nearest-library-part", f"nearest-of-{size}")] = programs
    results, paths = [], []
    with open_executor(workers, cluster) as ex:
        for (name, decoding), predictions in candidates.items():
            scores = score_programs(references, predictions, ex)
            how = {"command": command, "model": name, "eval_json": eval_json, "samples": len(rows),
                   "decoding": decoding, "train_json": train_json, "train_samples": train_samples,
                   "library": library_dir or "shipped" if name.endswith("library-part") else None,
                   "exclude_programs_in": exclude_programs_in}
            paths.append(write_predictions(output_dir or default_output_dir("baselines"), rows, predictions,
                                           scores, how))
            results.append(result_row(name, scores, decoding, eval_json, command))
    for r in results:
        append_result(results_csv, r)
    print_table(results)
    print("predictions: " + ", ".join(map(str, paths)) + f"\nappended to {results_csv}")
    return results


def run_cli(fn, **kwargs) -> int:
    """Call an evaluation, turning bad input into one error line and exit code 2."""
    try:
        fn(**kwargs)
    except (EvalError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
