"""Train the learned agreement (``img2cq.comparator``): draw pairs, fit, report, save.

    python scripts/train_comparator.py --queries 3000            # resumable: run it again after a stop
    python scripts/train_comparator.py --queries 2000 --seed 7300 --work runs/pairs-new --earlier runs/comparator-pairs:7000
    python scripts/train_comparator.py --join runs/comparator-a runs/comparator-b --out runs/comparator-ab

Stage 1 writes training pairs to ``--work`` (sampler queries of ``--seed``, a file per 25 queries,
a progress bar, a log in ``<work>/pairs.log``); stopping loses at most the chunk in progress.
Stage 2 fits the comparator's ``--members`` networks (each regressing each pair's IoU from a random
start of its own) on all but the last ``--validation`` share of the queries, prints the Spearman
correlation with 3D IoU within one query's shortlist and the IoU of the part each query keeps,
beside the hand-made agreement's on the same queries, and saves the comparator with a card to
``--out`` after each member; a member already saved there is kept, so a stopped run goes on. Query parts come from a sampler seed of their own: never library parts, never the
benchmark's queries, never evaluation parts. ``--join`` saves the members of saved comparators of the
same architecture as one comparator (their mean prediction), each source's card inside its card;
nothing is drawn or trained.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from img2cq.training_args import ArgumentError, parse_cli


@dataclass
class ComparatorArguments:
    queries: int = field(default=3000, metadata={"help": "sampler query parts to draw pairs for"})
    seed: int = field(default=7000, metadata={"help": "sampler seed of the query parts"})
    library: str | None = field(default=None, metadata={
        "help": "part library the shortlists come from (default: the shipped one)"})
    candidates: str = field(default="shortlists", metadata={
        "help": "each query's candidates: 'shortlists' (parts of its library shortlist and edits) or "
                "'variants' (a near miss, what a short search keeps, and its single-number variants)"})
    work: Path = field(default=Path("runs/comparator-pairs"), metadata={"help": "pair files (resumable)"})
    earlier: list[str] = field(default_factory=list, metadata={
        "help": "pair folders of earlier draws to train on as well, as FOLDER:SEED (e.g. drawn against "
                "another library); they come first, so the held-out share is taken from this draw's end"})
    out: Path = field(default=Path("models/agreement"), metadata={"help": "where the model is saved"})
    init: Path | None = field(default=None, metadata={
        "help": "a saved comparator whose first member each network starts from (fine-tuning; its "
                "width, not --width), instead of a random start"})
    width: int = field(default=16, metadata={"help": "channels of the first convolution"})
    members: int = field(default=1, metadata={
        "help": "networks trained alike from different random starts, their predictions averaged"})
    epochs: int = 12
    queries_per_step: int = 4
    lr: float = 3e-3
    validation: float = field(default=0.1, metadata={"help": "share of the queries held out"})
    threads: int = field(default=2, metadata={"help": "torch intra-op threads"})
    workers: int = field(default=2, metadata={"help": "build processes drawing pairs"})
    join: list[Path] = field(default_factory=list, metadata={
        "help": "saved comparators to join into one at --out (their members' mean prediction), instead of training"})
    no_progress: bool = False

    def __post_init__(self):
        if self.queries < 50 or self.epochs < 1 or self.members < 1 or not 0 < self.validation < 0.5:
            raise ArgumentError("need --queries >= 50, --epochs >= 1, --members >= 1 and 0 < --validation < 0.5")
        if self.candidates not in ("shortlists", "variants"):
            raise ArgumentError(f"--candidates is 'shortlists' or 'variants', got {self.candidates!r}")
        if not all(":" in e and e.rsplit(":", 1)[1].isdigit() for e in self.earlier):
            raise ArgumentError(f"--earlier takes FOLDER:SEED, got {' '.join(self.earlier)}")
        if len(self.join) == 1:
            raise ArgumentError("--join takes two or more saved comparators")


def parse_args(argv=None) -> ComparatorArguments:
    return parse_cli(ComparatorArguments, __doc__, argv, config=False)


def loss_of(model, pairs, batch, flip: bool):
    """Mean squared error of the predicted IoU over a batch of pair indices."""
    import torch

    reference = torch.from_numpy(pairs.references[pairs.query_of[batch]])
    candidate = torch.from_numpy(pairs.candidates[batch])
    if flip:  # a mirrored pair of pictures has the same IoU
        reference, candidate = reference.flip(-1), candidate.flip(-1)
    return ((torch.sigmoid(model(reference, candidate)) - torch.from_numpy(pairs.iou[batch])) ** 2).mean()


def predict(judge, pairs, chunk: int = 512) -> np.ndarray:
    """A ``comparator.LearnedAgreement``'s predicted IoU of every pair."""
    return np.concatenate([judge.predicted_iou(pairs.references[pairs.query_of[index]], pairs.candidates[index])
                           for index in np.array_split(np.arange(len(pairs.iou)), -(-len(pairs.iou) // chunk))])


def ranked(pairs, members: np.ndarray, shortlist_only: bool = True) -> np.ndarray:
    """The pairs of one query that a judge ranks: a shortlist query's shortlist parts (its edits
    too unless ``shortlist_only``), a variant query's near miss and all its variants."""
    shortlist = members[pairs.source[members] >= 0]
    return shortlist if shortlist_only and len(shortlist) else members


def ranking(pairs, scores, shortlist_only: bool = True) -> tuple[float, float]:
    """``rank_quality`` over each query's ``ranked`` candidates."""
    from img2cq.comparator import rank_quality

    groups = [(scores[m], pairs.iou[m]) for m in (ranked(pairs, g, shortlist_only) for g in pairs.groups()) if len(m) >= 2]
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


def train_member(args: ComparatorArguments, train, val, seed: int, label: str, initial=None):
    """One network fitted to the pairs' IoU from the random start of ``seed`` (or from the first
    member of the comparator ``initial``), reporting on the held-out queries after each epoch."""
    import torch

    from img2cq import comparator

    torch.manual_seed(seed)
    model = comparator.build_model(initial.members[0].config if initial else comparator.ComparatorConfig(width=args.width))
    if initial is not None:
        model.load_state_dict(initial.members[0].state_dict())
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    groups = train.groups()
    steps = args.epochs * -(-len(groups) // args.queries_per_step)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=steps)
    rng, started = np.random.default_rng(seed), time.perf_counter()
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
            total += loss.item()
        model.eval()
        predicted = predict(comparator.LearnedAgreement([model]), val)
        (rho, kept), (rho_all, _) = ranking(val, predicted), ranking(val, predicted, shortlist_only=False)
        with_edits = f" (with edits {rho_all:.3f})" if (val.source >= 0).any() else ""  # variant pairs have none
        print(f"{label} epoch {epoch + 1}/{args.epochs}: loss {total / -(-len(order) // args.queries_per_step):.4f}, "
              f"held out Spearman {rho:.3f}{with_edits}, kept IoU {kept:.3f} "
              f"({time.perf_counter() - started:.0f} s)", flush=True)
    return model


def earlier_members(out: Path, recipe: dict) -> list:
    """Members a stopped run of the same recipe (seed, data, epochs, width) saved in ``out``; none
    where ``out`` holds another comparator, which the new one then replaces."""
    from img2cq import comparator

    try:
        saved = comparator.LearnedAgreement.load(out)
    except FileNotFoundError:
        return []
    return saved.members if all(saved.card.get(key) == value for key, value in recipe.items()) else []


def made_by() -> dict:
    """The card's record of how a comparator was made: this command and the software versions."""
    import torch

    from img2cq.data import provenance

    return {**provenance(), "torch": torch.__version__, "command": " ".join(["python", *sys.argv])}


def join(sources: list[Path], out: Path) -> int:
    """Save the members of the comparators in ``sources`` as one comparator at ``out``."""
    from img2cq import comparator
    from img2cq.console import fail

    try:
        loaded = [comparator.LearnedAgreement.load(source) for source in sources]
    except FileNotFoundError as e:
        return fail(e)
    configs = [c.members[0].config for c in loaded]
    if any(config != configs[0] for config in configs):
        return fail(f"cannot join comparators of different architectures: {' / '.join(map(str, configs))}")
    members = [member for c in loaded for member in c.members]
    card = {**made_by(), "members": len(members),
            "joined": [{"from": str(source), **c.card} for source, c in zip(sources, loaded)]}
    comparator.LearnedAgreement(members).save(out, card)
    print(f"saved {out}: {len(members)} members from {len(sources)} comparators")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.join:
        return join(args.join, args.out)
    import torch

    from img2cq import comparator
    from img2cq.console import fail
    from img2cq.library import PartLibrary

    earlier_records = []
    for folder, seed in (e.rsplit(":", 1) for e in args.earlier):
        found = comparator.read_pairs(folder, int(seed))
        if not found:
            return fail(f"no pair files of seed {seed} in {folder}")
        earlier_records += found
    args.work.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(filename=args.work / "pairs.log", level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        library = PartLibrary.load(args.library)
        initial = None if args.init is None else comparator.LearnedAgreement.load(args.init)
    except FileNotFoundError as e:
        return fail(e)
    comparator.generate_pairs(args.work, args.queries, args.seed, library, args.workers, not args.no_progress,
                              args.candidates)
    records = earlier_records + comparator.read_pairs(args.work, args.seed)[:-(-args.queries // comparator.CHUNK)]
    train, val = split(comparator.PairSet.from_records(records, not args.no_progress), args.validation)
    print(f"{len(train.references)} training queries ({len(train.iou)} pairs), {len(val.references)} held out "
          f"({len(val.iou)} pairs)")

    hand = ranking(val, val.hand)
    near_misses = val.iou[val.source == -3]
    print(f"hand-made agreement on the held-out queries: Spearman {hand[0]:.3f}, kept IoU {hand[1]:.3f}; "
          f"oracle {np.mean([val.iou[ranked(val, g)].max() for g in val.groups()]):.3f}"
          + (f"; the near misses {near_misses.mean():.3f}" if len(near_misses) else ""))
    torch.set_num_threads(args.threads)
    recipe = {"seed": args.seed, "queries": len(train.references), "pairs": len(train.iou),
              "earlier_pairs": args.earlier, "epochs": args.epochs,
              "width": initial.members[0].config.width if initial else args.width,
              "candidates": args.candidates, "init": None if args.init is None else str(args.init)}
    finished = earlier_members(args.out, recipe)
    started, members, member_cards = time.perf_counter(), [], []
    for k in range(args.members):
        if k < len(finished):
            member = finished[k]
            print(f"member {k + 1}/{args.members}: kept from {args.out}")
        else:
            member = train_member(args, train, val, seed=args.seed + k, label=f"member {k + 1}/{args.members}",
                                  initial=initial)
        members.append(member)
        alone = ranking(val, predict(comparator.LearnedAgreement([member]), val))
        member_cards.append({"spearman": round(alone[0], 4), "kept_iou": round(alone[1], 4)})
        ensemble = comparator.LearnedAgreement(members)
        rho, kept = ranking(val, predict(ensemble, val))
        card = {**made_by(), **recipe,
                "held_out_queries": len(val.references), "library_parts": len(library),
                "members": len(members), "member_seeds": [args.seed + j for j in range(len(members))],
                "held_out": {"spearman": round(rho, 4), "kept_iou": round(kept, 4),
                             "members": member_cards,
                             "hand_made_spearman": round(hand[0], 4), "hand_made_kept_iou": round(hand[1], 4)},
                "train_seconds": round(time.perf_counter() - started)}
        ensemble.save(args.out, card)
        print(f"saved {args.out} ({len(members)} member(s)): {json.dumps(card['held_out'])}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
