"""Safe execution of CadQuery programs: the one place where untrusted code runs.

Every program a model writes is untrusted. Each one runs in a fresh child process forked from a
long-lived worker that has already imported CadQuery (so the 2-3 s import is paid once per worker);
the worker forks each child before its job arrives, so the 10-20 ms fork is not on the caller's
clock. The child is fenced in before the program starts:

* resource limits: address space (``memory_mb``), CPU seconds, file size, open files, no core dumps;
* a wall-clock timeout enforced by the worker, which kills the child's whole process group;
* a private temporary working directory (removed afterwards), a scrubbed environment, stdin/stdout
  from /dev/null, and its own (empty) network namespace where the kernel allows it;
* a Python audit hook that refuses process creation, sockets, ctypes and writes outside the
  temporary directory, and records the attempt even if the program catches the exception.

The child sends back plain data only (a JSON header plus raw byte blobs, never a pickle), so a
hostile program cannot run code in the worker or the caller by forging its result. The worker is
a child subreaper: anything the program manages to leave behind is killed and reaped.

    with Executor(workers=2) as ex:
        result = ex.run(code)            # ExecResult
        results = ex.map(codes, progress="executing")
"""

from __future__ import annotations

import ast
import atexit
import ctypes
import importlib
import json
import math
import os
import pickle
import re
import resource
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from queue import Queue
from typing import Any, Iterable, Iterator

import numpy as np

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MEMORY_MB = 4096  # a process with CadQuery imported already maps ~1 GiB; OCC needs >= 1.5 GiB
MESH_TOLERANCE = 1e-3  # linear deflection in model units (GenCAD parts span ~1.5)
MESH_ANGULAR_TOLERANCE = 0.1  # radians
MIN_VOLUME = 1e-9
RESULT_NAMES = ("solid", "result", "shape", "part", "model", "body", "obj", "r")
ERROR_KINDS = (
    "syntax", "runtime", "timeout", "memory", "crash", "exit", "forbidden",
    "no_result", "empty", "invalid_shape", "worker",
)


@dataclass
class ExecResult:
    """What running one program (or one sandboxed call) produced."""

    ok: bool
    error_kind: str | None = None
    message: str = ""
    volume: float | None = None
    center: np.ndarray | None = None
    inertia: np.ndarray | None = None
    vertices: np.ndarray | None = None
    faces: np.ndarray | None = None
    brep: bytes | None = None
    extras: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)

    @property
    def reason(self) -> str:
        """`kind: message` for reports; empty when ok."""
        return "" if self.ok else f"{self.error_kind}: {self.message}"


def clean_code(code: str) -> str:
    """Strip Markdown code fences and common indentation, as models emit them."""
    fenced = re.search(r"```[ \t]*(?:python|py)?[ \t]*\n(.*?)(?:```|\Z)", code, re.S)
    if fenced:
        code = fenced.group(1)
    return textwrap.dedent(code).strip() + "\n"


# --------------------------------------------------------------------------------------------
# Result wire format: JSON header + raw blobs. Decoding never unpickles anything.

_BLOB_DTYPES = {"float64", "float32", "int64", "int32", "uint8", "bool"}


def _encode(value: Any) -> bytes:
    blobs: list[bytes] = []

    def pack(v):
        if isinstance(v, np.ndarray):
            if v.dtype.name not in _BLOB_DTYPES:
                v = v.astype(np.float64)
            blobs.append(np.ascontiguousarray(v).tobytes())
            return {"__array__": len(blobs) - 1, "dtype": v.dtype.name, "shape": list(v.shape)}
        if isinstance(v, (bytes, bytearray)):
            blobs.append(bytes(v))
            return {"__bytes__": len(blobs) - 1}
        if isinstance(v, dict):
            return {"__dict__": [[str(k), pack(x)] for k, x in v.items()]}
        if isinstance(v, (list, tuple)):
            return [pack(x) for x in v]
        if isinstance(v, (np.floating, np.integer, np.bool_)):
            return v.item()
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        raise TypeError(f"cannot send a {type(v).__name__} out of the sandbox")

    header = json.dumps({"value": pack(value), "sizes": [len(b) for b in blobs]}).encode()
    return struct.pack("<Q", len(header)) + header + b"".join(blobs)


