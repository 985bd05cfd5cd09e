"""Hostile programs against the kernel sandbox: each tries to reach something outside its private
directory and must come back invalid, with a clear kind and no byte of what it went for, while the
database a test owns stays unchanged.

Several cases go around the Python audit hook (C libraries such as sqlite3 and OCC, pidfds), and
the `Executor.call` cases run in a child with no audit hook at all: what stops them is the kernel.
"""

import hashlib
import os
import select
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import trimesh

import img2cq
import img2cq.sandbox.confine as confine
from img2cq.sandbox import Executor, SandboxUnavailable, strict_isolation_problem
from img2cq.sandbox.process import pid_namespaces_available

SECRET = "hunter2-sandbox-secret"
# where the executor may create PID namespaces (as root), each child has one of its own
PID_NAMESPACES = strict_isolation_problem() is None and pid_namespaces_available()
PASSWD_LINES = [line for line in open("/etc/passwd").read().splitlines() if line.strip()]

pytestmark = pytest.mark.skipif(
    strict_isolation_problem() is not None,
    reason=f"the kernel cannot enforce strict isolation here: {strict_isolation_problem()}")


@pytest.fixture(scope="module")
def victim_db(tmp_path_factory):
    """A SQLite database the tests own, in a directory only the tests' process knows about."""
    path = tmp_path_factory.mktemp("victim") / "projects.db"
    with sqlite3.connect(path) as db:
        db.execute("create table projects (id integer primary key, name text)")
        db.execute("insert into projects (name) values ('kept')")
    return path


def fingerprint(path) -> tuple[str, list]:
    with sqlite3.connect(path) as db:
        rows = db.execute("select id, name from projects").fetchall()
    return hashlib.sha256(path.read_bytes()).hexdigest(), rows


@pytest.fixture(scope="module")
def ex():
    with Executor(workers=2, timeout=5.0, memory_mb=3072) as executor:
        yield executor


@pytest.fixture(scope="module")
def bystander():
    """Another process of this user, holding a secret in its environment."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                            env={**os.environ, "IMG2CQ_DB_PASSWORD": SECRET})
    yield proc
    proc.kill()
    proc.wait()


@pytest.fixture(scope="module")
def listener():
    """A TCP server on the loopback interface that must never see a connection."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield server


@pytest.fixture(autouse=True)
def database_is_never_touched(victim_db):
    before = fingerprint(victim_db)
    yield
    assert fingerprint(victim_db) == before
    assert before[1] == [(1, "kept")]


def assert_nothing_leaked(result):
    text = result.message
    assert not any(line in text for line in PASSWD_LINES), "a line of /etc/passwd leaked"
    assert SECRET not in text, "the secret leaked"
    assert "kept" not in text and "CREATE TABLE" not in text.upper(), "database content leaked"


BOX_BREP = ("import io, cadquery as cq\nbuf = io.BytesIO()\ncq.Workplane().box(2, 2, 2).val().exportBrep(buf)\n"
            "brep = buf.getvalue()\n")
FORGE = "import os\nfrom img2cq.sandbox.wire import encode\nos.write(3, {payload})\nos._exit(0)\n"

def fill(code: str, values: dict) -> str:
    """The program with its {placeholders} (and only those) replaced."""
    for key, value in values.items():
        code = code.replace("{" + key + "}", str(value))
    return code


