"""Evaluate a trained model on test images: VSR, IoU, per-sample predictions, a results.csv row.

    python enhanced_eval.py ./models/enhanced --samples 50
    python enhanced_eval.py models/img2cq-cpu --samples 50 --candidates 8 --refine 8   # search: shipped part library
"""

import argparse
import sys


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Generate programs for test images and score them (VSR, IoU).")
    p.add_argument("model_dir", help="directory written by a training script")
    p.add_argument("--samples", type=int, default=50, help="test images to evaluate (the first N)")
    p.add_argument("--eval-json", default="data/test.jsonl", help="test split (JSONL)")
    p.add_argument("--num-beams", type=int, default=1, help="1: greedy; >1: beam search")
    p.add_argument("--best-of", type=int, default=None,
                   help="also sample N-1 programs per image and keep the first that builds a valid solid")
    p.add_argument("--batch-size", type=int, default=8, help="images per generate() call")
    p.add_argument("--workers", type=int, default=2, help="sandbox processes running programs")
    p.add_argument("--cluster", metavar="ADDRESS|auto|local", default=None,
                   help="run the programs on a Dask cluster (scheduler address, auto = $DASK_SCHEDULER_ADDRESS, "
                        "local = a cluster of --workers processes here)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: the model's maximum length")
    p.add_argument("--results-csv", default="results.csv")
    p.add_argument("--output-dir", default=None,
                   help="where the per-sample predictions go (default: runs/eval/<model directory name>)")
    p.add_argument("--candidates", type=int, default=1,
                   help="> 1: test-time search: the model proposes N programs per image (greedy, beam, sampled), "
                        "the part library its nearest parts, and the one whose render agrees best is kept")
    p.add_argument("--refine", type=float, default=0.0, metavar="SECONDS",
                   help="test-time search: then edit the kept program (proportions, holes, sketches) for "
                        "SECONDS per image")
    p.add_argument("--shortlist", type=int, default=None,
                   help="test-time search: library parts rendered and re-ranked per image (default 64; 0: none)")
    p.add_argument("--train-json", default=None,
                   help="retrieve from this split's pictures instead of the part library (its library is "
                        "built once and saved beside it)")
    p.add_argument("--library", default=None, metavar="DIR", help="part library to retrieve from (default: the shipped one)")
    args = p.parse_args(argv)
    for flag in ('samples', 'num_beams', 'best_of', 'batch_size', 'workers', 'max_new_tokens'):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            p.error(f"{flag.replace('_', '-')} must be at least 1")
    if args.candidates < 1 or args.refine < 0 or (args.shortlist is not None and args.shortlist < 0):
        p.error("--candidates must be >= 1, --refine and --shortlist >= 0")
    return args


if __name__ == "__main__":
    a = parse_args()
    from img2cq.evaluation import evaluate_model, run_cli  # after parsing: --help answers at once

    sys.exit(run_cli(evaluate_model, model_dir=a.model_dir, eval_json=a.eval_json, samples=a.samples,
                     num_beams=a.num_beams, best_of=a.best_of, batch_size=a.batch_size, workers=a.workers,
                     max_new_tokens=a.max_new_tokens, results_csv=a.results_csv, output_dir=a.output_dir,
                     command=" ".join(["python", *sys.argv]), candidates=a.candidates, refine_seconds=a.refine,
                     train_json=a.train_json, cluster=a.cluster, shortlist=a.shortlist, library_dir=a.library))
