"""IoU against seconds per image for test-time search settings, with refinement evaluations per second.

Each setting ``CANDIDATES:SHORTLIST:REFINE[:TOP]`` searches every picture of the split (the model's
CANDIDATES proposals, or none with ``--model none``; the SHORTLIST nearest parts of the part
library, rendered and re-ranked; REFINE seconds of structured refinement, shared by the TOP best
ranked, default ``search.default_refine_top``), then the kept programs
are scored against the references in the sandbox (VSR, IoU). Seconds per image count everything
after the picture is loaded: proposing, retrieval, rendering, re-ranking, refinement. Kept programs
are cached per setting (``--out``; resumable, Ctrl-C keeps what is finished). ``--judge`` picks what
scores the proposals: the blend of the learned and the hand-made agreement (the search's default,
``comparator.default_judge``), the learned one alone or the hand-made one alone; ``--refine-judge``
what scores refinement's edits (default: the hand-made agreement, as the search does);
``--comparator`` another learned agreement than the shipped one.

    python benchmarks/bench_search.py --eval-json benchmarks/real_dev/test.jsonl \\
        --settings 1:16:1 8:64:8 --model models/img2cq-cpu
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="models/img2cq-cpu", help="model proposing programs, or `none`")
    p.add_argument("--library", default=None, help="part library (default: the shipped one)")
    p.add_argument("--eval-json", default="benchmarks/real_dev/test.jsonl")
    p.add_argument("--samples", type=int, default=None, help="first N pictures (default: all)")
    p.add_argument("--settings", nargs="+", default=["1:16:1", "8:64:8"],
                   help="CANDIDATES:SHORTLIST:REFINE_SECONDS[:REFINE_TOP]")
    p.add_argument("--judge", choices=["blend", "learned", "hand"], default="blend", help="what scores the proposals")
    p.add_argument("--refine-judge", choices=["blend", "learned", "hand"], default="hand", help="what scores refinement's edits")
    p.add_argument("--comparator", default=None, help="learned agreement of the judge (default: the shipped one)")
    p.add_argument("--consensus-top", type=int, default=0,
                   help="rank proposals by 3D consensus with the judge's N best (search.CONSENSUS_TOP: 4); "
                        "0, the default: by the judge alone")
    p.add_argument("--keep-by-judge", action="store_true",
                   help="of several refined finals keep the one the judge scores best (default: the one of "
                        "highest consensus among them, as the search does)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("runs/bench_search"))
    args = p.parse_args()

    import numpy as np

    from img2cq.agreement import agreements
    from img2cq.comparator import LearnedAgreement
    from img2cq.data import DataError
    from img2cq.evaluation import load_samples, score_programs
    from img2cq.library import PartLibrary
    from img2cq.search import default_refine_top, search_label, search_many

    try:
        rows = load_samples(args.eval_json, args.samples)
    except DataError as e:
        p.error(str(e))
    library = PartLibrary.load(args.library)
    learned = LearnedAgreement.load(args.comparator)
    judges = {"learned": learned.scores, "hand": agreements, "blend": learned.blended_scores}
    judge, refine_judge = judges[args.judge], judges[args.refine_judge]
    model = None
    if args.model != "none":
        import torch

        from img2cq.modeling import load_pretrained

        torch.set_num_threads(1)
        model = load_pretrained(args.model)
    table = []
    for setting in args.settings:
        fields = setting.split(":")
        candidates, shortlist, refine = int(fields[0]), int(fields[1]), float(fields[2])
        refine_top = int(fields[3]) if len(fields) > 3 else default_refine_top(refine)
        label = (f"{'library' if model is None else search_label(candidates, 0)}+short{shortlist}+refine{refine:g}"
                 + (f"+top{refine_top}" if refine_top > 1 else "")
                 + f"+{args.judge}" + ("" if args.refine_judge == "hand" else f"+refine-{args.refine_judge}")
                 + (f"+consensus{args.consensus_top}" if args.consensus_top else "")
                 + ("+keep-by-judge" if args.keep_by_judge and refine_top > 1 else ""))
        path = args.out / f"{Path(args.eval_json).parent.name}-{Path(args.eval_json).stem}-{args.model.replace('/', '_')}-{label}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        done = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        todo = rows[len(done):]
        if todo:
            with open(path, "a") as f:
                for row, result in zip(todo, search_many(model, [r["image"] for r in todo], candidates, refine,
                                                         args.workers, library, shortlist, judge=judge,
                                                         refine_judge=refine_judge, refine_top=refine_top,
                                                         consensus_top=args.consensus_top,
                                                         keep_by_consensus=not args.keep_by_judge)):
                    done.append({"id": row["id"], "program": result.program, "seconds": result.seconds,
                                 "source": result.source, "evaluations": result.refine_evaluations,
                                 "load": os.getloadavg()[0]})
                    f.write(json.dumps(done[-1]) + "\n")
        scores = score_programs([r["cadquery"] for r in rows[:len(done)]], [d["program"] for d in done],
                                workers=args.workers)
        rate = np.sum([d["evaluations"] for d in done]) / max(refine * len(done), 1e-9) if refine else 0.0
        table.append((label, len(done), scores["vsr"], scores["iou"], np.mean([d["seconds"] for d in done]), rate,
                      np.mean([d["source"].startswith("library") for d in done]), np.mean([d["load"] for d in done])))
    print(f"\n{args.eval_json} ({len(library)} library parts, {args.workers} workers)")
    print(f"{'setting':36s} {'images':>6s} {'VSR':>6s} {'IoU':>6s} {'s/img':>6s} {'eval/s':>7s} {'library':>8s} {'load':>5s}")
    for label, n, vsr, iou, seconds, rate, from_library, load in table:
        print(f"{label:36s} {n:6d} {vsr:6.3f} {iou:6.3f} {seconds:6.1f} {rate:7.1f} {from_library:8.2f} {load:5.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