# name: (program, expected kind, text the message must contain); {db}, {pid}, ... filled in per run
PROGRAMS = {
    "read_etc_passwd": ("print(open('/etc/passwd').read())", "forbidden", "Permission denied: '/etc/passwd'"),
    "read_etc_passwd_through_sqlite": (
        "import sqlite3\nsqlite3.connect('file:/etc/passwd?mode=ro', uri=True).execute('select 1 from x')",
        "runtime", "unable to open database file"),
    "list_proc": ("import os\nraise RuntimeError(os.listdir('/proc'))", "forbidden", "Permission denied: '/proc'"),
    "read_own_memory": ("open('/proc/self/mem', 'rb')", "forbidden", "Permission denied"),
    "read_bystander_environ": ("raise RuntimeError(open('/proc/{pid}/environ', 'rb').read())", "forbidden",
                               "Permission denied: '/proc/"),
    "read_worker_environ": ("import os\nraise RuntimeError(open(f'/proc/{os.getppid() or 1}/environ', 'rb').read())",
                            "forbidden", "Permission denied"),
    "list_tmp": ("import os\nraise RuntimeError(os.listdir('/tmp'))", "forbidden", "Permission denied: '/tmp'"),
    "list_home": ("import os\nraise RuntimeError(os.listdir('{home}'))", "forbidden", "Permission denied"),
    "update_database_by_path": (
        "import sqlite3\nc = sqlite3.connect('{db}')\nc.execute(\"update projects set name='pwned'\")\nc.commit()",
        "runtime", "unable to open database file"),
    "read_database_by_path": (
        "raise RuntimeError(open('{db}', 'rb').read())", "forbidden", "Permission denied"),
    "write_outside_with_python": ("open('{outside}/python.txt', 'w').write('x')", "forbidden", "outside the sandbox"),
    "write_outside_with_sqlite": ("import sqlite3\nsqlite3.connect('{outside}/new.db').execute('create table t (x)')",
                                  "runtime", "unable to open database file"),
    "write_outside_with_occ": (BOX_BREP + "import os\ncq.Workplane().box(1, 1, 1).val().exportBrep('{outside}/occ.brep')\n"
                               "assert not os.path.exists('{outside}/occ.brep'), 'written'\nsolid = 1",
                               "no_result", "no Workplane or Shape result"),
    "write_into_the_project": ("import sqlite3, img2cq, os\n"
                               "sqlite3.connect(os.path.join(os.path.dirname(img2cq.__file__), 'probe-{caller}.db')).execute('create table t (x)')",
                               "runtime", "unable to open database file"),
    "inherited_descriptors": (
        "import os, stat\nfds = []\nfor fd in range(4096):\n    try:\n        os.fstat(fd)\n        fds.append(fd)\n"
        "    except OSError:\n        pass\n"
        "null = os.stat('/dev/null').st_rdev\nstdio = all(os.fstat(fd).st_rdev == null for fd in (0, 1, 2))\n"
        "pipe = stat.S_ISFIFO(os.fstat(3).st_mode)\nraise RuntimeError(f'open {fds} stdio-null {stdio} pipe {pipe}')",
        "runtime", "open [0, 1, 2, 3] stdio-null True pipe True"),
    "write_to_worker_pipes": (
        "import os, pickle\nhit = 0\nfor fd in range(4, 1024):\n    try:\n"
        "        os.write(fd, pickle.dumps(('forged', None)))\n        hit += 1\n    except OSError:\n        pass\n"
        "raise RuntimeError(f'wrote to {hit} descriptors')", "runtime", "wrote to 0 descriptors"),
    "forge_a_measured_result": (FORGE.format(payload="encode({'ok': True, 'volume': 123.0, 'center': [0, 0, 0]})"),
                                "crash", "malformed output"),
    "forge_garbage": (FORGE.format(payload="b'\\x00' * 100"), "crash", "malformed output"),
    "forge_bad_name": (BOX_BREP + FORGE.format(payload="encode({'ok': True, 'name': 'x; y', 'brep': brep})"),
                       "crash", "malformed output"),
    "forge_worker_error": (FORGE.format(payload="encode({'ok': False, 'error_kind': 'worker', 'message': 'restart me'})"),
                           "runtime", "restart me"),  # a program's bytes carry a message, never a kind it may not claim
    "forge_unreadable_brep": (FORGE.format(payload="encode({'ok': True, 'name': 'solid', 'brep': b'not a brep'})"),
                              "invalid_shape", "`solid` is not a readable B-rep"),
    "forge_a_face": ("import io, cadquery as cq\nbuf = io.BytesIO()\ncq.Face.makePlane(1, 1).exportBrep(buf)\n"
                     "brep = buf.getvalue()\n" + FORGE.format(payload="encode({'ok': True, 'name': 'solid', 'brep': brep})"),
                     "empty", "`solid` holds no solid"),
    "forge_huge_output": ("import os\nchunk = b'x' * (1 << 20)\nwhile True:\n    os.write(3, chunk)",
                          "invalid_shape", "exceeds 64 MiB"),
    "connect_loopback": ("import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)", "forbidden",
                         "socket"),
    "signal_worker": ("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)", "forbidden", "os.kill"),
    "signal_worker_by_pidfd": ("import os, signal\nsignal.pidfd_send_signal(os.pidfd_open(os.getppid() or 1), signal.SIGKILL)",
                               "forbidden", "Operation not permitted"),  # its parent is outside its PID namespace: 1 stands in
    "signal_caller_by_pidfd": ("import os, signal\nsignal.pidfd_send_signal(os.pidfd_open({caller}), 0)",
                               *(("runtime", "No such process") if PID_NAMESPACES  # outside its PID namespace
                                 else ("forbidden", "Operation not permitted"))),
}


