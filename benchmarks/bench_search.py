"""IoU gain of test-time search over greedy decoding, with seconds per image.

Reuses the candidates ``benchmarks/bench_agreement.py`` proposed and cached (``proposals.jsonl``:
greedy, beam, sampled and retrieved programs per test image, with the seconds it took to propose
them), so every setting sees the same candidates. For each (candidates, refine seconds) setting
the kept programs are cached per image (resumable; Ctrl-C keeps what is finished), scored against
the references like ``enhanced_eval.py`` (VSR, IoU, Delta) and appended to ``--results-csv``.
Seconds per image = proposing (greedy only for candidates 1) + rendering and scoring the candidates
+ refinement.

    python benchmarks/bench_search.py --eval-json data/test.jsonl --out runs/search/agreement \\
        --settings 1:0 8:0 8:5 8:20 --results-csv runs/search/results.csv
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="models/img2cq-cpu", help="the model that proposed (for the rows)")
    p.add_argument("--eval-json", default="data/test.jsonl")
    p.add_argument("--out", default="runs/search/agreement", help="folder holding proposals.jsonl")
    p.add_argument("--settings", nargs="+", default=["1:0", "8:0", "8:5", "8:20"],
                   help="CANDIDATES:REFINE_SECONDS; candidates is 1 (greedy) or the number proposed")
    p.add_argument("--samples", type=int, default=None, help="first N proposed images (default: all)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--results-csv", default="runs/search/results.csv")
    args = p.parse_args()

    import numpy as np
    from tqdm.auto import tqdm

    from img2cq.evaluation import append_result, load_samples, result_row, score_programs
    from img2cq.executor import Executor
    from img2cq.search import PRELOAD, pick_and_refine, search_label

    out = Path(args.out)
    proposals = [json.loads(line) for line in (out / "proposals.jsonl").read_text().splitlines()]
    proposals = proposals[:args.samples] if args.samples else proposals
    images = [r["image"] for r in load_samples(args.eval_json, len(proposals))]
    table = []
    with Executor(workers=args.workers, preload=PRELOAD) as ex:
        for setting in args.settings:
            candidates, refine_seconds = int(setting.split(":")[0]), float(setting.split(":")[1])
            label = search_label(candidates, refine_seconds)
            path = out / f"search_{label}.jsonl"
            done = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
            try:
                with open(path, "a") as f:
                    for i in tqdm(range(len(done), len(proposals)), desc=label, unit="img"):
                        record = proposals[i]
                        if candidates == 1 and refine_seconds == 0:
                            program, seconds = record["candidates"][0][1], record["greedy_s"]
                        else:
                            own = record["candidates"][:candidates]
                            result = pick_and_refine(images[i], own, refine_seconds, ex, seed=i)
                            program, seconds = result.program, result.seconds + record["propose_s"]
                        done.append({"id": record["id"], "program": program, "seconds": seconds,
                                     "load": os.getloadavg()[0]})
                        f.write(json.dumps(done[-1]) + "\n")
                        f.flush()
            except KeyboardInterrupt:
                print(f"\ninterrupted: scoring the {len(done)} images of {label} searched so far")
            scores = score_programs([r["reference"] for r in proposals[:len(done)]], [d["program"] for d in done], ex)
            row = result_row(args.model, scores, label, args.eval_json, " ".join(["python", *sys.argv]))
            append_result(args.results_csv, row)
            table.append((label, row, np.mean([d["seconds"] for d in done]), np.mean([d["load"] for d in done])))
            if len(done) < len(proposals):
                break
    greedy = next((float(r["IOU"]) for label, r, _, _ in table if label == "greedy"), None)
    print(f"{'decoding':28s} {'images':>6s} {'VSR':>6s} {'IoU':>6s} {'gain':>7s} {'s/img':>6s} {'load':>5s}")
    for label, r, seconds, load in table:
        gain = f"{float(r['IOU']) - greedy:+.3f}" if greedy is not None else "n/a"
        print(f"{label:28s} {r['samples']:6d} {float(r['VSR']):6.3f} {float(r['IOU']):6.3f} {gain:>7s} "
              f"{seconds:6.1f} {load:5.1f}")
    print(f"rows appended to {args.results_csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
