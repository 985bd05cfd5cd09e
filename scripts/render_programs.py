"""Render a jsonl of CadQuery programs (field `cadquery`) into a split in the dataset layout.

    python scripts/render_programs.py PROGRAMS.jsonl OUT_DIR [--split test] [--workers 2] [--id-prefix P]

Writes OUT_DIR/<split>.jsonl (rows `id`, `image`, `cadquery`, `token_count`, `source`, and the input
row's other fields) and OUT_DIR/images/*.png, so programs without images (e.g. a sample of real
GenCAD-Code programs) can be used as an evaluation or training split. A row's id is
`<id-prefix>-<its 0-based row number in PROGRAMS.jsonl>` (prefix default: the file's stem). Every
program runs only in the sandboxed executor, which also renders it; programs that fail are skipped,
counted and listed (row number, the row's other fields, the reason) in OUT_DIR/<split>.card.json.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from img2cq.training_args import ArgumentError, parse_cli


@dataclass
class RenderArguments:
    programs: Path = field(metadata={"positional": True, "help": "jsonl with a `cadquery` field per row"})
    out: Path = field(metadata={"positional": True, "help": "output folder"})
    split: str = field(default="test", metadata={"help": "split name: writes OUT/<split>.jsonl (default: test)"})
    workers: int = 2
    size: int = field(default=448, metadata={"help": "image size in pixels"})
    id_prefix: str | None = field(default=None, metadata={
        "help": "ids are PREFIX-<row number> (default: the programs file's stem)"})

    def __post_init__(self):
        if self.workers < 1 or self.size < 16:
            raise ArgumentError("need --workers >= 1 and --size >= 16")


def main(argv=None) -> int:
    args = parse_cli(RenderArguments, __doc__, argv, config=False)
    from img2cq.console import fail
    from img2cq.data import DataError, read_programs

    try:
        rows = [p.row for p in read_programs(args.programs)]
    except DataError as e:
        return fail(e)

    from collections import Counter

    from img2cq.data import count_tokens, provenance
    from img2cq.sandbox import Executor

    (args.out / "images").mkdir(parents=True, exist_ok=True)
    failed: Counter = Counter()
    written = 0
    stem = args.id_prefix or args.programs.stem
    failures = []
    render_kwargs = {"size": args.size, "line_width": 1.0, "view_jitter_deg": 0.0, "fit": "bbox"}  # as the dataset renders its test pictures
    with Executor(workers=args.workers, preload=("img2cq.render",)) as ex:
        results = ex.map([r["cadquery"] for r in rows], progress="rendering", mesh=False,
                         postprocess="img2cq.render:render_png", postprocess_kwargs=render_kwargs)
    with (args.out / f"{args.split}.jsonl").open("w") as f:
        for i, (row, result) in enumerate(zip(rows, results)):
            if not result.ok or not isinstance(result.extras.get("value"), bytes):
                failed[result.error_kind or "no_image"] += 1
                failures.append({"row": i, **{k: v for k, v in row.items() if k not in ("cadquery", "image")},
                                 "reason": (result.reason or "no_image: the render returned no picture")[:300]})
                continue
            sample_id = f"{stem}-{i:05d}"
            image = f"images/{sample_id}.png"
            (args.out / image).write_bytes(result.extras["value"])
            out_row = {k: v for k, v in row.items() if k not in ("id", "image")}
            out_row.update(id=sample_id, image=image, token_count=count_tokens(row["cadquery"]),
                           source=f"rendered from {args.programs.name}")
            f.write(json.dumps(out_row) + "\n")
            written += 1
    card = {"source": f"scripts/render_programs.py on {args.programs.name}", "rows_in": len(rows),
            "written": written, "failed": dict(failed), "failures": failures, "size": args.size,
            "render": {"function": "img2cq.render:render_png", **render_kwargs},
            "provenance": provenance()}
    (args.out / f"{args.split}.card.json").write_text(json.dumps(card, indent=2))
    print(f"wrote {written} of {len(rows)} rows to {args.out / (args.split + '.jsonl')}"
          + (f"; failed: {dict(failed)}" if failed else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