def test_hostile_programs_are_contained(ex, victim_db, bystander, listener, tmp_path):
    workers = {p.pid for p in psutil.Process().children() if "img2cq.sandbox.process" in " ".join(p.cmdline())}
    values = {"db": victim_db, "pid": bystander.pid, "port": listener.getsockname()[1], "outside": tmp_path,
              "caller": os.getpid(), "home": os.path.expanduser("~")}
    codes = [fill(code, values) for code, _, _ in PROGRAMS.values()]
    wrong = []
    for (name, (_, kind, expected)), r in zip(PROGRAMS.items(), ex.map(codes, mesh=False)):
        if r.ok or r.error_kind != kind or expected not in r.message:
            wrong.append(f"{name}: {r.reason or 'ok'}")
        assert_nothing_leaked(r)
    assert wrong == []
    assert list(tmp_path.iterdir()) == []
    assert not (Path(img2cq.__file__).parent / f"probe-{os.getpid()}.db").exists()
    assert select.select([listener], [], [], 0)[0] == [], "the listener saw a connection"
    assert bystander.poll() is None
    # the pool survives, with the same workers
    assert ex.run("import cadquery as cq\nsolid = cq.Workplane().box(1, 1, 1)").ok
    assert {p.pid for p in psutil.Process().children() if "img2cq.sandbox.process" in " ".join(p.cmdline())} == workers


def test_a_forged_brep_is_measured_not_believed(ex):
    """The program builds a 1x1x1 box, then hands over a 2x2x2 one with a made-up volume: the caller
    gets what the trusted child measured on that BREP (a solid the program could have built)."""
    code = ("import cadquery as cq\nsolid = cq.Workplane().box(1, 1, 1)\n" + BOX_BREP
            + FORGE.format(payload="encode({'ok': True, 'name': 'solid', 'brep': brep, 'volume': 1e6})"))
    r = ex.run(code, brep=True)
    assert r.ok, r.reason
    assert r.volume == pytest.approx(8.0)
    assert trimesh.Trimesh(r.vertices, r.faces).volume == pytest.approx(8.0)
    assert np.allclose(r.center, 0)


# Trusted functions run in a measuring child, which has no audit hook: the kernel alone refuses.
CALLS = [
    ("builtins:open", ("/etc/passwd",), "Permission denied"),
    ("os:listdir", ("/proc",), "Permission denied"),
    ("os:listdir", ("/",), "Permission denied"),
    ("sqlite3:connect", ("{db}",), "unable to open database file"),
    ("socket:create_connection", (("127.0.0.1", "{port}"), 1), "Operation not permitted"),
    ("socket:socket", (socket.AF_UNIX,), "Operation not permitted"),
    ("os:kill", (1, 0), "Operation not permitted"),  # process 1 of its PID namespace: outside its Landlock domain
    ("os:kill", ("{caller}", 0), "No such process" if PID_NAMESPACES else "Operation not permitted"),
    ("os:system", ("true",), ""),  # a shell could be started, but not executed: exit status 126/127
]


def test_the_kernel_refuses_without_the_audit_hook(ex, victim_db, listener):
    values = {"db": str(victim_db), "port": listener.getsockname()[1], "caller": os.getpid()}

    def filled(arg):
        if isinstance(arg, tuple):
            return tuple(filled(a) for a in arg)
        if isinstance(arg, str) and arg.startswith("{"):
            value = values[arg[1:-1]]
            return value if isinstance(value, str) else int(value)
        return arg

    for func, args, expected in CALLS:
        r = ex.call(func, *filled(args))
        if func == "os:system":
            assert r.ok and r.extras["value"] != 0, "a program could be executed"
            continue
        assert not r.ok and expected in r.message, f"{func}{args}: {r.reason}"
        assert_nothing_leaked(r)
    assert select.select([listener], [], [], 0)[0] == []


