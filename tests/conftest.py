"""Fixtures shared by the test modules: the repository root, reference programs, one sandbox."""

from pathlib import Path

import pytest

from img2cq.sandbox import Executor

pytest_plugins = ["tests.postgres"]  # the throwaway PostgreSQL server fixtures

# Programs with known outcomes, in the two styles the tests need: plain CadQuery and GenCAD-Code.
REFERENCE_PROGRAMS = {
    "box": "import cadquery as cq\nsolid = cq.Workplane().box(1, 0.5, 0.25)\n",
    "cylinder": "import cadquery as cq\nresult = cq.Workplane().circle(0.5).extrude(0.2)\n",
    "gencad_box": """import cadquery as cq
wp_sketch0 = cq.Workplane(cq.Plane(cq.Vector(0.0, 0.0, 0.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))
loop0=wp_sketch0.moveTo(1.0, 0.0).lineTo(1.0, 1.0).lineTo(0.0, 1.0).lineTo(0.0, 0.0).close()
solid=wp_sketch0.add(loop0).extrude(0.5)
""",
    "syntax_error": "import cadquery as cq\nsolid = cq.Workplane().box(1, 1,\n",
    "runtime_error": "import cadquery as cq\nsolid = cq.Workplane().box(1, 1, 1).fillet(5)\n",
    "no_solid": "import cadquery as cq\nsolid = cq.Workplane().rect(1, 1)\n",
    "not_a_shape": "solid = 5\n",
}


def pytest_collection_modifyitems(items):
    """Tests that need the sandbox (the `executor` fixture) are integration tests."""
    for item in items:
        if "executor" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def reference_programs() -> dict[str, str]:
    """Named programs: "box", "cylinder", "gencad_box" build solids; the others fail as named."""
    return dict(REFERENCE_PROGRAMS)


@pytest.fixture(scope="session")
def executor():
    """One two-worker sandbox for the whole session (a worker imports CadQuery once: ~1 s)."""
    with Executor(workers=2) as ex:
        yield ex


@pytest.fixture(scope="session")
def build_pool():
    """One two-worker pool of long-lived build workers (codec structures, no program text)."""
    from img2cq.build import BuildPool

    with BuildPool(workers=2) as pool:
        yield pool


@pytest.fixture
def one_torch_thread():
    """One intra-op thread: on a small shared CPU, tiny matrices run many times faster than with two."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
