"""Score the reference baselines on the first N test samples and append them to results.csv:
a constant box for every image (the seed's baseline), the program of the nearest training image and
the program of the nearest part of the part library.

    python baseline_eval.py 50
"""

import sys

from img2cq.evaluation_args import BaselineArguments
from img2cq.training_args import parse_cli

if __name__ == "__main__":
    args = parse_cli(BaselineArguments, "Score the constant and nearest-neighbour baselines (VSR, IoU).", config=False)
    from img2cq.evaluation import main  # after parsing: --help answers at once

    sys.exit(main(args))