def test_workers_get_no_secret_environment(monkeypatch):
    """A child's memory is a copy of its worker's: the worker must not hold the caller's secrets."""
    monkeypatch.setenv("DATABASE_URL", f"postgresql://app:{SECRET}@localhost/app")
    monkeypatch.setenv("IMG2CQ_DB_PASSWORD", SECRET)
    others = set(psutil.Process().children())
    with Executor(workers=1) as fresh:
        assert fresh.run("import cadquery as cq\nsolid = cq.Workplane().box(1, 1, 1)").ok
        (worker,) = [p for p in psutil.Process().children() if p not in others]
        environment = worker.environ()
        assert SECRET not in " ".join(environment.values())
        assert "PYTHONPATH" in environment


def test_strict_isolation_is_refused_where_the_kernel_lacks_it(monkeypatch):
    monkeypatch.delenv("IMG2CQ_ISOLATION", raising=False)
    monkeypatch.setattr(confine, "landlock_abi", lambda: 3)
    with pytest.raises(SandboxUnavailable, match=r"Landlock ABI 3 .*isolation='trusted'"):
        Executor(workers=1)
    monkeypatch.setattr(confine.platform, "machine", lambda: "aarch64")
    with pytest.raises(SandboxUnavailable, match="x86_64"):
        Executor(workers=1)
    with pytest.raises(ValueError, match="isolation"):
        Executor(workers=1, isolation="lax")


def test_the_weaker_mode_is_an_explicit_choice(monkeypatch):
    """isolation="trusted" (or IMG2CQ_ISOLATION=trusted) starts without the kernel sandbox, so the
    host is visible again, and only the audit hook stands in the way."""
    monkeypatch.setattr(confine, "landlock_abi", lambda: 0)
    monkeypatch.setenv("IMG2CQ_ISOLATION", "trusted")
    with Executor(workers=1) as weak:
        assert weak.isolation == "trusted"
        r = weak.call("os:listdir", "/proc")
        assert r.ok and "self" in r.extras["value"]
        assert weak.run("import cadquery as cq\nsolid = cq.Workplane().box(1, 2, 3)").volume == pytest.approx(6.0)


def test_a_child_that_cannot_enter_its_sandbox_runs_nothing(tmp_path):
    """Fail closed: should the kernel refuse the sandbox at run time, the program does not run."""
    marker = tmp_path / "ran.db"
    code = (f"import sqlite3\nsqlite3.connect({str(marker)!r}).execute('create table t (x)')\n"
            "import cadquery as cq\nsolid = cq.Workplane().box(1, 1, 1)")
    with Executor(workers=1, preload=("tests.fixtures.broken_sandbox",)) as broken:
        r = broken.run(code)
        assert (r.ok, r.error_kind) == (False, "worker"), r.reason
        assert "could not fence itself in" in r.message
        assert not broken.call("os:getcwd").ok
    assert not marker.exists()


# --------------------------------------------------------------------------------------------
# Attacks on the sandbox itself: its memory, its limits, its clean-up, its verdicts, its output.

MARK = "PRIOR-PROGRAM-" + "7f3a91"  # the probes below never hold this text, only its two halves
BYPASS_HOOK = "import img2cq.sandbox.confine as E\nE._FORBIDDEN_EVENTS = ()\nE._PATH_EVENTS = ()\n"


@pytest.fixture
def lone():
    """One worker, so that every program runs after the previous one in the same worker."""
    with Executor(workers=1, timeout=5.0, memory_mb=3072) as executor:
        yield executor


def sandbox_processes(executor) -> list:
    """Every live process below the executor's workers."""
    return [p for pid in executor.worker_pids() for p in psutil.Process(pid).children(recursive=True)]


