"""The safe executor: right result object, right failure reasons, nothing escapes, nothing hangs."""

import os
import time

import numpy as np
import psutil
import pytest

from img2cq.sandbox import Executor, ProgramRunner, clean_code

BOX_WITH_HOLE = """
import cadquery as cq
# Generating a workplane for sketch 0
wp_sketch0 = cq.Workplane(cq.Plane(cq.Vector(-0.5, -0.25, 0.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))
loop0=wp_sketch0.moveTo(1.0, 0.0).lineTo(1.0, 0.5).lineTo(0.0, 0.5).lineTo(0.0, 0.0).close()
loop1=wp_sketch0.moveTo(0.5, 0.25).circle(0.0625)
solid0=wp_sketch0.add(loop0).add(loop1).extrude(0.125)
solid=solid0
"""
BOX_WITH_HOLE_VOLUME = (1.0 * 0.5 - np.pi * 0.0625**2) * 0.125


@pytest.fixture(scope="module")
def ex():
    with Executor(workers=2, timeout=3.0, memory_mb=3072) as executor:
        yield executor


def test_gencad_program_gives_exact_volume_and_watertight_mesh(ex):
    r = ex.run(BOX_WITH_HOLE, brep=True)
    assert r.ok, r.reason
    assert r.volume == pytest.approx(BOX_WITH_HOLE_VOLUME, rel=1e-9)
    assert r.center == pytest.approx([0.0, 0.0, 0.0625], abs=1e-9)
    assert np.allclose(r.inertia, r.inertia.T)
    # every edge of a closed, consistently oriented mesh is used once in each direction
    edges = np.concatenate([r.faces[:, [0, 1]], r.faces[:, [1, 2]], r.faces[:, [2, 0]]])
    assert len({tuple(e) for e in edges}) == len(edges)
    assert {tuple(e) for e in edges} == {tuple(e[::-1]) for e in edges}
    assert r.brep.startswith(b"DBRep_DrawableShape") or b"CASCADE Topology" in r.brep
    assert {"exec", "measure", "total"} <= set(r.timings)


def test_the_pool_is_a_program_runner(ex):
    """What scoring, data generation and evaluation accept: a local pool or a cluster alike."""
    assert isinstance(ex, ProgramRunner) and ex.workers == 2 and len(ex.worker_pids()) == 2


def test_markdown_fences_and_indentation_are_stripped(ex):
    fenced = "Here you go:\n```python\n    import cadquery as cq\n    result = cq.Workplane().box(1, 2, 3)\n```\n"
    assert clean_code(fenced).startswith("import cadquery as cq\n")
    r = ex.run(fenced)
    assert r.ok and r.volume == pytest.approx(6.0)


@pytest.mark.parametrize("code, volume", [
    ("import cadquery as cq\nresult = cq.Workplane().box(1, 1, 2)\nsolid = cq.Workplane().box(1, 1, 1)", 1.0),
    ("import cadquery as cq\npart = cq.Workplane().box(1, 1, 2)", 2.0),
    ("import cadquery as cq\na = cq.Workplane().box(1, 1, 1)\nb = cq.Workplane().box(2, 1, 1)\nn = 3", 2.0),
    ("import cadquery as cq\nb = cq.Solid.makeBox(1, 1, 3)", 3.0),
    # two disjoint solids in one Workplane both count
    ("import cadquery as cq\nsolid = cq.Workplane().box(1, 1, 1).union(cq.Workplane().box(1, 1, 1).translate((3, 0, 0)))", 2.0),
])
def test_result_object_is_picked_by_gencad_convention(ex, code, volume):
    r = ex.run(code)
    assert r.ok, r.reason
    assert r.volume == pytest.approx(volume)


