"""Build the part library: draw sampler parts, build and render them, pack the shipped artefact.

    python scripts/build_library.py --parts 300000                 # resumable: run it again after a stop
    python scripts/build_library.py --parts 300000 --cluster tcp://head:8786
    python scripts/build_library.py --parts 300000 --refresh      # after a sampler change

Stage 1 draws parts into the work folder (``--work``, a file per 1,000 draws, a progress bar, a log
in ``<work>/build.log``); stopping loses at most the chunk in progress. Stage 2 drops duplicate
parts and parts whose program is in a held-out split (always the real-part benchmark, plus any
``--exclude-programs-in``), and writes the library to ``--out`` (files of at most 14 MiB and a card
recording how it was made). ``--refresh`` first brings the work folder's finished draws up to the
current sampler and part checks: only draws whose program changed, and draws rejected before, are
built again (the renderer must be unchanged; a renderer change needs a new work folder).
"""
from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from img2cq.library import DEFAULT_SEED, FEATURE_DIMS
from img2cq.training_args import ArgumentError, parse_cli

ROOT = Path(__file__).resolve().parent.parent
REAL_PART_BENCHMARK = ROOT / "benchmarks" / "real_dev" / "programs.jsonl"


@dataclass
class BuildLibraryArguments:
    parts: int = field(default=300_000, metadata={"help": "distinct parts in the library"})
    seed: int = field(default=DEFAULT_SEED, metadata={"help": "sampler seed of the draws"})
    work: Path = field(default=Path("runs/library-build"), metadata={"help": "work folder (resumable)"})
    out: Path = field(default=Path("models/part-library"), metadata={"help": "where the library is written"})
    dims: int = field(default=FEATURE_DIMS, metadata={"help": "retrieval feature dimensions (principal components)"})
    workers: int = field(default=2, metadata={"help": "build processes (or local Dask workers)"})
    cluster: str | None = field(default=None, metadata={
        "metavar": "ADDRESS|auto|local",
        "help": "draw on a Dask cluster (scheduler address, auto = $DASK_SCHEDULER_ADDRESS, local)"})
    exclude_programs_in: list[str] = field(default_factory=list, metadata={
        "nargs": "*", "metavar": "SPLIT",
        "help": "held-out splits whose programs never enter the library (the real-part benchmark always)"})
    refresh: bool = field(default=False, metadata={
        "help": "first rebuild the work folder's draws whose program changed (after a sampler change)"})
    no_progress: bool = False

    def __post_init__(self):
        if self.parts < 1 or self.workers < 1 or not 1 <= self.dims <= 1024:
            raise ArgumentError("need --parts >= 1, --workers >= 1 and 1 <= --dims <= 1024")


def parse_args(argv=None) -> BuildLibraryArguments:
    return parse_cli(BuildLibraryArguments, __doc__, argv, config=False)


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
        if args.refresh:
            counts = library.refresh_chunks(args.work, args.seed, args.workers, not args.no_progress)
            print(f"{counts['kept']} draws kept, {counts['rebuilt']} built again ({counts['rebuilt_accepted']} accepted)")
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
