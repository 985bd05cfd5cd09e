"""Train the image -> CadQuery model with the plain loop (see enhanced_train.py for every option).

    python train_vision_encoder_decoder.py --epochs 3 --batch-size 4 --output-dir ./models/basic
"""

import sys

from img2cq.training import main

if __name__ == "__main__":
    sys.exit(main("Train a ViT + GPT-2 image -> CadQuery model (basic options).", basic=True))