HOSTILE = {
    "syntax": ("import cadquery as cq\nsolid = (", "syntax"),
    "runtime": ("import cadquery as cq\nsolid = cq.Workplane().box(1, 1, 1).fillet(5)", "runtime"),
    "name_error": ("solid = undefined_name", "runtime"),
    "infinite_loop": ("while True:\n    pass", "timeout"),
    "sleep": ("import time\ntime.sleep(60)", "timeout"),
    "huge_allocation": ("x = bytearray(50 * 2**30)", "memory"),
    "fork": ("import os\nos.fork()", "forbidden"),
    "subprocess": ("import subprocess\nsubprocess.run(['sleep', '60'])", "forbidden"),
    "os_system_caught": ("import os\ntry:\n    os.system('true')\nexcept Exception:\n    pass\n"
                         "import cadquery as cq\nsolid = cq.Workplane().box(1, 1, 1)", "forbidden"),
    "os_exit": ("import os\nos._exit(0)", "exit"),
    "system_exit": ("raise SystemExit(3)", "exit"),
    "keyboard_interrupt": ("raise KeyboardInterrupt", "runtime"),
    "write_outside": ("open('ESCAPE_PATH', 'w').write('x')", "forbidden"),
    "delete_outside": ("import os\nos.remove('VICTIM_PATH')", "forbidden"),
    "socket": ("import socket\nsocket.create_connection(('127.0.0.1', 1), timeout=1)", "forbidden"),
    "ctypes_segfault": ("import ctypes\nctypes.string_at(0)", "forbidden"),
    "native_segfault": ("import faulthandler\nfaulthandler._sigsegv()", "crash"),
    "kill_parent": ("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)", "forbidden"),
    "no_result": ("x = 1", "no_result"),
    "empty_workplane": ("import cadquery as cq\nsolid = cq.Workplane()", "empty"),
    "sketch_only": ("import cadquery as cq\nsolid = cq.Workplane().rect(1, 1)", "empty"),
    "zero_thickness": ("import cadquery as cq\nsolid = cq.Workplane().box(1, 1, 1).intersect(cq.Workplane().box(1, 1, 1).translate((1, 0, 0)))", "empty"),
}


def test_hostile_corpus_is_refused_with_the_right_reason(ex, tmp_path):
    escape, victim = tmp_path / "escape.txt", tmp_path / "victim.txt"  # outside every child's scratch folder
    victim.write_text("keep me")
    started = time.monotonic()
    results = ex.map([code.replace("ESCAPE_PATH", str(escape)).replace("VICTIM_PATH", str(victim))
                      for code, _ in HOSTILE.values()])
    elapsed = time.monotonic() - started
    for (name, (_, kind)), r in zip(HOSTILE.items(), results):
        assert not r.ok, name
        assert r.error_kind == kind, f"{name}: {r.reason}"
        assert r.message, name
    assert not escape.exists() and victim.read_text() == "keep me"
    assert elapsed < 60  # two timeouts of 3 s each, everything else fast
    # the pool survives all of it and still works
    assert ex.run(BOX_WITH_HOLE).ok
    # nothing left behind: only the two workers are our children; each has one child, its fork
    # server, which, once it has forked the spares again after the last answer, has exactly three
    # sandbox children (a program child and two measuring children, forked ahead of the next jobs)
    # and, where it gives each its own PID namespace, their stand-in process 1s; none has children
    pids = set(ex.worker_pids())  # other pools (the shared fixture's) may be alive too
    workers = [p for p in psutil.Process().children() if p.pid in pids]
    assert len(workers) == 2
    for worker in workers:
        deadline = time.monotonic() + 30  # under load the fork server may take a while to refill
        while True:
            descendants = described(worker.children(recursive=True))  # one snapshot
            servers = [d for d, parent, _ in descendants if parent == worker.pid]
            below = [(parent, name) for d, parent, name in descendants if parent != worker.pid]
            settled = (len(servers) == 1 and len([name for _, name in below if name != "cat"]) == 3
                       and len(below) in (3, 6))
            if settled or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert settled, (servers, below)
        assert all(parent == servers[0].pid for parent, _ in below)


def described(processes: list[psutil.Process]) -> list[tuple[psutil.Process, int, str]]:
    """(process, parent pid, name) of each process that has not exited, asked once (one that ends
    between two questions is left out, as ``living`` leaves it)."""
    out = []
    for p in processes:
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                out.append((p, p.ppid(), p.name()))
        except psutil.NoSuchProcess:
            pass
    return out


