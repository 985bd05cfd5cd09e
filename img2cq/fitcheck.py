"""Which fit rule drew each image of a split: the dataset's (projected 3D box fits 400 x 300 px, centred)
or the silhouette rule (longer side 400 px, centred)? Scales are per 448 px and proportional otherwise.

    python -m img2cq.fitcheck data/test.jsonl --limit 200

Each row's program runs in the sandboxed executor, which returns the screen extents of its 3D box
and silhouette (img2cq.render.projected_extents); the image's silhouette gives the pixels per unit,
and from that the box's size and offset in pixels. Renders with a view jitter are not checked
(their camera differs from the rule's). Exit status 1 when under ``--min-share`` follow the bbox rule.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from img2cq.console import fail
from img2cq.training_args import parse_cli


TOLERANCE_PX = 2.0  # allowed error of a tight side and of the centre, in pixels at any image size


def _ink_box(image) -> tuple[float, float, float, float] | None:
    """(x_min, x_max, y_min, y_max) of the non-white pixels (inclusive), or None for a blank image."""
    from img2cq.framing import silhouette_box

    box = silhouette_box(image)
    return None if box is None else (float(box[0]), float(box[2] - 1), float(box[1]), float(box[3] - 1))


def measure(extents: dict, image) -> dict | None:
    """Box size and centre offset in pixels, and the silhouette's longer side and offset, for an image
    drawn from a shape with these projected extents (None for a blank image)."""
    ink = _ink_box(image)
    if ink is None:
        return None
    x0, x1, y0, y1 = ink
    su0, su1, sv0, sv1 = extents["silhouette"]
    bu0, bu1, bv0, bv1 = extents["box"]
    # pixel centres of the outermost ink span the silhouette; its ~1 px edge lines add about a pixel more
    ppu = max(x1 - x0, y1 - y0) / max(su1 - su0, sv1 - sv0, 1e-9)
    centre = (image.width - 1) / 2, (image.height - 1) / 2
    ink_centre = (x0 + x1) / 2, (y0 + y1) / 2
    # where the box's centre lands: the ink centre shifted by the silhouette-to-box offset (v points up)
    box_centre = (ink_centre[0] - ppu * ((su0 + su1) - (bu0 + bu1)) / 2,
                  ink_centre[1] + ppu * ((sv0 + sv1) - (bv0 + bv1)) / 2)
    return {"box_px": (ppu * (bu1 - bu0), ppu * (bv1 - bv0)),
            "box_offset_px": (box_centre[0] - centre[0], box_centre[1] - centre[1]),
            "silhouette_px": max(x1 - x0 + 1, y1 - y0 + 1),
            "silhouette_offset_px": (ink_centre[0] - centre[0], ink_centre[1] - centre[1]),
            "size": image.width}


def follows_bbox_rule(m: dict, tolerance: float = TOLERANCE_PX) -> bool:
    """The projected box fits the 400 x 300 window (per 448 px), one side tight, centred."""
    from img2cq.render import BOX_WINDOW, REFERENCE_SIZE

    k = m["size"] / REFERENCE_SIZE
    (w, h), (dx, dy) = m["box_px"], m["box_offset_px"]
    limit_w, limit_h = BOX_WINDOW[0] * k, BOX_WINDOW[1] * k
    inside = w <= limit_w + tolerance and h <= limit_h + tolerance
    tight = min(abs(w - limit_w), abs(h - limit_h)) <= tolerance
    return inside and tight and abs(dx) <= tolerance and abs(dy) <= tolerance


def follows_silhouette_rule(m: dict, tolerance: float = TOLERANCE_PX) -> bool:
    """The silhouette's longer side spans 400 px (per 448 px), centred."""
    from img2cq.render import REFERENCE_SIZE, SILHOUETTE_SPAN

    dx, dy = m["silhouette_offset_px"]
    span = SILHOUETTE_SPAN * m["size"] / REFERENCE_SIZE
    return abs(m["silhouette_px"] - span) <= tolerance and abs(dx) <= tolerance and abs(dy) <= tolerance


def check_split(jsonl_path: str | Path, limit: int | None = None, workers: int = 1, progress: bool = True) -> dict:
    """Counts of rows following each rule, plus the rows that could not be checked."""
    from PIL import Image

    from img2cq.data import read_rows
    from img2cq.sandbox import Executor

    path = Path(jsonl_path)
    rows = read_rows(path)[:limit]
    with Executor(workers=workers, preload=("img2cq.render",)) as executor:
        results = executor.map([r["cadquery"] for r in rows], mesh=False, progress=progress and "fit check",
                               postprocess="img2cq.render:projected_extents")
    report = {"rows": len(rows), "checked": 0, "bbox": 0, "silhouette": 0, "unchecked": 0, "off_rule": []}
    for row, result in zip(rows, results):
        m = measure(result.extras["value"], Image.open(path.parent / row["image"])) if result.ok else None
        if m is None:
            report["unchecked"] += 1
            continue
        report["checked"] += 1
        report["bbox"] += follows_bbox_rule(m)
        report["silhouette"] += follows_silhouette_rule(m)
        if not follows_bbox_rule(m):
            report["off_rule"].append({"id": row["id"], "box_px": [round(v, 1) for v in m["box_px"]],
                                       "box_offset_px": [round(v, 1) for v in m["box_offset_px"]]})
    return report


@dataclass
class FitCheckArguments:
    jsonl: str = field(metadata={
        "positional": True, "help": "a split file (rows with 'image' and 'cadquery'); its programs must be trusted"})
    limit: int | None = field(default=None, metadata={"help": "check only the first N rows"})
    workers: int = 1
    min_share: float = field(default=0.95, metadata={"help": "share of checked rows the bbox rule must fit"})


def main(argv=None) -> int:
    args = parse_cli(FitCheckArguments, __doc__, argv, config=False, prog="python -m img2cq.fitcheck")
    if not Path(args.jsonl).is_file():
        return fail(f"no such split file: {args.jsonl}")
    if (args.limit is not None and args.limit < 1) or args.workers < 1:
        return fail("need --limit >= 1 and --workers >= 1")
    from img2cq.data import DataError

    try:
        report = check_split(args.jsonl, args.limit, args.workers)
    except DataError as e:  # a row that is not JSON
        return fail(e)
    n = max(report["checked"], 1)
    print(f"checked {report['checked']} of {report['rows']} rows ({report['unchecked']} unchecked: program failed or blank image)")
    print(f"bbox rule (projected 3D box fits 400x300 px, centred): {report['bbox']}/{report['checked']} "
          f"({report['bbox'] / n:.1%})")
    print(f"silhouette rule (longer side 400 px, centred): {report['silhouette']}/{report['checked']} "
          f"({report['silhouette'] / n:.1%})")
    for off in report["off_rule"][:5]:
        print(f"  off the bbox rule: {off}")
    return 0 if report["bbox"] / n >= args.min_share else 1


if __name__ == "__main__":
    sys.exit(main())
