"""Evaluate a trained model on test images: VSR, IoU, per-sample predictions, a results.csv row.

    python enhanced_eval.py ./models/enhanced --samples 50
    python enhanced_eval.py models/img2cq-cpu --samples 50 --candidates 8 --refine 8   # search: shipped part library
"""

import sys

from img2cq.evaluation_args import EvaluationArguments
from img2cq.training_args import parse_cli

if __name__ == "__main__":
    args = parse_cli(EvaluationArguments, "Generate programs for test images and score them (VSR, IoU).", config=False)
    from img2cq.evaluation import main  # after parsing: --help answers at once

    sys.exit(main(args))