def _decode(data: bytes) -> Any:
    (n,) = struct.unpack_from("<Q", data, 0)
    header = json.loads(data[8 : 8 + n])
    blobs, offset = [], 8 + n
    for size in header["sizes"]:
        blobs.append(data[offset : offset + size])
        offset += size
    if offset != len(data):
        raise ValueError("result size mismatch")

    def unpack(v):
        if isinstance(v, list):
            return [unpack(x) for x in v]
        if isinstance(v, dict):
            if "__array__" in v:
                if v["dtype"] not in _BLOB_DTYPES:
                    raise ValueError("bad dtype")
                return np.frombuffer(blobs[v["__array__"]], dtype=v["dtype"]).reshape(v["shape"]).copy()
            if "__bytes__" in v:
                return blobs[v["__bytes__"]]
            return {k: unpack(x) for k, x in v["__dict__"]}
        return v

    return unpack(header["value"])


# --------------------------------------------------------------------------------------------
# Inside the sandboxed child.

class SandboxViolation(Exception):
    """Raised by the audit hook when a program does something it may not."""


_FORBIDDEN_EVENTS = (
    "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "os.kill",
    "os.killpg", "subprocess.Popen", "pty.spawn", "socket.", "ctypes.", "signal.pthread_kill",
    "os.setuid", "os.setgid", "resource.setrlimit", "resource.prlimit",
)
_PATH_EVENTS = (
    "os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.symlink",
    "os.link", "os.truncate", "os.utime", "os.chflags", "shutil.rmtree", "shutil.copyfile",
    "shutil.move",
)
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _install_audit_hook(workdir: str, violations: list[str]) -> None:
    """Refuse process creation, sockets, ctypes and writes outside `workdir`; remember each try."""
    root = os.path.realpath(workdir) + os.sep

    def inside(path) -> bool:
        if isinstance(path, int):  # an fd the program already holds
            return True
        try:
            path = os.fsdecode(path)
        except TypeError:
            return False
        return (os.path.realpath(path) + os.sep).startswith(root)

    def hook(event: str, args: tuple) -> None:
        if event.startswith(_FORBIDDEN_EVENTS):
            violations.append(event)
            raise SandboxViolation(f"{event} is not allowed in a CadQuery program")
        if event == "open" and args:
            path, mode, flags = (tuple(args) + (None, None))[:3]
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & _WRITE_FLAGS
            )
            if writing and not inside(path):
                violations.append(f"write to {path}")
                raise SandboxViolation(f"writing {path} is not allowed (outside the sandbox)")
        elif event.startswith(_PATH_EVENTS) and args and not all(
            inside(a) for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))
        ):
            violations.append(f"{event} {args[0]}")
            raise SandboxViolation(f"{event} outside the sandbox is not allowed")

    sys.addaudithook(hook)


def _detach_from_worker() -> None:
    """First steps of a freshly forked child, before its job is known."""
    os.setsid()  # own process group: the worker kills it whole
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG: die with the worker
    libc.unshare(0x40000000)  # CLONE_NEWNET: no network at all where permitted (else the hook refuses sockets)


def _enter_sandbox(workdir: str, timeout: float, memory_mb: int) -> None:
    """Fence this process in before it touches untrusted code (after _detach_from_worker)."""
    cpu = int(math.ceil(timeout)) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 20, 64 << 20))
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # oversize writes fail with an error instead
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.environ.clear()
    os.environ.update({"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8"})
    os.chdir(workdir)
    tempfile.tempdir = workdir


def _pick_result(namespace: dict, tree: ast.Module):
    """The result object: `solid` (GenCAD), then other common names, then the last assigned shape."""
    import cadquery as cq

    shape_types = (cq.Workplane, cq.Shape)
    for name in RESULT_NAMES:
        if isinstance(namespace.get(name), shape_types):
            return name, namespace[name]
    assigned = [
        target.id
        for node in tree.body
        if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign))
        for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
        if isinstance(target, ast.Name)
    ]
    for name in reversed(assigned):
        if isinstance(namespace.get(name), shape_types):
            return name, namespace[name]
    return None, None


def _solids_of(obj):
    """Reduce a Workplane or Shape to one Shape made of its solids (None if it has none)."""
    import cadquery as cq

    items = obj.vals() if isinstance(obj, cq.Workplane) else [obj]
    solids = [s for item in items if isinstance(item, cq.Shape) for s in item.Solids()]
    if not solids:
        return None
    return solids[0] if len(solids) == 1 else cq.Compound.makeCompound(solids)


