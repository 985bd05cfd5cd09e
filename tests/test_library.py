"""The part library: resumable drawing, packing (duplicates and held-out programs out), shards,
retrieval, and the search over it."""
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from img2cq import codec, library, search
from img2cq.agreement import FRAME, agreements
from img2cq.build import result_shape, build_shape
from img2cq.data import draw_rng, load_split
from img2cq.render import render_array
from img2cq.sampler import sample_program

SEED = 31


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A build of 3 chunks of 8 draws (the last drawn after a simulated stop)."""
    work = tmp_path_factory.mktemp("library-build")
    library.build_chunks(work, 12, SEED, workers=2, progress=False, chunk=8)
    assert len(library.read_chunks(work, SEED)) == 2
    library.build_chunks(work, 20, SEED, workers=2, progress=False, chunk=8)  # resumes at chunk 2
    return work


def picture_of(program: str) -> Image.Image:
    return Image.fromarray(render_array(result_shape(build_shape(codec.parse(program), seams=True)), size=FRAME))


def test_drawing_resumes_and_matches_the_sampler(work):
    chunks = library.read_chunks(work, SEED)
    assert len(chunks) == 3 and all(int(c["draws"]) == 8 for c in chunks)
    first = chunks[0]
    i = int(first["index"][0])
    assert str(first["tokens"][0]).split() == codec.to_tokens(codec.parse(sample_program(draw_rng(SEED, "train", i))))
    with pytest.raises(ValueError, match="same seed and chunk"):
        library.build_chunks(work, 20, SEED, progress=False, chunk=16)


def test_refresh_builds_again_only_the_draws_whose_program_changed(work, tmp_path):
    """After a sampler change a build is refreshed, not redone: here one stored draw pretends to hold
    an older program; it alone is built again (with the draws rejected before), the rest is kept."""
    shutil.copytree(work, tmp_path / "build")
    before = library.read_chunks(tmp_path / "build", SEED)
    stale = before[1]
    records = [{"index": int(i), "reject": None, "tokens": str(t), "signature": str(g), "thumb": th}
               for i, t, g, th in zip(stale["index"], stale["tokens"], stale["signature"], stale["thumb"])]
    records[0] = {**records[0], "tokens": "new plane+Z+X", "thumb": np.zeros_like(records[0]["thumb"])}
    records += [{"index": i, "reject": "sliver"} for i in set(range(8, 16)) - {int(i) for i in stale["index"]}]
    library.write_chunk(library.chunk_path(tmp_path / "build", SEED, 1), sorted(records, key=lambda r: r["index"]))

    counts = library.refresh_chunks(tmp_path / "build", SEED, workers=1, progress=False)

    rejected_before = sum(int(c["draws"]) - len(c["index"]) for c in before)
    assert counts == {"kept": 24 - 1 - rejected_before, "rebuilt": 1 + rejected_before, "rebuilt_accepted": 1}
    for old, new in zip(before, library.read_chunks(tmp_path / "build", SEED)):
        for key in ("index", "tokens", "signature", "thumb"):
            np.testing.assert_array_equal(old[key], new[key])
    assert library.refresh_chunks(tmp_path / "new", SEED, progress=False)["kept"] == 0  # nothing drawn yet


def test_pack_drops_duplicates_and_held_out_programs(work):
    tokens, _, counts = library.distinct_parts(work, 5, SEED)
    held_out = {codec.to_program(codec.from_tokens(tokens[1].split()))}
    packed = library.pack_library(work, 5, SEED, dims=4, exclude_programs=held_out)
    programs = [packed.program(i) for i in range(len(packed))]
    assert len(packed) == 5 and not held_out & set(programs) and len(set(programs)) == 5
    assert packed.card["excluded_held_out"] == 1
    with pytest.raises(ValueError, match="fewer than"):
        library.pack_library(work, 10_000, SEED)


def test_save_load_shards_and_nearest_finds_the_part_itself(work, tmp_path, monkeypatch):
    packed = library.pack_library(work, 16, SEED, dims=8)
    monkeypatch.setattr(library, "MAX_SHARD_BYTES", 200)  # force several shards
    files = packed.save(tmp_path / "lib")
    assert len([f for f in files if f.name.startswith("parts-")]) > 1
    loaded = library.PartLibrary.load(tmp_path / "lib")
    assert len(loaded) == 16 and [loaded.tokens(i) for i in range(16)] == [packed.tokens(i) for i in range(16)]
    assert json.loads((tmp_path / "lib/card.json").read_text())["parts"] == 16
    hits = [loaded.nearest(picture_of(loaded.program(i)), 1)[0] == i for i in range(16)]
    assert sum(hits) >= 14  # features in float16: near-ties between look-alike parts may swap
    with pytest.raises(FileNotFoundError, match="no part library"):
        library.PartLibrary.load(tmp_path / "missing")


def test_every_lookup_orders_parts_by_one_exact_distance():
    """A picture gets the same nearest parts alone, in a batch, or as a library part's neighbour:
    near-ties (closer than float32 rounding) and exact ties (duplicates: lower index first) included."""
    rng = np.random.default_rng(0)
    features = (rng.normal(size=(500, 8)) * 30).astype(np.float32)
    features[7] = features[3]                         # a duplicate part
    features[11] = features[5] + np.float32(2e-3)     # a near-tie, far below float32 rounding of |f|^2
    parts = library.PartLibrary(np.zeros(0, np.uint16), np.zeros(501, np.int64), features,
                                np.zeros(8, np.float32), np.eye(8, dtype=np.float32), card={})
    queries = np.concatenate([features[[3, 5, 11]] + np.float32(1e-3), rng.normal(size=(40, 8)) * 30])
    exact = ((queries[:, None].astype(np.float64) - features[None].astype(np.float64)) ** 2).sum(-1)
    expected = np.lexsort((np.broadcast_to(np.arange(500), exact.shape), exact), axis=1)
    for query, order in zip(queries, expected):
        assert parts.nearest_features(query, 10) == list(order[:10])
    assert list(parts.nearest_each(queries, block=7)) == list(expected[:, 0])
    assert parts.nearest_features(features[3], 2) == [3, 7]
    others = parts.nearest_projected(features[[3, 7, 5]].astype(np.float64), exclude=np.array([3, 7, 5]))
    assert list(others) == [7, 3, 11]


def test_library_of_a_split_is_saved_beside_it_and_reused(tmp_path):
    (tmp_path / "images").mkdir()
    rows = []
    for i in range(4):
        program = sample_program(draw_rng(SEED, "val", i))
        picture_of(program).save(tmp_path / "images" / f"{i}.png")
        rows.append({"id": f"p{i}", "image": f"images/{i}.png", "cadquery": program})
    rows.append({"id": "outside", "image": "images/0.png", "cadquery": "import cadquery as cq\nsolid = cq.Workplane().box(1, 1, 1)\n"})
    split = tmp_path / "train.jsonl"
    split.write_text("".join(json.dumps(r) + "\n" for r in rows))
    built = library.PartLibrary.from_split(split, progress=False)
    assert len(built) == 4 and built.card["outside_codec"] == 1
    card = tmp_path / "train.library" / "card.json"
    saved = card.stat().st_mtime_ns
    again = library.PartLibrary.from_split(split, progress=False)
    assert card.stat().st_mtime_ns == saved and [again.program(i) for i in range(4)] == [r["cadquery"] for r in rows[:4]]
    image = load_split(split)[2]["image"]
    assert again.nearest(image, 1) == [2]


def test_search_with_the_library_alone_keeps_the_pictured_part(work, build_pool):
    packed = library.pack_library(work, 16, SEED, dims=8)
    image = picture_of(packed.program(5))
    result = search.search(None, image, refine_seconds=0, pool=build_pool, library=packed, shortlist=8,
                           judge=agreements)
    assert result.program == packed.program(5) and result.source == "library:5" and result.agreement > 0.99
    assert len(result.candidates) == 8


def test_the_shipped_library_holds_what_its_card_says_in_files_under_15_mib():
    shipped = library.PartLibrary.load()
    assert len(shipped) == shipped.card["parts"] >= 100_000
    assert shipped.features.shape == (len(shipped), library.FEATURE_DIMS) == (len(shipped), shipped.components.shape[0])
    files = list(library.LIBRARY_DIR.iterdir())
    assert len([f for f in files if f.name.startswith("parts-")]) == shipped.card["shards"]
    assert all(f.stat().st_size < 15 * 2**20 for f in files) and sum(f.stat().st_size for f in files) < 50e6
    assert codec.parse(shipped.program(len(shipped) - 1)) == shipped.sketches(len(shipped) - 1)
