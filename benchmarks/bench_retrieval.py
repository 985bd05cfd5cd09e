"""Which features retrieve better training programs: framed pixel thumbnails or encoder embeddings.

For the first N test images, the k nearest training images are looked up with (a) the search's
index (``img2cq.search.thumbnail_features``: framed 32 x 32 grey thumbnails) and (b) the model's
ViT encoder (mean of the last hidden states), and their programs are scored against the reference
by true 3D IoU. Printed: mean IoU of the nearest, and of the best of the k nearest.

    python benchmarks/bench_retrieval.py --model models/img2cq-cpu --eval-json data/test.jsonl \\
        --train-json data/train.jsonl --samples 40 --k 4
"""
from __future__ import annotations

import argparse
import os
import sys


def encoder_features(model, images, batch_size: int = 32):
    """Mean-pooled last hidden state of the model's image encoder, L2-normalised."""
    import numpy as np
    import torch

    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            hidden = model.model.encoder(pixel_values=model.pixel_values(images[start:start + batch_size]))
            out.append(hidden.last_hidden_state.mean(dim=1).cpu().numpy())
    features = np.concatenate(out)
    return features / np.linalg.norm(features, axis=1, keepdims=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="models/img2cq-cpu")
    p.add_argument("--eval-json", default="data/test.jsonl")
    p.add_argument("--train-json", default="data/train.jsonl")
    p.add_argument("--samples", type=int, default=40)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()

    import numpy as np
    import torch
    from tqdm.auto import tqdm

    from img2cq.data import load_split
    from img2cq.evaluation import load_samples
    from img2cq.executor import Executor
    from img2cq.modeling import load_pretrained
    from img2cq.search import load_or_build_index, thumbnail_features
    from metrics.best_iou import iou_from_results

    torch.set_num_threads(1)
    test = load_samples(args.eval_json, args.samples)
    index = load_or_build_index(args.train_json)
    model = load_pretrained(args.model)
    train_images = [row["image"] for row in tqdm(load_split(args.train_json), desc="reading training images")]
    train_embedding = encoder_features(model, train_images)
    test_embedding = encoder_features(model, [r["image"] for r in test])
    neighbours = {
        "pixels (framed 32x32)": [np.argsort(((index.features - thumbnail_features(r["image"])) ** 2).sum(1))[:args.k]
                                  for r in test],
        "encoder embedding": [np.argsort(-(train_embedding @ e))[:args.k] for e in test_embedding],
    }
    with Executor(workers=args.workers) as ex:
        references = ex.map([r["cadquery"] for r in test], mesh=True, brep=True, progress="references")
        wanted = sorted({int(i) for ids in neighbours.values() for row in ids for i in row})
        results = dict(zip(wanted, ex.map([index.programs[i] for i in wanted], mesh=True, brep=True,
                                          progress="retrieved programs")))
        print(f"{len(test)} test images, {len(index.ids)} training images, k={args.k}, "
              f"load {os.getloadavg()[0]:.1f}")
        print(f"{'features':24s} {'nearest IoU':>11s} {'best of k IoU':>13s}")
        for name, ids in neighbours.items():
            ious = [[iou_from_results(ref, results[int(i)], executor=ex) if results[int(i)].ok else 0.0 for i in row]
                    for ref, row in zip(references, ids) if ref.ok]
            print(f"{name:24s} {np.mean([r[0] for r in ious]):11.3f} {np.mean([max(r) for r in ious]):13.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
