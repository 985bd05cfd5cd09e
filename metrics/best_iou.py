"""IoU of the solids built by reference and predicted CadQuery programs: the front door.

The metric itself (normalisation, the 24 proper rotations, mesh booleans with OCC and grid
fallbacks) is `img2cq.iou`; running the programs and scoring pairs is `img2cq.scoring`, shared
with evaluation, training and the server, so every path judges a program and a pair alike.

    python -m metrics.best_iou gt.jsonl preds.jsonl --pred-field prediction [--mirror] [--exact]
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

from img2cq.console import fail
from img2cq.data import DataError
from img2cq.sandbox import ExecResult, Executor, ProgramRunner
from img2cq.iou import exact_iou_from_results, iou_from_results
from img2cq.scoring import execute, executor_or_new, score_pair, score_results, summarise
from img2cq.training_args import parse_cli
from metrics.valid_syntax_rate import load_programs

__all__ = ["evaluate_codes", "exact_iou_from_results", "get_iou_best", "iou_from_results", "score_pair"]

MISSING = ExecResult(ok=False, error_kind="missing", message="no prediction for this id")


def get_iou_best(code1: str, code2: str, allow_mirror: bool = False, exact: bool = False,
                 executor: ProgramRunner | None = None) -> float:
    """Best IoU of the solids built by two programs; 0.0 if either program fails."""
    return score_pair(code1, code2, executor, allow_mirror, exact)["iou"] or 0.0


def evaluate_codes(gt_codes: dict, pred_codes: dict, executor: ProgramRunner | None = None,
                   progress: bool = False, allow_mirror: bool = False, exact: bool = False) -> dict:
    """Score every reference id: a missing or failing prediction scores 0 and is counted.

    References that fail to run are left out of the mean (counted in "n_invalid_gt"); predictions
    for ids with no reference are ignored. A pair the metric itself cannot score (e.g. an exact
    boolean that fails) scores 0 with its reason in "errors". "mean_iou_valid" averages over the
    valid predictions only (None when there is none).
    """
    ids = list(gt_codes)
    present = [i for i in ids if i in pred_codes]
    codes = [gt_codes[i] for i in ids] + [pred_codes[i] for i in present]
    with executor_or_new(executor, min(os.cpu_count() or 1, len(codes))) as ex:
        results = execute(codes, ex, progress="executing" if progress else False)
        preds = dict(zip(present, results[len(ids):]))
        scores = {i: score_results(gt, preds.get(i, MISSING), ex, allow_mirror, exact)
                  for i, gt in zip(ids, results)}
    summary = summarise(list(scores.values()))
    scored = {i: s for i, s in scores.items() if s["reference_valid"]}
    errors = {i: error for i, s in scores.items() if (error := _error(s))}
    return {"mean_iou": summary["iou"], "mean_iou_valid": summary["iou_valid"],
            "ious": {i: s["iou"] for i, s in scored.items()}, "n_pairs": len(scored),
            "n_invalid_pred": sum(not s["candidate_valid"] for s in scored.values()),
            "n_invalid_gt": summary["n_invalid_references"], "errors": errors}


def _error(score: dict) -> str | None:
    """Why a pair scored 0 or was left out, or None."""
    if not score["reference_valid"]:
        return f"reference invalid: {score['reference_error']}"
    if score["metric_error"]:
        return f"metric failed: {score['metric_error']}"
    return score["candidate_error"]


@dataclass
class IouArguments:
    gt: str = field(metadata={
        "positional": True, "help": "reference: a .py file, a folder of .py files, or a JSONL keyed by id"})
    pred: str = field(metadata={"positional": True, "help": "prediction(s), in the same form as GT"})
    gt_field: str | None = field(default=None, metadata={"help": "JSONL field holding the reference code"})
    pred_field: str | None = field(default=None, metadata={"help": "JSONL field holding the predicted code"})
    mirror: bool = field(default=False, metadata={"help": "also accept mirror images"})
    exact: bool = field(default=False, metadata={"help": "OCC B-rep booleans instead of mesh booleans"})
    workers: int = os.cpu_count() or 1
    timeout: float = field(default=10.0, metadata={"help": "seconds per program"})


def main(argv: list[str] | None = None) -> int:
    args = parse_cli(IouArguments, "IoU of the solids built by reference and predicted CadQuery programs.", argv,
                     config=False, prog="python -m metrics.best_iou")
    try:
        gt = load_programs(args.gt, args.gt_field)
        pred = load_programs(args.pred, args.pred_field)
    except DataError as e:
        return fail(e)
    if len(gt) == 1 and len(pred) == 1:  # two single programs: compare them whatever their ids
        pred = {next(iter(gt)): next(iter(pred.values()))}
    if args.workers < 1 or args.timeout <= 0:
        return fail("--workers must be >= 1 and --timeout > 0")
    with Executor(workers=args.workers, timeout=args.timeout) as ex:
        report = evaluate_codes(gt, pred, executor=ex, progress=len(gt) > 1,
                                allow_mirror=args.mirror, exact=args.exact)
    for i, message in report["errors"].items():
        print(f"{i}: {message}")
    name = "IoU (mirror allowed)" if args.mirror else "IoU"
    print(f"pairs scored: {report['n_pairs']}  invalid predictions: {report['n_invalid_pred']}  "
          f"invalid references: {report['n_invalid_gt']}")
    print(f"mean {name}: {report['mean_iou']:.4f}")
    valid = report["mean_iou_valid"]
    print(f"mean {name} over valid predictions: {'n/a' if valid is None else f'{valid:.4f}'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
