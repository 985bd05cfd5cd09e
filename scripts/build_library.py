"""Build the part library: draw sampler parts, build and render them, pack the shipped artefact.

    python scripts/build_library.py --parts 100000                 # resumable: run it again after a stop
    python scripts/build_library.py --parts 100000 --cluster tcp://head:8786

Stage 1 draws parts into the work folder (``--work``, a file per 1,000 draws, a progress bar, a log
in ``<work>/build.log``); stopping loses at most the chunk in progress. Stage 2 drops duplicate
parts and parts whose program is in a held-out split (always the real-part benchmark, plus any
``--exclude-programs-in``), and writes the library to ``--out`` (files of at most 14 MiB and a card
recording how it was made).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ROOT = Path(__file__).resolve().parent.parent
REAL_PART_BENCHMARK = ROOT / "benchmarks" / "real_dev" / "programs.jsonl"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", type=int, default=100_000, help="distinct parts in the library")
    p.add_argument("--seed", type=int, default=2026, help="sampler seed of the draws")
    p.add_argument("--work", type=Path, default=Path("runs/library-build"), help="work folder (resumable)")
    p.add_argument("--out", type=Path, default=Path("models/part-library"), help="where the library is written")
    p.add_argument("--dims", type=int, default=128, help="retrieval feature dimensions (principal components)")
    p.add_argument("--workers", type=int, default=2, help="build processes (or local Dask workers)")
    p.add_argument("--cluster", metavar="ADDRESS|auto|local", default=None,
                   help="draw on a Dask cluster (scheduler address, auto = $DASK_SCHEDULER_ADDRESS, local)")
    p.add_argument("--exclude-programs-in", nargs="*", default=[], metavar="SPLIT",
                   help="held-out splits whose programs never enter the library (the real-part benchmark always)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.parts < 1 or args.workers < 1 or not 1 <= args.dims <= 1024:
        p.error("need --parts >= 1, --workers >= 1 and 1 <= --dims <= 1024")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from img2cq import library
    from img2cq.console import fail
    from img2cq.data import provenance, read_programs

    args.work.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(filename=args.work / "build.log", level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        held_out = {program.code for split in [REAL_PART_BENCHMARK, *args.exclude_programs_in]
                    for program in read_programs(split)}
        started = time.perf_counter()
        library.build_chunks(args.work, args.parts, args.seed, args.workers, not args.no_progress, cluster=args.cluster)
        built = library.pack_library(args.work, args.parts, args.seed, args.dims, held_out,
                                     {**provenance(), "held_out_splits": [str(p) for p in
                                                                          [REAL_PART_BENCHMARK.relative_to(ROOT),
                                                                           *args.exclude_programs_in]]})
    except (OSError, ValueError) as e:
        return fail(e)
    files = built.save(args.out)
    size = sum(f.stat().st_size for f in files)
    print(f"{len(built)} parts written to {args.out} ({len(files)} files, {size / 2**20:.1f} MiB) "
          f"in {time.perf_counter() - started:.0f} s")
    logging.info("packed %s", json.dumps(built.card))
    return 0


if __name__ == "__main__":
    sys.exit(main())
