"""Evaluating a model or the baselines on test images and recording the result (enhanced_eval.py, baseline_eval.py).

The evaluation functions take the scripts' arguments whole (``img2cq.evaluation_args``) and return
what they scored; ``main`` is the scripts' command: it runs one and prints the table.

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
import logging
import os
import platform
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from img2cq.console import fail, show_notes
from img2cq.data import DOWNLOAD_HINT, DataError, load_split
from img2cq.evaluation_args import BaselineArguments, EvaluationArguments
from img2cq.sandbox import Executor, ProgramRunner
from img2cq.scoring import execute, executor_or_new, score_executed

RESULTS_FIELDS = ["Model", "VSR", "IOU", "Delta", "IOU_valid", "samples", "decoding", "eval_json", "date", "command"]
RUNS_DIR = Path("runs") / "eval"
VERSIONED_PACKAGES = ("numpy", "cadquery", "manifold3d", "torch", "transformers")

logger = logging.getLogger(__name__)

# The constant-prediction baseline: a 1 x 1 x 0.5 box, written in the GenCAD-Code style.
CONSTANT_PROGRAM = """import cadquery as cq
# Generating a workplane for sketch 0
wp_sketch0 = cq.Workplane(cq.Plane(cq.Vector(-0.5, -0.5, -0.25), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))
loop0=wp_sketch0.moveTo(1.0, 0.0).lineTo(1.0, 1.0).lineTo(0.0, 1.0).lineTo(0.0, 0.0).close()
solid0=wp_sketch0.add(loop0).extrude(0.5)
solid=solid0
"""


class EvalError(ValueError):
    """Bad input to an evaluation other than its data (no model, no cluster): one line for the user.
    Bad data raises `img2cq.data.DataError`."""


def load_samples(eval_json: str, samples: int | None, exclude_programs_in: str | None = None):
    """The first ``samples`` rows of a split (``img2cq.data.load_split``) as dicts with a decoded RGB
    "image" (without the programs of the split ``exclude_programs_in``); DataError for bad data."""
    for path in (eval_json, exclude_programs_in):
        if path is not None and not Path(path).is_file():
            raise DataError(f"no split at {path}: create it with `{DOWNLOAD_HINT}`")
    split = load_split(eval_json, exclude_programs_in=exclude_programs_in)
    n = len(split) if samples is None else min(samples, len(split))
    if n == 0:
        raise DataError(f"{eval_json} holds no samples")
    rows = []
    for i in range(n):
        try:
            row = split[i]
            row["image"] = row["image"].convert("RGB")
        except Exception as e:  # noqa: BLE001 - PIL and datasets raise many kinds for a bad file
            raise DataError(f"cannot read the image of sample {i} in {eval_json}: {type(e).__name__}: {e}") from e
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


def format_table(rows: list[dict]) -> str:
    """results.csv rows as the table the evaluation scripts print."""
    lines = [f"{'Model':40s} {'VSR':>7s} {'IOU':>7s} {'Delta':>8s} {'IOU_valid':>9s} {'samples':>8s}"]
    lines += [f"{r['Model']:40s} {r['VSR']:>7s} {r['IOU']:>7s} {r['Delta']:>8s} {r['IOU_valid'] or '-':>9s} "
              f"{r['samples']:>8}" for r in rows]
    return "\n".join(lines)


def search_predictions(model, rows: list[dict], args: EvaluationArguments) -> tuple[list[str], str, int | None]:
    """Test-time search (``img2cq.search``) over ``rows``: (programs, decoding label, shortlist used),
    for the first rows only if the search was interrupted."""
    from img2cq.search import default_shortlist, search_rows

    shortlist = default_shortlist(args.refine) if args.shortlist is None else args.shortlist
    try:
        predictions, decoding, results = search_rows(model, rows, args.candidates, args.refine, args.train_json,
                                                     args.workers, args.max_new_tokens, shortlist, args.library)
    except (FileNotFoundError, ValueError) as e:
        raise EvalError(str(e)) from e
    if not predictions:
        raise EvalError("interrupted before any image was searched")
    logger.info("search: %.1f s per image over %d images (%d workers, load average %.1f)",
                np.mean([r.seconds for r in results]), len(results), args.workers, os.getloadavg()[0])
    return predictions, decoding, shortlist


def evaluate_model(args: EvaluationArguments, command: str = "", device=None) -> dict:
    """Generate for the first ``args.samples`` test images, score, write predictions JSONL, append results.csv.

    ``args.searching`` (``--candidates`` > 1 or ``--refine``): test-time search (``img2cq.search``)
    instead of plain decoding, with ``--shortlist`` retrieved parts (default ``search.default_shortlist``) from
    the library of ``--train-json``, else of ``--library`` (default: the shipped part library).
    Returns the scores, the results.csv "row" and the "predictions_path".
    """
    rows = load_samples(args.eval_json, args.samples)  # bad data fails before torch's import and the model's load
    from img2cq.modeling import ModelError, load_pretrained  # torch: only model evaluation pays for it

    try:
        model = load_pretrained(args.model_dir, device=device)
    except ModelError as e:
        raise EvalError(str(e)) from e
    decoding = f"beam{args.num_beams}" if args.num_beams > 1 else "greedy"
    if args.best_of and args.best_of > 1:
        decoding += f"+best_of{args.best_of}"
    predictions, shortlist = [], args.shortlist
    if args.searching:
        predictions, decoding, shortlist = search_predictions(model, rows, args)
        rows = rows[:len(predictions)]  # Ctrl-C: score the images searched so far
    with open_executor(args.workers, args.cluster) as ex:
        batches = [] if args.searching else range(0, len(rows), args.batch_size)
        for start in tqdm(batches, desc="generating", unit="batch", disable=not batches):
            images = [r["image"] for r in rows[start:start + args.batch_size]]
            predictions += model.generate(images, num_beams=args.num_beams, best_of=args.best_of,
                                          max_new_tokens=args.max_new_tokens, executor=ex)
        scores = score_programs([r["cadquery"] for r in rows], predictions, ex)

    how = {"command": command, "model": str(args.model_dir), "eval_json": args.eval_json, "samples": len(rows),
           "decoding": decoding, "num_beams": args.num_beams, "best_of": args.best_of,
           "max_new_tokens": args.max_new_tokens, "candidates": args.candidates, "refine_seconds": args.refine,
           "train_json": args.train_json, "shortlist": shortlist,
           "library": None if not args.searching or args.train_json else (args.library or "shipped")}
    out = write_predictions(args.output_dir or default_output_dir(args.model_dir), rows, predictions, scores, how)
    result = result_row(str(args.model_dir), scores, decoding, args.eval_json, command)
    append_result(args.results_csv, result)
    return {**scores, "row": result, "predictions_path": str(out)}


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


def evaluate_baselines(args: BaselineArguments, command: str = "") -> dict:
    """Score the baselines on the same test samples: the constant box, the nearest training image
    (unless ``--no-train``; ``--exclude-programs-in``: leave the training samples whose program is in
    that split out of the look-up, as training left them out) and the nearest part of the part
    library (unless ``--no-library``; ``--library``, default the shipped one).

    Returns the results.csv "rows" and the "predictions_paths", one per baseline."""
    train_json = None if args.no_train else args.train_json
    rows = load_samples(args.eval_json, args.samples)
    references = [r["cadquery"] for r in rows]
    candidates = {("baseline-constant-box", "fixed"): [CONSTANT_PROGRAM] * len(rows)}
    if train_json:
        candidates[("baseline-nearest-train-image", "nearest")] = nearest_neighbour_programs(
            train_json, rows, args.train_samples, exclude_programs_in=args.exclude_programs_in)
    if not args.no_library:
        try:
            programs, size = nearest_library_programs(rows, args.library)
        except (FileNotFoundError, ValueError) as e:
            raise EvalError(str(e)) from e
        candidates[("baseline-nearest-library-part", f"nearest-of-{size}")] = programs
    results, paths = [], []
    with open_executor(args.workers, args.cluster) as ex:
        for (name, decoding), predictions in candidates.items():
            scores = score_programs(references, predictions, ex)
            how = {"command": command, "model": name, "eval_json": args.eval_json, "samples": len(rows),
                   "decoding": decoding, "train_json": train_json, "train_samples": args.train_samples,
                   "library": args.library or "shipped" if name.endswith("library-part") else None,
                   "exclude_programs_in": args.exclude_programs_in}
            paths.append(str(write_predictions(args.output_dir or default_output_dir("baselines"), rows,
                                               predictions, scores, how)))
            results.append(result_row(name, scores, decoding, args.eval_json, command))
    for r in results:
        append_result(args.results_csv, r)
    return {"rows": results, "predictions_paths": paths}


def main(args: EvaluationArguments | BaselineArguments, command: str | None = None) -> int:
    """The evaluation scripts' command: evaluate the model (or the baselines), print the results table
    and where the files went. Bad input is one error line and exit code 2."""
    command = command if command is not None else " ".join(["python", *sys.argv])
    show_notes()
    try:
        if isinstance(args, BaselineArguments):
            done = evaluate_baselines(args, command)
        else:
            done = evaluate_model(args, command)
            done = {"rows": [done["row"]], "predictions_paths": [done["predictions_path"]]}
    except (EvalError, DataError, FileNotFoundError) as e:
        return fail(e)
    print(format_table(done["rows"]))
    print("predictions: " + ", ".join(done["predictions_paths"]) + f"\nappended to {args.results_csv}")
    return 0
