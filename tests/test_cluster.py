"""The Dask cluster executor: same rows as the local pool, and one clear error when there is no cluster."""

import subprocess
import sys
import time

import pytest

from img2cq import data

distributed = pytest.importorskip("distributed", reason="the cluster extra is not installed (pip install 'img2cq[cluster]')")

from img2cq.sandbox import ClusterUnavailable, ProgramRunner, connect  # noqa: E402 - after the skip

SIZES = {"train": 8, "val": 0, "test": 4}
RENDER = {"size": 96, "fit": "bbox", "seed": 11}


def split_files(out):
    """Every row and every image of a generated dataset, as bytes."""
    files = {name: (out / name).read_bytes() for name in ("train.jsonl", "test.jsonl")}
    files.update({p.name: p.read_bytes() for p in sorted((out / "images").iterdir())})
    return files


@pytest.mark.integration
def test_cluster_split_equals_local_split(tmp_path):
    local = tmp_path / "local"
    data.generate_synthetic(local, SIZES, seed=11, workers=2, batch=8, render_kwargs=RENDER, progress=False)
    on_cluster = tmp_path / "cluster"
    with connect("local", workers=2, preload=("img2cq.render",)) as executor:
        assert isinstance(executor, ProgramRunner) and executor.workers == 2
        box = executor.run("import cadquery as cq\nsolid = cq.Workplane().box(1, 2, 3)\n")
        assert box.ok and abs(box.volume - 6.0) < 1e-6
        card = data.generate_synthetic(on_cluster, SIZES, seed=11, batch=8, render_kwargs=RENDER, progress=False,
                                       executor=executor)
    assert card["cluster"].startswith("tcp://")
    local_files, cluster_files = split_files(local), split_files(on_cluster)
    assert len(local_files) == 2 + sum(SIZES.values())
    assert cluster_files == local_files


def test_unreachable_scheduler_is_one_clear_error():
    started = time.monotonic()
    with pytest.raises(ClusterUnavailable, match="cannot reach a Dask scheduler at tcp://127.0.0.1:9"):
        connect("tcp://127.0.0.1:9", connect_timeout=1.0)
    assert time.monotonic() - started < 30  # bounded, not a hang (generous: the machine may be loaded)


def test_dataset_script_exits_2_without_a_cluster(repo_root, tmp_path):
    out = subprocess.run([sys.executable, "scripts/download_hf_dataset.py", "--source", "synthetic",
                          "--cluster", "auto", "--out", str(tmp_path), "--train", "1", "--test", "0"],
                         cwd=repo_root, capture_output=True, text=True, timeout=120,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(repo_root)})
    assert out.returncode == 2
    assert out.stderr.strip().startswith("error: --cluster auto: no scheduler named")
    assert len(out.stderr.strip().splitlines()) == 1