def test_a_program_never_sees_an_earlier_program(lone):
    secret = (f"# {MARK}\nimport cadquery as cq\nsecret = {MARK!r}\nsolid = cq.Workplane().box(1, 1, 1)\n")
    # the marker is built at run time ("a" + "b" would be folded into a constant of the probe itself)
    frames = ("import sys\nmark = '-'.join(['PRIOR', 'PROGRAM', '7f3a91'])\nf = sys._getframe()\nwhile f:\n"
              "    if 'job' in f.f_locals: raise RuntimeError(repr(f.f_locals['job']))\n"
              "    for value in list(f.f_locals.values()) + list(f.f_globals.values()):\n"
              "        if value is not mark and value is not globals() and mark in repr(value)[:10**6]:\n"
              "            raise RuntimeError(repr(value)[:3000])\n"
              "    f = f.f_back\nraise RuntimeError('no job in any frame')\n")
    reachable = ("import gc, sys\nmark = '-'.join(['PRIOR', 'PROGRAM', '7f3a91'])\nfound = []\n"
                 "for o in gc.get_objects():\n    for r in [o, *gc.get_referents(o)]:\n"
                 "        if r is not mark and isinstance(r, (str, bytes)) and (mark in r if isinstance(r, str) else mark.encode() in r):\n"
                 "            found.append(r[:3000])\n"
                 "for m in list(sys.modules.values()):\n    for v in list(vars(m).values()):\n"
                 "        if v is not mark and isinstance(v, str) and mark in v:\n            found.append(v)\n"
                 "raise RuntimeError(f'found {len(found)}: {found[:3]}')\n")
    results = lone.map([secret, frames, reachable, secret, frames, reachable], mesh=False)
    assert results[0].ok and results[3].ok
    for r in results[1:3] + results[4:]:
        assert MARK not in r.message, r.message[:300]
    assert results[1].message.startswith("RuntimeError: no job in any frame"), results[1].reason
    assert results[2].message.startswith("RuntimeError: found 0"), results[2].reason


def prlimit_others() -> list[str]:
    """Read the open-file limit of the parent and of process 1, as seen from a sandboxed child."""
    import resource

    out = []
    for pid in sorted({os.getppid(), 1} - {0}):
        try:
            resource.prlimit(pid, resource.RLIMIT_NOFILE)
            out.append(f"{pid}: read")
        except OSError as e:
            out.append(f"{pid}: errno {e.errno}")
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # its own limits stay its own to lower
    resource.getrlimit(resource.RLIMIT_NOFILE)
    return out


def raise_own_limits() -> list[str]:
    """Try to raise each of a sandboxed child's own limits by one; return those that rose."""
    import resource

    raised = []
    for name in ("RLIMIT_CPU", "RLIMIT_AS", "RLIMIT_FSIZE", "RLIMIT_NOFILE", "RLIMIT_CORE"):
        which = getattr(resource, name)
        soft, hard = resource.getrlimit(which)
        for new in ((hard, hard), (hard + 1, hard + 1)):
            try:
                resource.setrlimit(which, new)
                if resource.getrlimit(which) != (soft, hard):
                    raised.append(f"{name} {(soft, hard)} -> {new}")
            except (OSError, ValueError):
                pass
    return raised


