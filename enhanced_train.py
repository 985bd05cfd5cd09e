"""Train the image -> CadQuery model with every option: augmentation, mixed precision, warm-up +
cosine schedule, accumulation, length-grouped batches, periodic VSR/IoU evaluation,
best-checkpoint keeping, --resume, --stream; multi-GPU through `accelerate launch enhanced_train.py ...`.

    python enhanced_train.py configs/cpu_default.json                 # a checked-in recipe
    python enhanced_train.py configs/cpu_default.json --max-steps 100  # flags after the file win
    python enhanced_train.py --epochs 3 --batch-size 4 --output-dir ./models/enhanced --augment \
        --train-json data/train.jsonl --eval-json data/test.jsonl
"""

import sys

from img2cq.training_args import TrainingArguments, parse_training_cli

if __name__ == "__main__":
    args = parse_training_cli(TrainingArguments, "Train a ViT + GPT-2 image -> CadQuery model (all options). "
                              "Arguments come from flags, a JSON config file given first, or both.")
    from img2cq.training import main  # after parsing: --help answers before torch loads

    sys.exit(main(args))
