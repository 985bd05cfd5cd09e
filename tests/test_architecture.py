"""The import graph: `lint-imports` keeps the contracts of pyproject.toml ([tool.importlinter]).

The second test plants a breach in a copy of the packages, so the check is seen to fail when it should.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    if not LINT_IMPORTS.exists():
        pytest.skip("lint-imports is not installed (pip install -e '.[dev]')")
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=root, env=env, capture_output=True, text=True,
                          timeout=120)


def test_import_graph_keeps_every_contract(repo_root):
    out = lint_imports(repo_root)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout


@pytest.mark.parametrize("module, planted, contract", [
    ("sandbox/pool.py", "from img2cq import evaluation", "img2cq layers"),  # a low layer reaching up
    ("sandbox/wire.py", "from img2cq.sandbox import pool", "sandbox layers"),  # the wire format reaching up
    ("sandbox/pool.py", "import cadquery", "never imports CadQuery"),        # the caller's side stays light
    ("render.py", "from img2cq import sampler", "img2cq layers"),          # independent siblings
    ("iou.py", "import metrics.best_iou", "builds on img2cq, never the reverse"),
    ("../scheduling/tables.py", "import torch", "never import torch"),
    ("../scheduling/crud.py", "from img2cq import search", "neither imports the other"),  # two products
    ("iou.py", "import scheduling.cpm", "neither imports the other"),
    ("../scheduling/cpm.py", "from scheduling import crud", "scheduling layers"),  # the pure CPM reaching up
])
def test_a_planted_breach_is_reported(repo_root, tmp_path, module, planted, contract):
    for package in ("img2cq", "metrics", "scheduling"):
        shutil.copytree(repo_root / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(repo_root / "pyproject.toml", tmp_path)
    target = tmp_path / "img2cq" / module
    target.write_text(target.read_text() + f"\n{planted}  # planted by the test\n")
    out = lint_imports(tmp_path)
    assert out.returncode != 0
    broken = [line for line in out.stdout.splitlines() if " BROKEN" in line]  # "BROKEN (1 ignored import)"
    assert any(contract in line for line in broken), out.stdout[-3000:]

def test_importing_the_sandbox_loads_no_heavy_package(repo_root):
    """The sandbox's caller side and the measuring code import CadQuery, OCC, Dask and torch only when
    a worker, a measurement or a cluster needs them."""
    code = ("import sys, img2cq.sandbox, img2cq.measure\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'cadquery', 'OCP', 'dask', 'distributed', "
            "'torch', 'transformers'}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_the_package_configuration_ships_every_module_and_data_folder(repo_root):
    """A wheel (``pip install .``) holds every folder of the three top-level packages that has code or
    data, as the editable install of the README does (a listed-packages config once left out the sandbox)."""
    import tomllib

    from setuptools import find_namespace_packages

    config = tomllib.loads((repo_root / "pyproject.toml").read_text())["tool"]["setuptools"]
    find = config["packages"]["find"]
    shipped = set(find_namespace_packages(str(repo_root), include=find["include"], exclude=find["exclude"]))
    needed = {str(d.relative_to(repo_root)).replace("/", ".")
              for top in ("img2cq", "metrics", "scheduling") for d in [repo_root / top, *(repo_root / top).rglob("*")]
              if d.is_dir() and d.name != "__pycache__" and any(f.is_file() for f in d.iterdir())}
    assert needed <= shipped and "img2cq.sandbox" in shipped
    data = config["package-data"]
    assert data["img2cq.serving.static"] and (repo_root / "img2cq/serving/static/index.html").is_file()
