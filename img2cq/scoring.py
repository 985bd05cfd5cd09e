"""The one scoring path: run programs in the sandbox, decide validity, score (reference, candidate) pairs.

Evaluation (`img2cq.evaluation`, and through it training-time evaluation), the metric CLIs
(`metrics/`) and the server's `/score` all come through here, so:

- every program runs with the same executor options (`RUN_OPTIONS`), and a program counts as
  valid in all of them or in none (meshing and BREP export are part of building a solid);
- an invalid candidate scores IoU 0; a pair whose reference is invalid is left out of the means;
- a pair the metric itself cannot score (say an OCC boolean that fails in the fallback) scores 0
  with its reason in ``metric_error``; it never aborts a run.

Means: ``iou`` averages over every sample whose reference is valid (an invalid prediction counts
as 0, the stricter convention); ``iou_valid`` averages over the samples whose prediction is valid
too, as CAD-Coder reports it (None when no prediction is valid).
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import numpy as np
from tqdm.auto import tqdm

from img2cq.sandbox import ExecResult, Executor, ProgramRunner, default_executor
from img2cq.iou import exact_iou_from_results, iou_from_results

# The mesh feeds the IoU and the BREP its fallback for meshes manifold3d refuses.
RUN_OPTIONS = {"mesh": True, "brep": True}


@contextlib.contextmanager
def executor_or_new(executor: ProgramRunner | None, workers: int | None = None,
                    timeout: float | None = None) -> Iterator[ProgramRunner]:
    """``executor`` itself, else a temporary pool of ``workers`` (default: CPU count), closed afterwards."""
    if executor is not None:
        yield executor
        return
    options = {"timeout": timeout} if timeout else {}
    with Executor(workers=max(1, workers or os.cpu_count() or 1), **options) as own:
        yield own


def execute(codes: list[str], executor: ProgramRunner, progress: bool | str = False) -> list[ExecResult]:
    """Sandbox results for ``codes`` with `RUN_OPTIONS`, running each distinct program once."""
    unique = list(dict.fromkeys(codes))
    results = dict(zip(unique, executor.map(unique, progress=progress, **RUN_OPTIONS)))
    return [results[code] for code in codes]


def score_results(reference: ExecResult, candidate: ExecResult, executor: ProgramRunner | None = None,
                  allow_mirror: bool = False, exact: bool = False) -> dict:
    """Score one executed pair.

    Keys: "reference_valid", "candidate_valid", "reference_error" and "candidate_error"
    ("kind: message" or None), "iou" (None when the reference is invalid, 0.0 when the candidate
    is), "metric_error" (why the metric could not score a valid pair, else None).
    """
    out = {"reference_valid": reference.ok, "candidate_valid": candidate.ok,
           "reference_error": reference.reason or None, "candidate_error": candidate.reason or None,
           "iou": None, "metric_error": None}
    if not reference.ok:
        return out
    out["iou"] = 0.0
    if candidate.ok:
        metric = exact_iou_from_results if exact else iou_from_results
        try:
            out["iou"] = metric(reference, candidate, allow_mirror, executor)
        except Exception as e:  # noqa: BLE001 - any failure of the metric on one pair is that pair's result
            out["metric_error"] = f"{type(e).__name__}: {e}"
    return out


def summarise(per_sample: list[dict]) -> dict:
    """VSR, both IoU means and the counts over per-sample scores from `score_results`."""
    scored = [s["iou"] for s in per_sample if s["reference_valid"]]
    valid = [s["iou"] for s in per_sample if s["reference_valid"] and s["candidate_valid"]]
    return {
        "vsr": float(np.mean([s["candidate_valid"] for s in per_sample])) if per_sample else 0.0,
        "iou": float(np.mean(scored)) if scored else 0.0,
        "iou_valid": float(np.mean(valid)) if valid else None,
        "n": len(per_sample),
        "n_valid": sum(s["candidate_valid"] for s in per_sample),
        "n_invalid_references": len(per_sample) - len(scored),
        "n_metric_failures": sum(s["metric_error"] is not None for s in per_sample),
    }


def score_executed(references: list[ExecResult], candidates: list[ExecResult], executor: ProgramRunner | None = None,
                   allow_mirror: bool = False, exact: bool = False, progress: bool | str = False) -> dict:
    """`summarise` of the pairwise scores, plus "per_sample" (one `score_results` dict per pair)."""
    pairs = zip(references, candidates)
    if progress:
        pairs = tqdm(pairs, total=len(references), desc=progress if isinstance(progress, str) else "scoring",
                     unit="pair")
    per_sample = [score_results(ref, cand, executor, allow_mirror, exact) for ref, cand in pairs]
    return {**summarise(per_sample), "per_sample": per_sample}


def score_pair(reference: str, candidate: str, executor: ProgramRunner | None = None,
               allow_mirror: bool = False, exact: bool = False) -> dict:
    """Run both programs (on ``executor``, else the module default one) and score them (`score_results`)."""
    executor = executor or default_executor()
    gt, pred = execute([reference, candidate], executor)
    return score_results(gt, pred, executor, allow_mirror, exact)
