"""Write GenCAD-Code style data as <out>/{train,val,test}.jsonl + <out>/images/ + dataset_card.json.

    python scripts/download_hf_dataset.py                       # hub CADCODER/GenCAD-Code, 2000 train / 500 test
    python scripts/download_hf_dataset.py --source synthetic    # procedural, offline (img2cq.sampler + img2cq.render)
    python scripts/download_hf_dataset.py --source synthetic --cluster tcp://head:8786   # on a Dask cluster

Synthetic runs are resumable: run the same command again after an interruption.
"""
from __future__ import annotations

import argparse
import os
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from img2cq.console import fail  # noqa: E402 - light: no numpy, no torch

HUB_HOST = "huggingface.co"


def hub_reachable(timeout: float = 3.0) -> bool:
    """A TCP connect to the hub, so an offline machine fails in seconds instead of retrying."""
    try:
        socket.create_connection((HUB_HOST, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", choices=("hub", "synthetic"), default="hub")
    parser.add_argument("--out", default="data", help="output folder (default: data)")
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--val", type=int, default=0)
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0, help="synthetic only: base seed (splits use disjoint streams)")
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2)), help="synthetic only")
    parser.add_argument("--size", type=int, default=448, help="synthetic only: image size in pixels")
    parser.add_argument("--line-width", type=float, default=1.0, help="synthetic only: edge width in pixels")
    parser.add_argument("--view-jitter-deg", type=float, default=0.0, help="synthetic only: random view tilt")
    parser.add_argument("--fit", choices=("bbox", "silhouette"), default="bbox",
                        help="synthetic only: scale rule; bbox = the dataset's (projected 3D box fits 400x300 px "
                             "of 448), silhouette = longer side 400 px (this project's earlier renders)")
    parser.add_argument("--cluster", metavar="ADDRESS|auto|local", default=None,
                        help="synthetic only: run the programs on a Dask cluster (scheduler address, auto = "
                             "$DASK_SCHEDULER_ADDRESS, local = a cluster of --workers processes here); same rows")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    sizes = {"train": args.train, "val": args.val, "test": args.test}
    if min(sizes.values()) < 0 or sum(sizes.values()) == 0:
        parser.error("split sizes must be >= 0 and not all 0")
    if args.workers < 1 or args.size < 16 or args.line_width <= 0 or args.view_jitter_deg < 0 or args.seed < 0:
        parser.error("need --workers >= 1, --size >= 16, --line-width > 0, --view-jitter-deg >= 0, --seed >= 0")

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
