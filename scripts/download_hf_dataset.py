"""Write GenCAD-Code style data as <out>/{train,val,test}.jsonl + <out>/images/ + dataset_card.json.

    python scripts/download_hf_dataset.py                       # hub CADCODER/GenCAD-Code, 2000 train / 500 test
    python scripts/download_hf_dataset.py --source synthetic    # procedural, offline (img2cq.sampler + img2cq.render)
    python scripts/download_hf_dataset.py --source synthetic --cluster tcp://head:8786   # on a Dask cluster

Synthetic runs are resumable: run the same command again after an interruption.
"""
from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass, field
from typing import Literal

from img2cq.console import fail  # light: no numpy, no torch
from img2cq.training_args import ArgumentError, parse_cli

HUB_HOST = "huggingface.co"


def hub_reachable(timeout: float = 3.0) -> bool:
    """A TCP connect to the hub, so an offline machine fails in seconds instead of retrying."""
    try:
        socket.create_connection((HUB_HOST, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


@dataclass
class DatasetArguments:
    source: Literal["hub", "synthetic"] = "hub"
    out: str = field(default="data", metadata={"help": "output folder (default: data)"})
    train: int = 2000
    val: int = 0
    test: int = 500
    seed: int = field(default=0, metadata={"help": "synthetic only: base seed (splits use disjoint streams)"})
    workers: int = field(default=max(1, (os.cpu_count() or 2)), metadata={"help": "synthetic only"})
    size: int = field(default=448, metadata={"help": "synthetic only: image size in pixels"})
    line_width: float = field(default=1.0, metadata={"help": "synthetic only: edge width in pixels"})
    view_jitter_deg: float = field(default=0.0, metadata={"help": "synthetic only: random view tilt"})
    fit: Literal["bbox", "silhouette"] = field(default="bbox", metadata={
        "help": "synthetic only: scale rule; bbox = the dataset's (projected 3D box fits 400x300 px of 448), "
                "silhouette = longer side 400 px (this project's earlier renders)"})
    cluster: str | None = field(default=None, metadata={
        "metavar": "ADDRESS|auto|local",
        "help": "synthetic only: run the programs on a Dask cluster (scheduler address, auto = "
                "$DASK_SCHEDULER_ADDRESS, local = a cluster of --workers processes here); same rows"})
    no_progress: bool = False

    def __post_init__(self):
        sizes = (self.train, self.val, self.test)
        if min(sizes) < 0 or sum(sizes) == 0:
            raise ArgumentError("split sizes must be >= 0 and not all 0")
        if self.workers < 1 or self.size < 16 or self.line_width <= 0 or self.view_jitter_deg < 0 or self.seed < 0:
            raise ArgumentError("need --workers >= 1, --size >= 16, --line-width > 0, --view-jitter-deg >= 0, "
                                "--seed >= 0")


def main(argv=None) -> int:
    args = parse_cli(DatasetArguments, __doc__, argv, config=False)
    sizes = {"train": args.train, "val": args.val, "test": args.test}

    from img2cq import data

    if args.source == "hub":
        if not hub_reachable():
            return fail(f"cannot reach {HUB_HOST}; for offline data run: "
                        f"python scripts/download_hf_dataset.py --source synthetic --out {args.out}")
        card = data.download_hub(args.out, sizes, progress=not args.no_progress)
    else:
        render = {"size": args.size, "line_width": args.line_width, "view_jitter_deg": args.view_jitter_deg,
                  "seed": args.seed, "fit": args.fit}
        executor = None
        if args.cluster:
            from img2cq.sandbox.cluster import ClusterUnavailable, connect

            try:
                executor = connect(args.cluster, workers=args.workers, preload=("img2cq.render",))
            except ClusterUnavailable as e:
                return fail(e)
        card = data.generate_synthetic(args.out, sizes, seed=args.seed, workers=args.workers, render_kwargs=render,
                                       progress=not args.no_progress, executor=executor)
    for split, stats in card["splits"].items():
        extra = f", acceptance {stats['acceptance_rate']:.1%}" if "acceptance_rate" in stats else ""
        print(f"{split}: {stats.get('accepted', stats.get('rows'))} rows{extra}")
    print(f"wrote {os.path.join(args.out, 'dataset_card.json')}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        sys.exit(130)
    except (OSError, ValueError) as e:
        sys.exit(fail(e, code=1))