def _mass_properties(shape) -> tuple[float, np.ndarray, np.ndarray]:
    from OCP.BRepGProp import BRepGProp
    from OCP.GProp import GProp_GProps

    props = GProp_GProps()
    BRepGProp.VolumeProperties_s(shape.wrapped, props)
    c = props.CentreOfMass()
    m = props.MatrixOfInertia()
    inertia = np.array([[m.Value(i, j) for j in (1, 2, 3)] for i in (1, 2, 3)])
    return props.Mass(), np.array([c.X(), c.Y(), c.Z()]), inertia


def mesh_arrays(shape, tolerance: float = MESH_TOLERANCE, angular: float = MESH_ANGULAR_TOLERANCE):
    """Triangulate a shape into (vertices, faces) with vertices shared across faces (watertight)."""
    from OCP.BRepMesh import BRepMesh_IncrementalMesh

    # serial meshing: OCC thread pools must never exist in a worker before it forks
    BRepMesh_IncrementalMesh(shape.wrapped, tolerance, False, angular, False)
    verts, tris = shape.tessellate(tolerance, angular)
    v = np.array([(p.x, p.y, p.z) for p in verts], dtype=np.float64).reshape(-1, 3)
    f = np.array(tris, dtype=np.int64).reshape(-1, 3)
    unique, inverse = np.unique(np.round(v, 9), axis=0, return_inverse=True)
    f = inverse.reshape(-1)[f]
    keep = (f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])
    return unique, f[keep]


def _resolve(dotted: str):
    module, _, name = dotted.partition(":")
    return getattr(importlib.import_module(module), name)


def _run_program_in_child(code: str, opts: dict, violations: list[str]) -> dict:
    """Execute one program and describe its result solid as plain data."""
    t0 = time.perf_counter()
    try:
        tree = ast.parse(code, "<program>")
        compiled = compile(tree, "<program>", "exec")
    except SyntaxError as e:
        return {"ok": False, "error_kind": "syntax", "message": f"line {e.lineno}: {e.msg}"}
    namespace: dict = {"__name__": "__main__"}
    try:
        exec(compiled, namespace)
    except SandboxViolation as e:
        return {"ok": False, "error_kind": "forbidden", "message": str(e)}
    except MemoryError:
        return {"ok": False, "error_kind": "memory", "message": "out of memory (address-space limit)"}
    except SystemExit as e:
        return {"ok": False, "error_kind": "exit", "message": f"program called exit({e.code!r})"}
    except BaseException as e:  # noqa: BLE001 - any failure of untrusted code is a result
        line = next((f.lineno for f in reversed(_tb_frames(e)) if f.filename == "<program>"), None)
        where = f" (line {line})" if line else ""
        return {"ok": False, "error_kind": "runtime", "message": f"{type(e).__name__}: {e}{where}"[:500]}
    exec_s = time.perf_counter() - t0
    if violations:
        return {"ok": False, "error_kind": "forbidden", "message": f"attempted {violations[0]}"}
    name, obj = _pick_result(namespace, tree)
    if obj is None:
        return {"ok": False, "error_kind": "no_result", "message": "no Workplane or Shape result (expected `solid`)"}
    shape = _solids_of(obj)
    if shape is None:
        return {"ok": False, "error_kind": "empty", "message": f"`{name}` holds no solid"}
    if not shape.isValid():
        return {"ok": False, "error_kind": "invalid_shape", "message": f"`{name}` fails the B-rep validity check"}
    volume, center, inertia = _mass_properties(shape)
    if not volume > MIN_VOLUME:
        return {"ok": False, "error_kind": "empty", "message": f"`{name}` has zero volume"}
    out = {"ok": True, "error_kind": None, "message": "", "volume": volume, "center": center,
           "inertia": inertia, "timings": {"exec": exec_s}}
    if opts.get("mesh"):
        out["vertices"], out["faces"] = mesh_arrays(shape)
    if opts.get("brep"):
        out["brep"] = _brep_bytes(shape)
    if opts.get("postprocess"):
        out["extras"] = {"value": _resolve(opts["postprocess"])(shape, **(opts.get("postprocess_kwargs") or {}))}
    return out


