"""Train the learned agreement (``img2cq.comparator``): draw pairs, fit, report, save.

    python scripts/train_comparator.py --queries 3000            # resumable: run it again after a stop

Stage 1 writes training pairs to ``--work`` (sampler queries of ``--seed``, a file per 25 queries,
a progress bar, a log in ``<work>/pairs.log``); stopping loses at most the chunk in progress.
Stage 2 fits the comparator (regressing each pair's IoU) on all but the last ``--validation`` share
of the queries, prints the
Spearman correlation with 3D IoU within one query's shortlist and the IoU of the part each query
keeps, beside the hand-made agreement's on the same queries, and saves the model with a card to
``--out``. Query parts come from a sampler seed of their own: never library parts, never the
benchmark's queries, never evaluation parts.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--queries", type=int, default=3000, help="sampler query parts to draw pairs for")
    p.add_argument("--seed", type=int, default=7000, help="sampler seed of the query parts")
    p.add_argument("--library", default=None, help="part library the shortlists come from (default: the shipped one)")
    p.add_argument("--work", type=Path, default=Path("runs/comparator-pairs"), help="pair files (resumable)")
    p.add_argument("--out", type=Path, default=Path("models/agreement"), help="where the model is saved")
    p.add_argument("--width", type=int, default=16, help="channels of the first convolution")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--queries-per-step", type=int, default=4)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--validation", type=float, default=0.1, help="share of the queries held out")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--workers", type=int, default=2, help="build processes drawing pairs")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.queries < 50 or args.epochs < 1 or not 0 < args.validation < 0.5:
        p.error("need --queries >= 50, --epochs >= 1 and 0 < --validation < 0.5")
    return args


def loss_of(model, pairs, batch, flip: bool):
    """Mean squared error of the predicted IoU over a batch of pair indices."""
    import torch

    reference = torch.from_numpy(pairs.references[pairs.query_of[batch]])
    candidate = torch.from_numpy(pairs.candidates[batch])
    if flip:  # a mirrored pair of pictures has the same IoU
        reference, candidate = reference.flip(-1), candidate.flip(-1)
    return ((torch.sigmoid(model(reference, candidate)) - torch.from_numpy(pairs.iou[batch])) ** 2).mean()


def predict(model, pairs, chunk: int = 512) -> np.ndarray:
    import torch

    out = []
    with torch.no_grad():
        for start in range(0, len(pairs.iou), chunk):
            index = np.arange(start, min(start + chunk, len(pairs.iou)))
            out.append(model(torch.from_numpy(pairs.references[pairs.query_of[index]]),
                             torch.from_numpy(pairs.candidates[index])))
    return torch.cat(out).numpy()


def ranking(pairs, scores, shortlist_only: bool = True) -> tuple[float, float]:
    """``rank_quality`` over each query's shortlist candidates (or all its candidates)."""
    from img2cq.comparator import rank_quality

    groups = []
    for members in pairs.groups():
        if shortlist_only:
            members = members[pairs.source[members] >= 0]
        if len(members) >= 2:
            groups.append((scores[members], pairs.iou[members]))
    return rank_quality(groups)


def split(pairs, validation: float):
    """(train, validation) PairSets: the last share of the queries held out."""
    from img2cq.comparator import PairSet

    cut = int(len(pairs.references) * (1 - validation))
    sets = []
    for keep in (pairs.query_of < cut, pairs.query_of >= cut):
        queries = np.unique(pairs.query_of[keep])
        renumber = np.full(len(pairs.references), -1)
        renumber[queries] = np.arange(len(queries))
        sets.append(PairSet(pairs.references[queries], pairs.candidates[keep], pairs.hand[keep],
                            renumber[pairs.query_of[keep]], pairs.source[keep], pairs.iou[keep]))
    return sets


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from img2cq import comparator
    from img2cq.console import fail
    from img2cq.data import provenance
    from img2cq.library import PartLibrary

    args.work.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(filename=args.work / "pairs.log", level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        library = PartLibrary.load(args.library)
    except FileNotFoundError as e:
        return fail(e)
    comparator.generate_pairs(args.work, args.queries, args.seed, library, args.workers, not args.no_progress)
    records = comparator.read_pairs(args.work, args.seed)[:-(-args.queries // comparator.CHUNK)]
    train, val = split(comparator.PairSet.from_records(records, not args.no_progress), args.validation)
    print(f"{len(train.references)} training queries ({len(train.iou)} pairs), {len(val.references)} held out "
          f"({len(val.iou)} pairs)")

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    model = comparator.build_model(comparator.ComparatorConfig(width=args.width))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    groups = train.groups()
    steps = args.epochs * -(-len(groups) // args.queries_per_step)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=steps)
    rng, started, step = np.random.default_rng(args.seed), time.perf_counter(), 0
    hand = ranking(val, val.hand)
    print(f"hand-made agreement on the held-out queries: Spearman {hand[0]:.3f}, kept IoU {hand[1]:.3f}; "
          f"oracle {np.mean([val.iou[g[val.source[g] >= 0]].max() for g in val.groups()]):.3f}")
    for epoch in range(args.epochs):
        model.train()
        order = rng.permutation(len(groups))
        total = 0.0
        for start in range(0, len(order), args.queries_per_step):
            batch = np.concatenate([groups[g] for g in order[start:start + args.queries_per_step]])
            loss = loss_of(model, train, batch, flip=bool(rng.integers(2)))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total, step = total + loss.item(), step + 1
        model.eval()
        predicted = predict(model, val)
        (rho, kept), (rho_all, _) = ranking(val, predicted), ranking(val, predicted, shortlist_only=False)
        print(f"epoch {epoch + 1}/{args.epochs}: loss {total / -(-len(order) // args.queries_per_step):.4f}, held out "
              f"Spearman {rho:.3f} (with edits {rho_all:.3f}), kept IoU {kept:.3f} "
              f"({time.perf_counter() - started:.0f} s)", flush=True)

    rho, kept = ranking(val, predict(model, val))
    card = {**provenance(), "torch": torch.__version__, "command": " ".join(["python", *sys.argv]), "seed": args.seed,
            "queries": len(train.references), "pairs": len(train.iou), "held_out_queries": len(val.references),
            "library_parts": len(library), "epochs": args.epochs, "width": args.width,
            "held_out": {"spearman": round(rho, 4), "kept_iou": round(kept, 4),
                         "hand_made_spearman": round(hand[0], 4), "hand_made_kept_iou": round(hand[1], 4)},
            "train_seconds": round(time.perf_counter() - started)}
    comparator.LearnedAgreement(model).save(args.out, card)
    print(f"saved {args.out}: {json.dumps(card['held_out'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