def kernel_escapes(worker: int) -> dict[str, int]:
    """Try the system calls a confined child must not get, without Python's audit hook in the way;
    return each one's errno (0: it worked). `worker` is the worker's process id as its caller sees it."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    results = {}

    def attempt(name, number, *args):
        ctypes.set_errno(0)
        value = libc.syscall(ctypes.c_long(number), *(ctypes.c_long(a) for a in args))
        if value == 0 and name.startswith("clone"):
            os._exit(0)  # a clone that worked: its child leaves at once
        if value > 0 and name.startswith("clone"):
            os.waitpid(value, 0)
        results[name] = ctypes.get_errno() if value == -1 else 0

    newuser, newpid, newns, newnet = 0x10000000, 0x20000000, 0x00020000, 0x40000000
    attempt("unshare(NEWUSER)", 272, newuser)
    attempt("unshare(NEWNS)", 272, newns)
    attempt("unshare(NEWPID|NEWNET)", 272, newpid | newnet)
    attempt("clone(NEWUSER)", 56, newuser | 17, 0, 0, 0, 0)  # 17: SIGCHLD
    attempt("clone3", 435, 0, 0)
    attempt("setns", 308, 0, 0)
    attempt("mount", 165, 0, 0, 0, 0, 0)
    attempt("ptrace(TRACEME)", 101, 0, 0, 0, 0)
    attempt("bpf", 321, 0, 0, 0)
    attempt("perf_event_open", 298, 0, 0, -1, -1, 0)
    attempt("userfaultfd", 323, 0)
    attempt("keyctl", 250, 0, 0)
    attempt("setpriority(worker)", 141, 0, worker, 19)
    attempt("sched_setaffinity(worker)", 203, worker, 0, 0)
    attempt("execveat", 322, -1, 0, 0, 0, 0)
    return results


def visible_pids(pids: list[int]) -> list[int]:
    """Which of these process ids a sandboxed child can name (open a pidfd on)."""
    seen = []
    for pid in pids:
        try:
            os.close(os.pidfd_open(pid))
            seen.append(pid)
        except OSError:
            pass
    return seen


def test_a_child_cannot_touch_other_processes_limits_or_namespaces(lone):
    worker = psutil.Process(lone.worker_pids()[0])
    limits = worker.rlimit(psutil.RLIMIT_NOFILE)
    r = lone.call("tests.test_sandbox_hostile:prlimit_others")
    assert r.ok, r.reason
    assert all(line.endswith(f"errno {1}") for line in r.extras["value"]), r.extras["value"]  # EPERM
    r = lone.call("tests.test_sandbox_hostile:raise_own_limits")
    assert r.ok and r.extras["value"] == [], r.reason or r.extras["value"]
    r = lone.call("tests.test_sandbox_hostile:kernel_escapes", worker.pid)
    assert r.ok, r.reason
    expected = {name: 1 for name in r.extras["value"]} | {"clone3": 38}  # EPERM; ENOSYS: libc falls back to clone
    assert r.extras["value"] == expected
    # the same from a program, with the audit hook's tables emptied: the hook keeps its own copy
    program = (BYPASS_HOOK + "import os, resource\nresource.prlimit(os.getppid() or 1, resource.RLIMIT_NOFILE, (20, 20))\n"
               "raise RuntimeError('limit changed')")
    r = lone.run(program)
    assert (r.ok, r.error_kind) == (False, "forbidden"), r.reason
    assert "resource.prlimit" in r.message
    r = lone.run(BYPASS_HOOK + "import os\nos.kill(os.getpid(), 0)\nraise RuntimeError('signalled')")
    assert r.error_kind == "forbidden" and "os.kill" in r.message, r.reason
    assert worker.rlimit(psutil.RLIMIT_NOFILE) == limits and worker.nice() == psutil.Process().nice()
    assert all(p.rlimit(psutil.RLIMIT_NOFILE) == limits for p in worker.children())


@pytest.mark.skipif(not PID_NAMESPACES, reason="the executor cannot create PID namespaces here (not root)")
def test_a_child_sees_no_process_outside_its_own(lone):
    others = [os.getpid(), lone.worker_pids()[0], *(p.pid for p in sandbox_processes(lone))]
    r = lone.call("tests.test_sandbox_hostile:visible_pids", others)
    assert r.ok and r.extras["value"] == [], r.extras
    r = lone.run("import os\nraise RuntimeError(f'pid {os.getpid()} parent {os.getppid()}')")
    assert r.message.startswith("RuntimeError: pid 2 parent 0"), r.reason


# a grandchild started without any audited call (a subprocess's preexec hook runs Python in it),
# in its own session, holding the result pipe; then the worker's open-file limit is lowered
FORK_GRANDCHILD = (BYPASS_HOOK + "import _posixsubprocess, os, time\n"
                   "def linger():\n    os.setsid()\n    time.sleep(300)\n"
                   "r, w = os.pipe()\n"
                   "_posixsubprocess.fork_exec([b'/nonexistent'], [b'/nonexistent'], False, (), None, None, -1, -1, -1, -1,"
                   " -1, -1, r, w, False, False, -1, None, None, None, -1, linger, False)\n"
                   "try:\n    import resource\n    resource.prlimit(os.getppid() or 1, resource.RLIMIT_NOFILE, (4, 4))\n"
                   "except Exception:\n    pass\n"
                   "raise RuntimeError(f'workdir {os.getcwd()}')\n")


def test_a_program_that_forks_leaves_no_process(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the children's directories, and so their working directories
    with Executor(workers=1, timeout=30.0, memory_mb=3072) as executor:
        limits = psutil.Process(executor.worker_pids()[0]).rlimit(psutil.RLIMIT_NOFILE)
        started = time.monotonic()
        r = executor.run(FORK_GRANDCHILD)
        assert time.monotonic() - started < 15, r.reason  # answered when the program ended, not at the timeout
        assert (r.ok, r.error_kind, r.message) == (False, "forbidden", "left 1 process(es) running")
        deadline = time.monotonic() + 5
        while (left := processes_in(str(tmp_path))) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert left == []
        assert psutil.Process(executor.worker_pids()[0]).rlimit(psutil.RLIMIT_NOFILE) == limits
        assert executor.run("import cadquery as cq\nsolid = cq.Workplane().box(1, 1, 1)").ok  # the worker is fine
    assert processes_in(str(tmp_path)) == [] and list(tmp_path.iterdir()) == []


def processes_in(directory: str) -> list[int]:
    """Processes working in `directory` or below it."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.cwd().startswith(directory):
                found.append(p.pid)
        except (psutil.Error, OSError):
            continue
    return found