def _tb_frames(e: BaseException):
    import traceback

    return traceback.extract_tb(e.__traceback__)


def _brep_bytes(shape) -> bytes:
    import io

    buffer = io.BytesIO()
    shape.exportBrep(buffer)
    return buffer.getvalue()


def _child_main(job_fd: int, workdir: str, write_fd: int) -> None:
    """Body of the forked child: wait for the job, fence in, run it, write the result; never returns."""
    status = 0
    try:
        _detach_from_worker()
        with os.fdopen(job_fd, "rb") as f:
            job, timeout, memory_mb = pickle.load(f)  # from the trusted worker, before any untrusted code
        _enter_sandbox(workdir, timeout, memory_mb)
        violations: list[str] = []
        _install_audit_hook(workdir, violations)
        kind, payload = job
        try:
            if kind == "program":
                code, opts = payload
                out = _run_program_in_child(code, opts, violations)
            else:
                func, args = payload
                out = {"ok": True, "extras": {"value": _resolve(func)(*args)}}
        except MemoryError:
            out = {"ok": False, "error_kind": "memory", "message": "out of memory (address-space limit)"}
        except BaseException as e:  # noqa: BLE001
            out = {"ok": False, "error_kind": "runtime", "message": f"{type(e).__name__}: {e}"[:500]}
        data = _encode(out)
        view = memoryview(data)
        while view:
            view = view[os.write(write_fd, view):]
    except BaseException:  # noqa: BLE001 - the worker reports a missing result
        status = 1
    os._exit(status)


# --------------------------------------------------------------------------------------------
# The worker: a long-lived process with CadQuery imported that forks one child per job.

def _children() -> list[int]:
    """Direct children of this process (the kernel lists them per thread)."""
    pids = []
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/children") as f:
                pids += [int(p) for p in f.read().split()]
        except OSError:
            continue
    return pids


def _kill_leftovers() -> int:
    """Kill and reap every process re-parented to this (subreaper) worker; return how many."""
    count = 0
    while True:
        pids = _children()
        if not pids:
            return count
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                count += 1
            except (ProcessLookupError, ChildProcessError):
                pass


