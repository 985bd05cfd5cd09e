"""How well the render agreement ranks candidates: Spearman correlation with true 3D IoU.

For each test image the search's candidates (greedy, beam, sampled, retrieved; ``img2cq.search.propose``)
are generated once and cached (resumable), ``--extra-neighbours`` more retrieved programs join
them for the correlation only, every candidate runs once in the sandbox (mesh for the
IoU, render for the agreement), and the agreement is recomputed for a grid of resolutions, edge
weights and edge scales. Printed per setting: Spearman rho over all (candidate, reference) pairs
that build, the mean per-image rho, and the mean IoU of the search candidate each setting would keep.

    python benchmarks/bench_agreement.py --model models/img2cq-cpu --eval-json data/test.jsonl \\
        --train-json data/train.jsonl --samples 30 --out runs/search/agreement
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path


class TimedModel:
    """A model whose greedy generate() calls are timed (for the greedy row's seconds per image)."""

    def __init__(self, model):
        self.inner, self.greedy_s = model, 0.0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def generate(self, images, num_beams=1, **kwargs):
        started = time.perf_counter()
        out = self.inner.generate(images, num_beams=num_beams, **kwargs)
        if num_beams == 1:
            self.greedy_s += time.perf_counter() - started
        return out


def cached_proposals(args) -> list[dict]:
    """Candidates per test image, generated once into ``<out>/proposals.jsonl`` (resumable)."""
    import torch
    from tqdm.auto import tqdm

    from img2cq.evaluation import load_samples
    from img2cq.modeling import load_pretrained
    from img2cq.search import load_or_build_index, propose

    path = Path(args.out) / "proposals.jsonl"
    done = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    rows = load_samples(args.eval_json, args.samples)
    if len(done) >= len(rows):
        return done[:len(rows)]
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    model = TimedModel(load_pretrained(args.model))
    index = load_or_build_index(args.train_json)
    todo = rows[len(done):]
    with open(path, "a") as f, tqdm(total=len(todo), desc="proposing", unit="img") as bar:
        for start in range(0, len(todo), args.batch_size):
            batch = todo[start:start + args.batch_size]
            model.greedy_s, started = 0.0, time.perf_counter()
            proposals = propose(model, [r["image"] for r in batch], args.candidates, index, args.max_new_tokens)
            seconds = (time.perf_counter() - started) / len(batch)
            for row, candidates in zip(batch, proposals):
                record = {"id": row["id"], "reference": row["cadquery"], "candidates": candidates,
                          "propose_s": seconds, "greedy_s": model.greedy_s / len(batch),
                          "batch": len(batch), "load": os.getloadavg()[0]}
                f.write(json.dumps(record) + "\n")
                done.append(record)
            f.flush()
            bar.update(len(batch))
    return done


def scored_pairs(args, proposals: list[dict], images) -> list[dict]:
    """One entry per (image, candidate): true IoU (0 when it does not build) and its framed views."""
    from tqdm.auto import tqdm

    from img2cq.executor import Executor
    from img2cq.search import PRELOAD, load_or_build_index, unpack_views, views_from_image
    from metrics.best_iou import iou_from_results

    index = load_or_build_index(args.train_json)
    pairs = []
    with Executor(workers=args.workers, preload=PRELOAD) as ex:
        for record, image in tqdm(list(zip(proposals, images)), desc="scoring candidates", unit="img"):
            retrieved = len([s for s, _ in record["candidates"] if s.startswith("nearest:")])
            extra = [(f"extra-nearest:{i}", program)
                     for i, program in index.nearest(image, retrieved + args.extra_neighbours)[retrieved:]]
            codes = [record["reference"]] + [p for _, p in record["candidates"] + extra]
            results = ex.map(codes, mesh=True, brep=True, postprocess="img2cq.search:render_views")
            reference, candidates = results[0], results[1:]
            if not reference.ok:
                continue
            for (source, _), r in zip(record["candidates"] + extra, candidates):
                pairs.append({"id": record["id"], "source": source, "valid": r.ok,
                              "iou": iou_from_results(reference, r, executor=ex) if r.ok else 0.0,
                              "views": unpack_views(r.extras["value"]["views"]) if r.ok else None,
                              "reference_views": views_from_image(image)})
    return pairs


def sweep(pairs: list[dict]) -> list[dict]:
    import numpy as np
    from scipy.stats import spearmanr

    from img2cq.search import Reference, agreement

    table = []
    by_image: dict[str, list[dict]] = {}
    for p in pairs:
        by_image.setdefault(p["id"], []).append(p)
    for resolution, weight, scale in itertools.product((56, 112, 224), (0.0, 0.25, 0.5, 0.75, 1.0),
                                                       (0.01, 0.02, 0.05)):
        if weight == 0.0 and scale != 0.02:
            continue  # the edge scale plays no part without the edge term
        scores, ious, per_image_rho, kept = [], [], [], []
        for group in by_image.values():
            reference = Reference.from_views(group[0]["reference_views"], resolution)
            s = [agreement(reference, p["views"], weight, scale) for p in group]
            searched = [i for i, p in enumerate(group) if not p["source"].startswith("extra")]
            kept.append(group[max(searched, key=lambda i: s[i])]["iou"])
            valid = [(a, p["iou"]) for a, p in zip(s, group) if p["valid"]]
            scores += [a for a, _ in valid]
            ious += [i for _, i in valid]
            if len(valid) >= 3 and len({i for _, i in valid}) > 1:
                per_image_rho.append(spearmanr(*zip(*valid)).statistic)
        table.append({"resolution": resolution, "edge_weight": weight, "edge_scale": scale,
                      "rho": spearmanr(scores, ious).statistic, "pairs": len(scores),
                      "rho_per_image": float(np.nanmean(per_image_rho)), "kept_iou": float(np.mean(kept))})
    return table


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="models/img2cq-cpu")
    p.add_argument("--eval-json", default="data/test.jsonl")
    p.add_argument("--train-json", default="data/train.jsonl")
    p.add_argument("--samples", type=int, default=30)
    p.add_argument("--candidates", type=int, default=8)
    p.add_argument("--extra-neighbours", type=int, default=4,
                   help="more retrieved programs per image, scored for the correlation only (not kept)")
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8, help="images per proposal batch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/search/agreement")
    args = p.parse_args()

    import numpy as np

    from img2cq.evaluation import load_samples

    Path(args.out).mkdir(parents=True, exist_ok=True)
    proposals = cached_proposals(args)
    images = [r["image"] for r in load_samples(args.eval_json, len(proposals))]
    pairs = scored_pairs(args, proposals, images)
    table = sweep(pairs)
    greedy = [p["iou"] for p in pairs if p["source"] == "greedy"]
    oracle = [max(q["iou"] for q in pairs if q["id"] == i and not q["source"].startswith("extra"))
              for i in dict.fromkeys(p["id"] for p in pairs)]
    print(f"{len(proposals)} images, {len(pairs)} (candidate, reference) pairs, "
          f"{sum(p['valid'] for p in pairs)} build; greedy IoU {np.mean(greedy):.3f}, "
          f"best candidate by true IoU (oracle) {np.mean(oracle):.3f}; load {os.getloadavg()[0]:.1f}")
    print(f"{'res':>4s} {'w_edge':>6s} {'scale':>6s} {'rho':>6s} {'rho/img':>8s} {'kept IoU':>8s}")
    for t in sorted(table, key=lambda t: -t["kept_iou"]):
        print(f"{t['resolution']:4d} {t['edge_weight']:6.2f} {t['edge_scale']:6.2f} {t['rho']:6.3f} "
              f"{t['rho_per_image']:8.3f} {t['kept_iou']:8.3f}")
    sources = sorted({p["source"].split(":")[0] for p in pairs})
    for s in sources:
        ious = [p["iou"] for p in pairs if p["source"].split(":")[0] == s]
        print(f"candidates from {s}: {len(ious)}, mean IoU {np.mean(ious):.3f}")
    summary = {"command": " ".join(["python", *sys.argv]), "images": len(proposals), "pairs": len(pairs),
               "table": table, "greedy_iou": float(np.mean(greedy)), "oracle_iou": float(np.mean(oracle))}
    (Path(args.out) / "agreement.json").write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
