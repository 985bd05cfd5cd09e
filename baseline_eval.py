"""Score the two reference baselines on the first N test samples and append them to results.csv:
a constant box for every image (the seed's baseline) and the program of the nearest training image.

    python baseline_eval.py 50
"""

import argparse
import sys


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Score the constant and nearest-neighbour baselines (VSR, IoU).")
    p.add_argument("samples", type=int, nargs="?", default=50, help="test samples to score (the first N)")
    p.add_argument("--eval-json", default="data/test.jsonl", help="test split (JSONL)")
    p.add_argument("--train-json", default="data/train.jsonl", help="training split searched by the nearest-image baseline")
    p.add_argument("--train-samples", type=int, default=None, help="search only the first N training images")
    p.add_argument("--exclude-programs-in", default=None, metavar="SPLIT",
                   help="leave out training images whose program is in this split (as the model's training did)")
    p.add_argument("--no-train", action="store_true",
                   help="skip the nearest-training-image baseline (e.g. on a benchmark without a training split)")
    p.add_argument("--library", default=None, metavar="DIR",
                   help="part library of the nearest-library-part baseline (default: the shipped one)")
    p.add_argument("--no-library", action="store_true", help="skip the nearest-library-part baseline")
    p.add_argument("--workers", type=int, default=2, help="sandbox processes running programs")
    p.add_argument("--cluster", metavar="ADDRESS|auto|local", default=None,
                   help="run the programs on a Dask cluster (scheduler address, auto = $DASK_SCHEDULER_ADDRESS, "
                        "local = a cluster of --workers processes here)")
    p.add_argument("--results-csv", default="results.csv")
    p.add_argument("--output-dir", default=None,
                   help="where the per-sample predictions go (default: runs/eval/baselines)")
    args = p.parse_args(argv)
    for flag in ('samples', 'train_samples', 'workers'):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            p.error(f"{flag.replace('_', '-')} must be at least 1")
    return args


if __name__ == "__main__":
    a = parse_args()
    from img2cq.evaluation import evaluate_baselines, run_cli  # after parsing: --help answers at once

    sys.exit(run_cli(evaluate_baselines, samples=a.samples, eval_json=a.eval_json, train_json=None if a.no_train else a.train_json,
                     train_samples=a.train_samples, workers=a.workers, results_csv=a.results_csv,
                     output_dir=a.output_dir, command=" ".join(["python", *sys.argv]), cluster=a.cluster,
                     exclude_programs_in=a.exclude_programs_in, library_dir=a.library,
                     use_library=not a.no_library))
