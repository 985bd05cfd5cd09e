"""IoU of the default search on pictures as users send them, not as the dataset stores them.

Every picture of the split is altered as a user's copy of it might be (JPEG at two qualities,
twice, half or a third the size, a uniform grey or tinted background, with and without JPEG, a
gradient background, a wider canvas), then searched as ``img2cq generate`` searches by default
(the model's greedy program and the library's nearest parts, the best refined for ``--refine``
seconds); the kept programs are scored against the references in the sandbox. The first row is
the pictures as given.

    python benchmarks/bench_pictures.py --eval-json benchmarks/real_dev/test.jsonl --samples 24
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from img2cq.framing import jpeg_copy  # noqa: E402


def tinted(image: Image.Image, tint) -> Image.Image:
    """The picture with its white background (and everything else) multiplied by ``tint``: three
    channel factors, or an array of them that varies over the picture."""
    return Image.fromarray((np.asarray(image.convert("RGB"), float) * np.asarray(tint)).astype(np.uint8))


def on_gradient(image: Image.Image) -> Image.Image:
    """The picture darkened from x 0.95 at the bottom to x 0.7 at the top: a viewer's gradient background."""
    return tinted(image, np.linspace(0.7, 0.95, image.height)[:, None, None])


def on_wide_canvas(image: Image.Image) -> Image.Image:
    canvas = Image.new("RGB", (image.width * 2, image.height), "white")
    canvas.paste(image.convert("RGB"), (image.width // 2, 0))
    return canvas


VARIANTS = {  # name: (what the user's copy is, how it is made from the dataset's picture)
    "given": ("as given", lambda im: im),
    "jpeg75": ("JPEG, quality 75", lambda im: jpeg_copy(im, 75)),
    "jpeg40": ("JPEG, quality 40", lambda im: jpeg_copy(im, 40)),
    "double": ("twice the size", lambda im: im.resize((im.width * 2, im.height * 2), Image.Resampling.BICUBIC)),
    "half": ("half the size", lambda im: im.resize((im.width // 2, im.height // 2), Image.Resampling.BICUBIC)),
    "third": ("a third of the size", lambda im: im.resize((im.width // 3, im.height // 3), Image.Resampling.BICUBIC)),
    "grey": ("grey background (x 0.92)", lambda im: tinted(im, (0.92, 0.92, 0.92))),
    "bluish": ("bluish background", lambda im: tinted(im, (0.85, 0.9, 0.97))),
    "grey-jpeg75": ("grey background (x 0.85), JPEG 75", lambda im: jpeg_copy(tinted(im, (0.85, 0.85, 0.85)), 75)),
    "gradient": ("vertical gradient background (x 0.7-0.95)", on_gradient),
    "wide": ("on a canvas twice as wide", on_wide_canvas),
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--eval-json", default="benchmarks/real_dev/test.jsonl")
    p.add_argument("--samples", type=int, default=24, help="first N pictures")
    p.add_argument("--refine", type=float, default=1.0, help="seconds of refinement per picture (the default search's)")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--model", default="models/img2cq-cpu")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", help="also write each variant's per-picture IoUs here (JSON), for paired comparisons")
    args = p.parse_args()

    import torch

    from img2cq.data import DataError
    from img2cq.evaluation import load_samples, score_programs
    from img2cq.library import PartLibrary
    from img2cq.modeling import load_pretrained
    from img2cq.search import search_many

    torch.set_num_threads(1)
    try:
        rows = load_samples(args.eval_json, args.samples)
    except DataError as e:
        p.error(str(e))
    library, model = PartLibrary.load(), load_pretrained(args.model)
    references = [r["cadquery"] for r in rows]
    per_picture = {}
    for name in args.variants:
        description, alter = VARIANTS[name]
        images = [alter(r["image"]) for r in rows]
        results = search_many(model, images, 1, args.refine, args.workers, library, progress=False)
        scores = score_programs(references, [r.program for r in results], workers=args.workers)
        seconds = np.mean([r.seconds for r in results])
        per_picture[name] = [s["iou"] for s in scores["per_sample"]]
        print(f"{description:36s} VSR {scores['vsr']:.3f}  IoU {scores['iou']:.3f}  {seconds:.1f} s/img", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"eval_json": args.eval_json, "refine": args.refine, "iou": per_picture}, f)
    print(f"\n{args.eval_json}: first {len(rows)} pictures, refine {args.refine:g} s, load {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
