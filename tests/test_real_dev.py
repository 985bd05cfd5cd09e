"""benchmarks/real_dev: the committed split of real GenCAD-Code parts agrees with its card and its programs."""
import hashlib
import json
from pathlib import Path

import pytest
from PIL import Image

from img2cq.data import load_split, read_rows

SPLIT = Path(__file__).resolve().parents[1] / "benchmarks" / "real_dev"


@pytest.fixture(scope="module")
def card():
    return json.loads((SPLIT / "card.json").read_text())


@pytest.fixture(scope="module")
def programs():
    return read_rows(SPLIT / "programs.jsonl")


@pytest.fixture(scope="module")
def rows():
    return read_rows(SPLIT / "test.jsonl")


def row_number(sample_id: str) -> int:
    prefix, number = sample_id.rsplit("-", 1)
    assert prefix == "real-dev" and len(number) == 5, sample_id
    return int(number)


def test_split_loads_with_as_many_rows_as_the_card_says(card):
    ds = load_split(SPLIT / "test.jsonl")
    assert len(ds) == card["built"] == card["files"]["test.jsonl"]["rows"]
    assert {"id", "image", "cadquery", "train_index", "deepcad_id"} <= set(ds.column_names)
    assert ds[0]["image"].size == (448, 448)  # the image column decodes to pictures


def test_every_picture_exists_and_is_448_square(card, rows):
    images = sorted(p.name for p in (SPLIT / "images").glob("*.png"))
    assert images == sorted(Path(r["image"]).name for r in rows)  # one picture per row, no strays
    assert len(images) == card["files"]["images"]["count"]
    for row in rows:
        assert row["image"] == f"images/{row['id']}.png"
        with Image.open(SPLIT / row["image"]) as im:
            assert im.size == (448, 448) and im.mode == "RGB", row["id"]


def test_each_program_is_byte_identical_to_its_programs_row(rows, programs):
    ids = [r["id"] for r in rows]
    assert len(set(ids)) == len(ids)
    for row in rows:
        source = programs[row_number(row["id"])]
        assert row["cadquery"].encode() == source["cadquery"].encode(), row["id"]
        assert (row["train_index"], row["deepcad_id"]) == (source["train_index"], source["deepcad_id"]), row["id"]


def test_programs_file_is_the_one_the_card_names(card, programs):
    assert hashlib.sha256((SPLIT / "programs.jsonl").read_bytes()).hexdigest() == card["files"]["programs.jsonl"]["sha256"]
    assert len(programs) == card["programs"] == card["files"]["programs.jsonl"]["rows"]
    assert sum(p["train_index"] is not None for p in programs) == card["source"]["rows_with_train_index"]
    assert sum(p["deepcad_id"] is not None for p in programs) == card["source"]["rows_with_deepcad_id"]


def test_card_counts_match_the_files(card, rows, programs):
    render_record = json.loads((SPLIT / "test.card.json").read_text())
    assert card["built"] + sum(card["failed"].values()) == card["programs"]
    assert (render_record["rows_in"], render_record["written"], render_record["failed"]) == \
        (card["programs"], card["built"], card["failed"])
    assert card["render"] == render_record["render"] and card["render"]["size"] == 448
    # every program is either a row of the split or a listed failure, never both
    built = {row_number(r["id"]) for r in rows}
    failed = {f["row"] for f in card["failures"]}
    assert len(failed) == sum(card["failed"].values()) and not built & failed
    assert built | failed == set(range(len(programs)))
    for f in card["failures"]:
        assert f["train_index"] == programs[f["row"]]["train_index"] and f["reason"] and f["why"]


def test_measurement_half_is_the_odd_rows(card, rows):
    half = read_rows(SPLIT / "measurement_half.jsonl")
    assert half == [r for r in rows if row_number(r["id"]) % 2 == 1]
    assert len(half) == card["halves"]["measurement"]["built"] == card["files"]["measurement_half.jsonl"]["rows"]
    assert len(rows) - len(half) == card["halves"]["shaping"]["built"]
