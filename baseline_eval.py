"""Score the two reference baselines on the first N test samples and append them to results.csv:
a constant box for every image (the seed's baseline) and the program of the nearest training image.

    python baseline_eval.py 50
"""

import argparse
import sys

from img2cq.evaluation import evaluate_baselines, run_cli

if __name__ == "__main__":
    p = argparse.ArgumentParser(description="Score the constant and nearest-neighbour baselines (VSR, IoU).")
    p.add_argument("samples", type=int, nargs="?", default=50, help="test samples to score (the first N)")
    p.add_argument("--eval-json", default="data/test.jsonl", help="test split (JSONL)")
    p.add_argument("--train-json", default="data/train.jsonl", help="training split searched by the nearest-image baseline")
    p.add_argument("--train-samples", type=int, default=None, help="search only the first N training images")
    p.add_argument("--workers", type=int, default=2, help="sandbox processes running programs")
    p.add_argument("--results-csv", default="results.csv")
    a = p.parse_args()
    sys.exit(run_cli(evaluate_baselines, samples=a.samples, eval_json=a.eval_json, train_json=a.train_json,
                     train_samples=a.train_samples, workers=a.workers, results_csv=a.results_csv,
                     command=" ".join(["python", *sys.argv])))
