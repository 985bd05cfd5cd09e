"""Re-ranking a library shortlist: recall against the oracle, and rank correlation, per judge.

For each evaluation picture, the ``--shortlist`` library parts nearest in retrieval features are
built and rendered (``img2cq.build``) and scored against the picture's own program by 3D IoU (the
project's metric, every program run in the sandbox). Each judge then scores the renders against
the picture: the hand-made agreement (``agreement.agreements``) and the learned one
(``comparator.LearnedAgreement``, where one is shipped). Printed per split: IoU of the
feature-nearest part, of the part each judge keeps, of the best part in the shortlist (the
oracle), and the mean Spearman correlation between the judge's score and 3D IoU among one
picture's candidates; then the same for each judge's ``search.consensus`` (the candidates ranked
by their 3D IoU with the ones the judge scores best, as the search ranks them), and the last
judge's rank correlation by how near the shortlist's best part is to the pictured one. Renders (reduced
to ``agreement.RESOLUTION``), IoUs with the picture's part and the candidates' IoUs with one
another are cached in ``--cache``, so judges are compared on the same candidates.

With ``--kept`` (one ``bench_search.py`` output per split: each picture's kept program), the
candidates are also ranked as a search ranks its alternatives once it has kept a part
(``search.ranked_after``: their 3D IoU with the kept part and their consensus).

    python benchmarks/bench_rerank.py --eval-json benchmarks/real_dev/test.jsonl \\
        data/synthetic-1000/test.jsonl:100 --shortlist 64
    python benchmarks/bench_rerank.py --shortlist 24 --eval-json benchmarks/real_dev/test.jsonl \\
        --kept runs/bench_search/real_dev-test-models_img2cq-cpu-greedy+cand8+short64+refine7+top7+blend.jsonl
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np


def candidates_of(split_spec: str, library, shortlist: int, workers: int, cache: Path) -> dict:
    """Reduced views (packed) and 3D IoUs of each picture's shortlist, computed once and cached."""
    from img2cq.agreement import RESOLUTION, reduce_views, unpack_views, views_from_image
    from img2cq.build import BuildPool, structure_views_and_solid
    from img2cq.iou import pairwise_ious
    from img2cq.data import load_split
    from img2cq.sandbox import Executor
    from img2cq.scoring import execute, score_executed
    from tqdm.auto import tqdm

    path, _, n = split_spec.partition(":")
    key = cache / f"{Path(path).parent.name}-{Path(path).stem}-{n or 'all'}-k{shortlist}-n{len(library)}-r{RESOLUTION}-pairs.npz"
    if key.is_file():
        with np.load(key, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    split = load_split(path)
    split = split.select(range(min(int(n), len(split)))) if n else split
    shortlists = [library.nearest(row["image"], shortlist) for row in split]
    structures = [library.sketches(i) for ids in shortlists for i in ids]
    programs = [library.program(i) for ids in shortlists for i in ids]
    reduced = lambda views: np.packbits(np.stack(reduce_views(views, RESOLUTION)))
    started = time.perf_counter()
    with BuildPool(workers) as pool:
        views, solids = zip(*pool.map(structure_views_and_solid, structures))
    render_s = (time.perf_counter() - started) / len(structures)
    pair_iou = np.stack([pairwise_ious(list(solids[k:k + shortlist]), list(range(shortlist)))
                         for k in tqdm(range(0, len(solids), shortlist), desc="candidates with one another", unit="picture")])
    with Executor(workers=workers) as ex:
        references = execute(list(split["cadquery"]), ex, progress="references")
        executed = execute(programs, ex, progress="candidates")
        pairs = [references[i // shortlist] for i in range(len(programs))]
        ious = [s["iou"] for s in score_executed(pairs, executed, ex, progress="scoring")["per_sample"]]
    empty = reduced(np.zeros((2, RESOLUTION, RESOLUTION), bool))
    out = {"picture_views": np.stack([reduced(views_from_image(r["image"])) for r in split]),
           "views": np.stack([empty if v is None else reduced(unpack_views(v)) for v in views]).reshape(len(split), shortlist, -1),
           "built": np.array([v is not None for v in views]).reshape(len(split), shortlist),
           "iou": np.array([-1.0 if v is None else v for v in ious]).reshape(len(split), shortlist),
           "pair_iou": pair_iou,
           "render_s": np.array(render_s)}
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(key, **out)
    return out


def kept_ious_of(split_spec: str, kept_path: str, library, shortlist: int, workers: int, cache: Path) -> np.ndarray:
    """(pictures, shortlist): each shortlist candidate's 3D IoU with the picture's kept program (a
    ``bench_search.py`` output, by ``id``), as the search compares them; computed once and cached."""
    from img2cq import codec
    from img2cq.build import BuildPool, structure_views_and_solid
    from img2cq.data import load_split
    from img2cq.iou import pairwise_ious
    from tqdm.auto import tqdm

    path, _, n = split_spec.partition(":")
    key = cache / f"{Path(path).parent.name}-{Path(path).stem}-{n or 'all'}-k{shortlist}-n{len(library)}-kept-{Path(kept_path).stem}.npy"
    if key.is_file():
        return np.load(key)
    kept = {row["id"]: row["program"] for row in map(json.loads, Path(kept_path).read_text().splitlines())}
    split = load_split(path)
    split = split.select(range(min(int(n), len(split)))) if n else split
    out = np.zeros((len(split), shortlist))
    with BuildPool(workers) as pool:
        for picture, row in enumerate(tqdm(split, desc="candidates with the kept part", unit="picture")):
            structures = [library.sketches(i) for i in library.nearest(row["image"], shortlist)]
            _, solids = zip(*pool.map(structure_views_and_solid, structures + [codec.parse(kept[row["id"]])]))
            out[picture] = pairwise_ious(list(solids), [shortlist])[:shortlist, 0]
    cache.mkdir(parents=True, exist_ok=True)
    np.save(key, out)
    return out


def judges(comparator_dir: str | None) -> list[tuple[str, object]]:
    from img2cq.agreement import agreements
    from img2cq.comparator import LearnedAgreement

    out = [("hand-made agreement", agreements)]
    try:
        learned = LearnedAgreement.load(comparator_dir)
    except FileNotFoundError:
        return out
    return out + [("learned agreement", learned.scores), ("blend of the two", learned.blended_scores)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--library", default=None, help="part library (default: the shipped one)")
    p.add_argument("--eval-json", nargs="+", default=["benchmarks/real_dev/test.jsonl"],
                   help="splits, each optionally PATH:N for its first N rows")
    p.add_argument("--shortlist", type=int, default=64)
    p.add_argument("--comparator", default=None, help="learned agreement to judge with (default: the shipped one)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--consensus-top", type=int, default=None, help="(default: search.CONSENSUS_TOP)")
    p.add_argument("--kept", nargs="+", default=[], metavar="JSONL",
                   help="per split, in order: a bench_search.py output whose kept programs rank the candidates "
                        "as the search ranks its alternatives")
    p.add_argument("--cache", type=Path, default=Path("runs/bench_rerank"))
    args = p.parse_args()
    if len(args.kept) not in (0, len(args.eval_json)):
        p.error("--kept takes one file per --eval-json split")

    from img2cq.agreement import RESOLUTION, Masks, unpack_views
    from img2cq.comparator import rank_quality
    from img2cq.library import PartLibrary
    from img2cq.search import CONSENSUS_TOP, consensus, ranked_after

    library = PartLibrary.load(args.library)
    args.consensus_top = args.consensus_top or CONSENSUS_TOP
    n = RESOLUTION
    unpack = lambda packed: unpack_views(packed, n)  # noqa: E731
    for k, spec in enumerate(args.eval_json):
        data = candidates_of(spec, library, args.shortlist, args.workers, args.cache)
        iou = np.maximum(data["iou"], 0.0)
        print(f"\n{spec}: {len(iou)} pictures, shortlist {args.shortlist} of {len(library)} parts, "
              f"{data['render_s'] * 1000:.0f} ms per render and measure ({args.workers} workers, load {os.getloadavg()[0]:.1f})")
        print(f"  feature-nearest IoU {iou[:, 0].mean():.3f}   oracle (best of shortlist) IoU {iou.max(1).mean():.3f}")
        for name, judge in judges(args.comparator):
            groups = []
            for picture in range(len(iou)):
                reference = Masks.from_reduced(*unpack(data["picture_views"][picture]))
                views = [unpack(v) if built else None for v, built in zip(data["views"][picture], data["built"][picture])]
                scores = np.nan_to_num(np.array(judge(reference, views), float), neginf=-1.0)
                groups.append((scores, iou[picture]))
            rho, kept = rank_quality(groups)
            print(f"  {name:22s} kept IoU {kept:.3f}, Spearman {rho:.3f}")
            by_consensus = {}
            for top in sorted({args.consensus_top, args.shortlist}):
                by_consensus[top] = [(consensus(scores, lambda columns: data["pair_iou"][picture][:, columns], top), ious)
                                     for picture, (scores, ious) in enumerate(groups)]
                rho, kept = rank_quality(by_consensus[top])
                print(f"  {'  consensus of ' + str(top):22s} kept IoU {kept:.3f}, Spearman {rho:.3f}")
        print_by_difficulty(name, groups, by_consensus[args.consensus_top], iou.max(1))  # the last judge: the search's
        if args.kept:
            kept_ious = kept_ious_of(spec, args.kept[k], library, args.shortlist, args.workers, args.cache)
            after = [(ranked_after(scores, lambda columns: data["pair_iou"][picture][:, columns], kept_ious[picture],
                                   args.consensus_top), ious) for picture, (scores, ious) in enumerate(groups)]
            rho, first = rank_quality(after)
            print(f"  ranked after the kept part of {Path(args.kept[k]).name}: first IoU {first:.3f}, Spearman {rho:.3f}")
            print_by_difficulty(name, groups, after, iou.max(1), "ranked after the kept part")
    return 0



def print_by_difficulty(name: str, groups: list, ranked_by_consensus: list, oracle: np.ndarray,
                        second: str = "its consensus") -> None:
    """Spearman of the last judge and of its consensus (or another ranking, ``second``) among
    pictures whose shortlist holds a part of about the same IoU: where no candidate is near the
    pictured part, the candidates differ little and every judge ranks them poorly."""
    from img2cq.comparator import rank_quality

    print(f"  by the shortlist's best IoU ({name}; {second}):")
    for low, high in ((0.0, 0.7), (0.7, 0.85), (0.85, 0.95), (0.95, 1.01)):
        rows = np.flatnonzero((oracle >= low) & (oracle < high))
        if len(rows) < 2:
            continue
        judged, agreed = (rank_quality([pairs[k] for k in rows])[0] for pairs in (groups, ranked_by_consensus))
        spread = np.mean([groups[k][1].std() for k in rows])
        print(f"    {low:.2f}-{min(high, 1.0):.2f}: {len(rows):3d} pictures, IoU spread {spread:.3f}, "
              f"Spearman {judged:.3f}; {agreed:.3f}")


if __name__ == "__main__":
    sys.exit(main())
