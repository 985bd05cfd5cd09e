"""Train the image -> CadQuery model with the plain loop (see enhanced_train.py for every option).

    python train_vision_encoder_decoder.py --epochs 3 --batch-size 4 --output-dir ./models/basic
"""

import sys

from img2cq.training_args import BasicTrainingArguments, parse_training_cli

if __name__ == "__main__":
    args = parse_training_cli(BasicTrainingArguments, "Train a ViT + GPT-2 image -> CadQuery model (basic "
                              "options). Arguments come from flags, a JSON config file given first, or both.")
    from img2cq.training import main  # after parsing: --help answers before torch loads

    sys.exit(main(args))