class _SpareChild:
    """A sandbox child forked ahead of its job.

    Forking a process that has CadQuery loaded costs 10-20 ms; the worker forks the next child
    while it would otherwise wait for work, so that cost is off the caller's clock.
    """

    def __init__(self):
        self.workdir = tempfile.mkdtemp(prefix="img2cq-run-")
        job_r, self.job_w = os.pipe()
        self.result_r, result_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            os.close(self.job_w)
            os.close(self.result_r)
            _child_main(job_r, self.workdir, result_w)
        os.close(job_r)
        os.close(result_w)

    def run(self, job: tuple, timeout: float, memory_mb: int) -> tuple[bytes | None, str]:
        """Hand the job over and collect its result; return (raw result or None, why it is missing)."""
        deadline = time.monotonic() + timeout
        try:
            with os.fdopen(self.job_w, "wb") as f:
                pickle.dump((job, timeout, memory_mb), f)
        except BrokenPipeError:  # the child died before its job (reported from its exit status)
            pass
        chunks, timed_out = [], False
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    timed_out = True
                    break
                ready, _, _ = select.select([self.result_r], [], [], remaining)
                if not ready:
                    continue
                chunk = os.read(self.result_r, 1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
        finally:
            status, leftovers = self._reap()
        if timed_out:
            return None, f"timeout: exceeded {timeout:g} s wall time"
        if chunks and not leftovers:
            return b"".join(chunks), ""
        if leftovers:
            return None, f"forbidden: left {leftovers} process(es) running"
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            if sig == signal.SIGXCPU:
                return None, "timeout: exceeded the CPU-time limit"
            name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
            return None, f"crash: killed by {name}"
        return None, f"exit: process exited with status {os.WEXITSTATUS(status)} before reporting a result"

    def discard(self) -> None:
        """Kill an unused spare (the worker is closing)."""
        os.close(self.job_w)
        self._reap()

    def _reap(self) -> tuple[int, int]:
        """Kill the child's process group, reap it and anything it left; remove its directory."""
        os.close(self.result_r)
        for kill, target in ((os.killpg, self.pid), (os.kill, self.pid)):  # the group, and the child if not yet its leader
            try:
                kill(target, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _, status = os.waitpid(self.pid, 0)
        leftovers = _kill_leftovers()
        shutil.rmtree(self.workdir, ignore_errors=True)
        return status, leftovers


def _warm_up() -> None:
    """Run the trusted result pipeline once so lazy imports and OCC set-up are inherited by children."""
    import cadquery as cq

    shape = _solids_of(cq.Workplane().box(1, 1, 1))  # no booleans: OCC thread pools must not exist before fork
    shape.isValid()
    _mass_properties(shape)
    mesh_arrays(shape)
    _brep_bytes(shape)
    _encode({"a": np.zeros(3), "b": b""})


def _worker_main(read_fd: int, write_fd: int, preload: list[str]) -> None:
    """Serve jobs from the parent until it closes the pipe."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: orphans of our children come back to us
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG: go when the caller goes
    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    import cadquery  # noqa: F401 - paid once here, inherited by every forked child

    for module in preload:
        importlib.import_module(module)
    _warm_up()
    conn_in, conn_out = Connection(read_fd, writable=False), Connection(write_fd, readable=False)
    spare = _SpareChild()
    try:
        conn_out.send("ready")
        while True:
            job, timeout, memory_mb = conn_in.recv()
            started = time.perf_counter()
            data, why = spare.run(job, timeout, memory_mb)
            spare = None
            conn_out.send((data, why, time.perf_counter() - started))
            spare = _SpareChild()
    except (EOFError, BrokenPipeError):  # the caller closed the executor
        if spare is not None:
            spare.discard()


class _Worker:
    """Handle on one worker process (the caller's side)."""

    def __init__(self, preload: tuple[str, ...]):
        to_worker_r, to_worker_w = os.pipe()
        from_worker_r, from_worker_w = os.pipe()
        env = {k: v for k, v in os.environ.items() if not _looks_secret(k)}
        env["PYTHONPATH"] = os.pathsep.join(p for p in [_repo_root(), env.get("PYTHONPATH", "")] if p)
        self.process = subprocess.Popen(
            [sys.executable, "-c", "import sys, img2cq.executor as e; e._worker_main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:])",
             str(to_worker_r), str(from_worker_w), *preload],
            pass_fds=(to_worker_r, from_worker_w), stdin=subprocess.DEVNULL, env=env, close_fds=True,
        )
        os.close(to_worker_r)
        os.close(from_worker_w)
        self.send = Connection(to_worker_w, readable=False)
        self.recv = Connection(from_worker_r, writable=False)
        self.ready = False

    def wait_ready(self, limit: float) -> None:
        if not self.ready:
            if not self.recv.poll(limit) or self.recv.recv() != "ready":
                raise RuntimeError("executor worker failed to start (is cadquery installed?)")
            self.ready = True

    def close(self) -> None:
        for conn in (self.send, self.recv):
            conn.close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _looks_secret(name: str) -> bool:
    return bool(re.search(r"TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|CREDENTIAL|AWS_|HF_", name, re.I))


def _repo_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Executor:
    """A pool of preloaded workers that run programs in sandboxed children. Thread-safe."""

    def __init__(self, workers: int = 1, timeout: float = DEFAULT_TIMEOUT_S,
                 memory_mb: int = DEFAULT_MEMORY_MB, preload: Iterable[str] = ()):
        if workers < 1:
            raise ValueError("workers must be >= 1")
        if timeout <= 0:
            raise ValueError("timeout must be > 0")
        self.workers, self.timeout, self.memory_mb = workers, float(timeout), int(memory_mb)
        self.preload = tuple(preload)
        self._idle: Queue[_Worker] = Queue()
        self._all: list[_Worker] = []
        self._lock = threading.Lock()
        self._closed = False
        for _ in range(workers):
            self._add_worker()

    def _add_worker(self) -> None:
        worker = _Worker(self.preload)
        with self._lock:
            self._all.append(worker)
        self._idle.put(worker)

    def _retire(self, worker: _Worker) -> None:
        worker.process.kill()
        worker.close()
        with self._lock:
            self._all.remove(worker)

    def _submit(self, job: tuple, timeout: float | None) -> ExecResult:
        if self._closed:
            raise RuntimeError("executor is closed")
        timeout = self.timeout if timeout is None else float(timeout)
        started = time.perf_counter()
        worker = self._idle.get()
        try:
            worker.wait_ready(60.0)
            worker.send.send((job, timeout, self.memory_mb))
            if not worker.recv.poll(timeout + 30.0):  # the worker enforces `timeout`; this is a backstop
                raise EOFError("worker stopped answering")
            data, why, _ = worker.recv.recv()
        except (EOFError, OSError, RuntimeError) as e:
            self._retire(worker)
            self._add_worker()
            return ExecResult(ok=False, error_kind="worker", message=f"executor worker failed: {e}",
                              timings={"total": time.perf_counter() - started})
        self._idle.put(worker)
        return _result_from(data, why, time.perf_counter() - started)

    def run(self, code: str, *, mesh: bool = True, brep: bool = False, postprocess: str | None = None,
            postprocess_kwargs: dict | None = None, timeout: float | None = None) -> ExecResult:
        """Run one program; never raises for anything the program does."""
        if not isinstance(code, str):
            return ExecResult(ok=False, error_kind="syntax", message=f"program must be a string, got {type(code).__name__}")
        opts = {"mesh": mesh, "brep": brep, "postprocess": postprocess, "postprocess_kwargs": postprocess_kwargs}
        return self._submit(("program", (clean_code(code), opts)), timeout)

    def call(self, func: str, *args, timeout: float | None = None) -> ExecResult:
        """Run a trusted function "module:name" on plain-data args in a sandboxed child."""
        return self._submit(("call", (func, args)), timeout)

    def imap_unordered(self, codes: Iterable[str], *, progress: bool | str = False,
                       **kwargs) -> Iterator[tuple[int, ExecResult]]:
        """Yield (index, result) as programs finish, `workers` at a time."""
        codes = list(codes)
        bar = _progress_bar(len(codes), progress)
        with ThreadPoolExecutor(self.workers) as threads:
            futures = {threads.submit(self.run, code, **kwargs): i for i, code in enumerate(codes)}
            try:
                for future in as_completed(futures):
                    if bar:
                        bar.update(1)
                    yield futures[future], future.result()
            finally:
                for future in futures:
                    future.cancel()
                if bar:
                    bar.close()

    def map(self, codes: Iterable[str], *, progress: bool | str = False, **kwargs) -> list[ExecResult]:
        """Run programs in parallel; results in input order."""
        codes = list(codes)
        results: list[ExecResult | None] = [None] * len(codes)
        for i, result in self.imap_unordered(codes, progress=progress, **kwargs):
            results[i] = result
        return results  # type: ignore[return-value]

    def close(self) -> None:
        self._closed = True
        with self._lock:
            workers = list(self._all)
            self._all.clear()
        for worker in workers:
            worker.close()

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _progress_bar(total: int, progress: bool | str):
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=progress if isinstance(progress, str) else "executing", unit="prog")


def _result_from(data: bytes | None, why: str, total_s: float) -> ExecResult:
    if data is None:
        kind, _, message = why.partition(": ")
        return ExecResult(ok=False, error_kind=kind, message=message, timings={"total": total_s})
    try:
        fields = _decode(data)
        result = ExecResult(**{k: v for k, v in fields.items() if k in ExecResult.__dataclass_fields__})
        if not isinstance(result.ok, bool):
            raise ValueError("bad result")
    except (ValueError, TypeError, KeyError, struct.error, json.JSONDecodeError) as e:
        return ExecResult(ok=False, error_kind="crash", message=f"malformed result from the sandbox ({e})",
                          timings={"total": total_s})
    result.timings = {**(result.timings or {}), "total": total_s}
    result.extras = result.extras or {}
    return result


# --------------------------------------------------------------------------------------------
# Convenience: a lazily created shared executor.

_default: Executor | None = None
_default_lock = threading.Lock()


def default_executor() -> Executor:
    """One shared single-worker executor per process, closed at exit."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Executor(workers=1)
            atexit.register(_default.close)
        return _default


def run_program(code: str, **kwargs) -> ExecResult:
    return default_executor().run(code, **kwargs)


def run_programs(codes: Iterable[str], workers: int | None = None, progress: bool | str = False,
                 **kwargs) -> list[ExecResult]:
    """Run many programs on a temporary pool (`workers` defaults to the CPU count)."""
    with Executor(workers=workers or os.cpu_count() or 1) as ex:
        return ex.map(codes, progress=progress, **kwargs)