def living(processes: list[psutil.Process], but: str = "") -> list[psutil.Process]:
    """The processes that have not exited (a child that just answered may be a zombie for a moment,
    or gone between two questions), less those named `but`."""
    out = []
    for p in processes:
        try:
            if p.status() != psutil.STATUS_ZOMBIE and p.name() != but:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def sandbox_children(worker: psutil.Process) -> list[psutil.Process]:
    """The sandbox children a worker's fork server holds ready (not their stand-in process 1s)."""
    children = []
    for server in living(worker.children()):
        try:
            children += living(server.children(), but="cat")
        except psutil.NoSuchProcess:  # a server that ended between the two questions holds none
            pass
    return children


def test_private_workdir_and_scrubbed_environment(ex, monkeypatch):
    code = ("import os\nassert 'IMG2CQ_TEST_SECRET' not in os.environ, 'secret leaked'\n"
            "open('scratch.txt', 'w').write('allowed inside the sandbox')\n"
            "import cadquery as cq\nsolid = cq.Workplane().box(1, 1, 1)")
    monkeypatch.setenv("IMG2CQ_TEST_SECRET", "x")  # set after the workers started: never visible
    r = ex.run(code)
    assert r.ok, r.reason
    with Executor(workers=1) as fresh:  # started with the secret in the caller's environment
        monkeypatch.setenv("HF_TOKEN", "hf_secret")
        assert fresh.run(code.replace("IMG2CQ_TEST_SECRET", "HF_TOKEN")).ok


def test_call_runs_a_trusted_function_sandboxed(ex):
    r = ex.call("numpy:add", 2, 3)
    assert r.ok and r.extras["value"] == 5
    r = ex.call("os:getcwd")
    assert r.ok and "img2cq-run-" in r.extras["value"]


def test_postprocess_runs_on_the_result_shape(ex):
    r = ex.run("import cadquery as cq\nsolid = cq.Workplane().box(1, 2, 3)", mesh=False,
               postprocess="img2cq.measure:mesh_arrays")
    assert r.ok and r.vertices is None
    vertices, faces = r.extras["value"]
    assert vertices.shape == (8, 3) and faces.shape == (12, 3)


def test_bad_arguments_fail_clearly():
    with pytest.raises(ValueError, match="workers"):
        Executor(workers=0)
    with pytest.raises(ValueError, match="timeout"):
        Executor(timeout=0)
    with pytest.raises(ValueError, match="nice"):
        Executor(nice=20)


def test_workers_and_their_children_run_at_the_niceness_asked():
    """A server lowers its sandbox below its request handling: the program itself sees it."""
    base = os.nice(0)
    with Executor(workers=1, nice=3) as executor:
        r = executor.run("import os\nimport cadquery as cq\nsolid = cq.Workplane().box(os.nice(0) + 1, 1, 1)\n")
        (pid,) = executor.worker_pids()
        worker = psutil.Process(pid)
        assert worker.nice() == base + 3
    assert r.ok and r.volume == pytest.approx(base + 3 + 1)


def test_non_string_program_is_invalid_not_an_exception(ex):
    r = ex.run(None)
    assert not r.ok and r.error_kind == "syntax"


def test_close_leaves_no_process_and_no_working_directory(tmp_path, monkeypatch):
    """Workers keep three spare children forked ahead of the next jobs: close() must take them away
    too, with the fork servers that forked them."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the workers' temporary directories go here
    others = set(psutil.Process().children())
    with Executor(workers=2) as executor:
        assert executor.run(BOX_WITH_HOLE).ok
        workers = [p for p in psutil.Process().children() if p not in others]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # each worker forks its next spares right after answering,
            spares = [c for w in workers for c in sandbox_children(w)]  # and reaps a dropped child soon after
            workdirs = list(tmp_path.glob("img2cq-run-*"))
            if len(spares) == 6 and len(workdirs) == 6:
                break
            time.sleep(0.05)
        assert len(spares) == 6 and len(workdirs) == 6
        spares = list({*spares, *(c for w in workers for c in w.children(recursive=True))})  # with fork servers, process 1s
    psutil.wait_procs(workers + spares, timeout=10)
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in workers + spares)
    assert not list(tmp_path.glob("img2cq-run-*"))