FORGED_FAILURE = "import os\nfrom img2cq.sandbox.wire import encode\nos.write(3, encode({'ok': False, 'error_kind': '{kind}', 'message': 'forged {kind}'}))\nos._exit(0)\n"


def test_failure_kinds_are_decided_by_the_trusted_side(lone):
    codes = {
        "forged timeout": FORGED_FAILURE.replace("{kind}", "timeout"),
        "forged crash": FORGED_FAILURE.replace("{kind}", "crash"),
        "forged worker": FORGED_FAILURE.replace("{kind}", "worker"),
        "own SIGXCPU": "import signal\nsignal.raise_signal(signal.SIGXCPU)\n",
        "exit status of a failed set-up": "import os\nos._exit(3)\n",
    }
    results = dict(zip(codes, lone.map(list(codes.values()))))
    for name in ("forged timeout", "forged crash", "forged worker"):
        r = results[name]
        assert (r.ok, r.error_kind) == (False, "runtime") and "forged" in r.message, f"{name}: {r.reason}"
    assert results["own SIGXCPU"].error_kind == "crash", results["own SIGXCPU"].reason
    assert results["exit status of a failed set-up"].error_kind == "exit", results["exit status of a failed set-up"].reason
    assert lone.run("import time\ntime.sleep(60)").error_kind == "timeout"


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def test_a_huge_answer_does_not_grow_the_worker(lone):
    """A well-formed frame whose JSON header holds millions of tiny objects (48 MB of text)."""
    code = ("import os, struct\nheader = b'{\"value\": {\"ok\": false, \"error_kind\": \"runtime\", \"message\": \"x\", \"pad\": ['"
            " + b'[],' * 16_000_000 + b'[]]}, \"sizes\": []}'\nview = memoryview(struct.pack('<Q', len(header)) + header)\n"
            "while view:\n    view = view[os.write(3, view):]\nos._exit(0)\n")
    worker = lone.worker_pids()[0]
    assert lone.run("import cadquery as cq\nsolid = cq.Workplane().box(1, 1, 1)").ok
    before = peak_rss_mb(worker)
    r = lone.run(code)
    assert not r.ok and r.error_kind == "crash", r.reason
    assert peak_rss_mb(worker) - before < 150


def test_error_messages_are_always_valid_utf8(lone):
    forged = "import os\nfrom img2cq.sandbox.wire import encode\nos.write(3, encode({'ok': False, 'error_kind': 'runtime', 'message': chr(0xDC80) + 'x'}))\nos._exit(0)\n"
    for code in ("raise ValueError(chr(0xD800))", forged):
        r = lone.run(code)
        assert not r.ok and r.error_kind == "runtime", r.reason
        assert r.message.encode("utf-8")
        assert "\\ud800" in r.message or "\\udc80" in r.message, r.message


def test_bytes_after_a_complete_answer_are_ignored(lone):
    code = BOX_BREP + "import os\nfrom img2cq.sandbox.wire import encode\nos.write(3, encode({'ok': True, 'name': 'solid', 'brep': brep}) + b'junk' * 1000)\nos._exit(0)\n"
    r = lone.run(code)
    assert r.ok and r.volume == pytest.approx(8.0), r.reason
