"""Safe execution of CadQuery programs: the one place where untrusted code runs.

Every program a model writes is untrusted. A pool of long-lived workers imports CadQuery once (the
2-3 s import is paid once per worker); each program then runs in two fresh children forked from a
worker, both forked ahead of their job so the 10-20 ms fork is off the caller's clock:

1. the *program child* runs the program and hands back only the BREP of its result solid, or its
   error;
2. the *measuring child* runs no untrusted code: it reads that BREP and computes all the caller
   gets (validity, volume, centre, inertia, mesh, BREP bytes, the ``postprocess`` value). A
   program that forges its output can at worst hand over a solid it could have built anyway.

Every child is fenced in before it touches its job (``isolation="strict"``, the default):

* in the kernel: Landlock lets it read only the Python installation and its packages, this
  project's ``img2cq/`` and ``metrics/`` packages, the shared libraries, ``/dev/null`` and
  ``/dev/urandom``, and write only its private temporary directory (no ``/proc``, ``/etc``,
  ``/tmp``, home directories or databases), and neither bind nor connect TCP, signal processes
  outside itself nor reach their abstract unix sockets; a seccomp filter refuses sockets of any
  family (pathname unix sockets are beyond Landlock's reach), System V and POSIX message-queue
  IPC, the kernel keyrings and io_uring; it holds no capabilities and can gain none;
* every inherited descriptor is closed but its result pipe; stdio is /dev/null; the environment is
  scrubbed (and the worker itself only ever gets the variables Python, OCC, BLAS and GL read);
* resource limits: address space (``memory_mb``), CPU seconds, file size, open files, no core dumps;
  the worker enforces the wall-clock timeout, kills the child's process group and, being a child
  subreaper, anything left behind;
* a Python audit hook in the program child refuses process creation, sockets, ctypes and writes
  outside its directory, and marks the program ``forbidden`` even if it catches the exception.

Where the kernel cannot do its part (Landlock ABI < 6, no seccomp, not x86_64 Linux), ``Executor``
refuses to start unless the caller opts into ``isolation="trusted"`` (or ``IMG2CQ_ISOLATION=trusted``):
everything above but the kernel sandbox, for programs one trusts. Children send back plain data
(a JSON header plus raw byte blobs, never a pickle).

    with Executor(workers=2) as ex:
        result = ex.run(code)            # ExecResult
        results = ex.map(codes, progress="executing")
"""

from __future__ import annotations

import ast
import atexit
import ctypes
import errno
import functools
import importlib
import io
import json
import math
import os
import pickle
import platform
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
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from img2cq.geometry import METRIC_MESH_ANGULAR, METRIC_MESH_TOLERANCE, MIN_SOLID_VOLUME

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MEMORY_MB = 4096  # a process with CadQuery imported already maps ~1 GiB; OCC needs >= 1.5 GiB
MAX_BREP_BYTES = 64 << 20  # a program child's output beyond this is refused unread
RESULT_NAMES = ("solid", "result", "shape", "part", "model", "body", "obj", "r")
ERROR_KINDS = (
    "syntax", "runtime", "timeout", "memory", "crash", "exit", "forbidden",
    "no_result", "empty", "invalid_shape", "worker",
)
ISOLATION_MODES = ("strict", "trusted")
ISOLATION_ENV = "IMG2CQ_ISOLATION"


class SandboxUnavailable(RuntimeError):
    """The kernel cannot confine untrusted programs here (and the caller did not opt out)."""


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
# The kernel sandbox (strict isolation): Landlock for files, TCP and signals, seccomp for the
# rest, no capabilities. Linux x86_64 system-call numbers and constants from the kernel's uapi.

LANDLOCK_ABI_NEEDED = 6  # Linux 6.12: scoping of signals and abstract unix sockets
_SYS_CAPSET, _SYS_LANDLOCK_CREATE_RULESET, _SYS_LANDLOCK_ADD_RULE, _SYS_LANDLOCK_RESTRICT_SELF = 126, 444, 445, 446
_PR_SET_PDEATHSIG, _PR_GET_SECCOMP, _PR_SET_SECCOMP, _PR_SET_CHILD_SUBREAPER, _PR_SET_NO_NEW_PRIVS = 1, 21, 22, 36, 38

_FS_EXECUTE, _FS_WRITE_FILE, _FS_READ_FILE, _FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_FS_REMOVE_DIR, _FS_REMOVE_FILE, _FS_MAKE_DIR, _FS_MAKE_REG = 1 << 4, 1 << 5, 1 << 7, 1 << 8
_FS_REFER, _FS_TRUNCATE, _FS_IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
_FS_ALL = (1 << 16) - 1  # every right Landlock ABI >= 5 knows: each is denied unless a rule grants it
_FS_FILE_RIGHTS = _FS_EXECUTE | _FS_WRITE_FILE | _FS_READ_FILE | _FS_TRUNCATE | _FS_IOCTL_DEV
_FS_READ = _FS_READ_FILE | _FS_READ_DIR
_FS_PRIVATE = (_FS_READ | _FS_WRITE_FILE | _FS_REMOVE_DIR | _FS_REMOVE_FILE | _FS_MAKE_DIR | _FS_MAKE_REG
               | _FS_REFER | _FS_TRUNCATE)  # the child's own directory: no devices, fifos, sockets, symlinks, exec
_NET_ALL = 0b11  # TCP bind and connect
_SCOPE_ALL = 0b11  # abstract unix sockets and signals outside the sandbox

# Refused with EPERM by the seccomp filter (x86_64 numbers).
_DENIED_SYSCALLS = {
    "socket": 41, "socketpair": 53,  # every family: pathname unix sockets (a database's, say) and UDP
    "shmget": 29, "shmat": 30, "shmctl": 31, "semget": 64, "semop": 65, "semctl": 66, "semtimedop": 220,
    "msgget": 68, "msgsnd": 69, "msgrcv": 70, "msgctl": 71, "mq_open": 240,  # IPC named outside any path
    "add_key": 248, "request_key": 249, "keyctl": 250,  # the kernel keyrings
    "io_uring_setup": 425,  # its operations (sockets among them) bypass seccomp
}
_AUDIT_ARCH_X86_64, _X32_SYSCALL_BIT = 0xC000003E, 0x40000000


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


@functools.cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def _syscall(number: int, *args) -> int:
    """A raw system call; raises OSError where it fails."""
    args = tuple(ctypes.c_long(a) if isinstance(a, int) else a for a in args)
    result = _libc().syscall(ctypes.c_long(number), *args)
    if result == -1:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return result


def _prctl(option: int, value: int = 0) -> None:
    if _libc().prctl(option, ctypes.c_ulong(value), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0)) == -1:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def _landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 where Landlock is missing or disabled."""
    try:
        return _syscall(_SYS_LANDLOCK_CREATE_RULESET, None, 0, 1)  # LANDLOCK_CREATE_RULESET_VERSION
    except OSError:
        return 0


def strict_isolation_problem() -> str | None:
    """Why the kernel here cannot confine untrusted programs (None if it can)."""
    if sys.platform != "linux" or platform.machine() != "x86_64":
        return f"the kernel sandbox is implemented for Linux on x86_64, not {sys.platform} on {platform.machine()}"
    abi = _landlock_abi()
    if abi < LANDLOCK_ABI_NEEDED:
        return (f"the kernel offers Landlock ABI {abi} (0: missing or disabled), and ABI {LANDLOCK_ABI_NEEDED} "
                "(Linux 6.12 or later with landlock among its LSMs) is needed")
    if _libc().prctl(_PR_GET_SECCOMP, 0, 0, 0, 0) == -1:
        return "the kernel has no seccomp"
    return None


@functools.cache
def _sandbox_rules() -> tuple[tuple[str, int], ...]:
    """(path, Landlock rights) a sandboxed child may use besides its private directory."""
    import site
    import sysconfig

    paths = sysconfig.get_paths()
    readable = {paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    readable |= {*site.getsitepackages(), sysconfig.get_config_var("LIBDIR") or ""}
    readable |= {os.path.join(_repo_root(), "img2cq"), os.path.join(_repo_root(), "metrics")}  # not the root: databases live there
    readable |= {"/lib", "/lib64", "/usr/lib", "/usr/lib64", "/usr/local/lib"}  # shared libraries
    rules = [(path, _FS_READ) for path in sorted(readable) if path and os.path.isdir(path)]
    return (*rules, (os.devnull, _FS_READ_FILE | _FS_WRITE_FILE), ("/dev/urandom", _FS_READ_FILE))


@functools.cache
def _seccomp_filter() -> bytes:
    """BPF program: kill other architectures, refuse the x32 ABI and _DENIED_SYSCALLS, allow the rest."""
    load, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, BPF_JMP|JGE|K, BPF_RET|K
    allow, deny, kill = 0x7FFF0000, 0x00050000 | errno.EPERM, 0x80000000
    numbers = sorted(_DENIED_SYSCALLS.values())
    n = len(numbers)
    program = [(load, 0, 0, 4), (jeq, 1, 0, _AUDIT_ARCH_X86_64), (ret, 0, 0, kill),  # seccomp_data.arch
               (load, 0, 0, 0), (jge, n + 1, 0, _X32_SYSCALL_BIT)]  # seccomp_data.nr
    program += [(jeq, n - i, 0, number) for i, number in enumerate(numbers)]
    program += [(ret, 0, 0, allow), (ret, 0, 0, deny)]
    return b"".join(struct.pack("<HBBI", *instruction) for instruction in program)


def _lock_down(workdir: str) -> None:
    """Enter the kernel sandbox; irreversible, and inherited by anything this process starts."""
    _prctl(_PR_SET_NO_NEW_PRIVS, 1)
    _syscall(_SYS_CAPSET, ctypes.byref(_CapHeader(0x20080522, 0)), (ctypes.c_uint32 * 6)())  # no capabilities
    bpf = _seccomp_filter()
    program = _SockFprog(len(bpf) // 8, bpf)
    if _libc().prctl(_PR_SET_SECCOMP, ctypes.c_ulong(2), ctypes.byref(program), ctypes.c_ulong(0),
                     ctypes.c_ulong(0)) == -1:  # SECCOMP_MODE_FILTER
        code = ctypes.get_errno()
        raise OSError(code, f"seccomp: {os.strerror(code)}")
    attr = _RulesetAttr(_FS_ALL, _NET_ALL, _SCOPE_ALL)
    ruleset = _syscall(_SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.sizeof(attr), 0)
    try:
        for path, rights in (*_sandbox_rules(), (workdir, _FS_PRIVATE)):
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                if not os.path.isdir(path):
                    rights &= _FS_FILE_RIGHTS
                rule = _PathBeneathAttr(rights, fd)
                _syscall(_SYS_LANDLOCK_ADD_RULE, ruleset, 1, ctypes.byref(rule), 0)  # LANDLOCK_RULE_PATH_BENEATH
            finally:
                os.close(fd)
        _syscall(_SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0)
    finally:
        os.close(ruleset)


# --------------------------------------------------------------------------------------------
# Inside the sandboxed children.

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


_RESULT_FD = 3  # a child's result pipe, once every other descriptor is closed
_SETUP_FAILED = 3  # exit status of a child that could not fence itself in (it ran nothing)


def _enter_sandbox(workdir: str, timeout: float, memory_mb: int, result_fd: int, isolation: str) -> None:
    """Fence this process in before it runs its job: limits, stdio, descriptors, environment, and
    (strict isolation) the kernel sandbox. Afterwards the result pipe is descriptor _RESULT_FD."""
    cpu = int(math.ceil(timeout)) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 20, 64 << 20))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # oversize writes fail with an error instead
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    if result_fd != _RESULT_FD:
        os.dup2(result_fd, _RESULT_FD)
    for name in os.listdir("/proc/self/fd"):  # the worker's pipes, the other spare's, any library's
        if int(name) > _RESULT_FD:
            try:
                os.close(int(name))
            except OSError:  # the descriptor listdir itself used
                pass
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
    os.environ.clear()
    os.environ.update({"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8"})
    os.chdir(workdir)
    tempfile.tempdir = workdir
    sys.dont_write_bytecode = True  # imports never try to write next to the read-only sources
    if isolation == "strict":
        _lock_down(workdir)


def _failure(kind: str, message: str) -> dict:
    return {"ok": False, "error_kind": kind, "message": message}


def _run_program(code: str, workdir: str) -> dict:
    """Untrusted: execute one program and hand over the BREP of its result solid (or its error)."""
    violations: list[str] = []
    _install_audit_hook(workdir, violations)
    try:
        tree = ast.parse(code, "<program>")
        compiled = compile(tree, "<program>", "exec")
    except SyntaxError as e:
        return _failure("syntax", f"line {e.lineno}: {e.msg}")
    namespace: dict = {"__name__": "__main__"}
    try:
        exec(compiled, namespace)
    except SandboxViolation as e:
        return _failure("forbidden", str(e))
    except MemoryError:
        return _failure("memory", "out of memory (address-space limit)")
    except SystemExit as e:
        return _failure("exit", f"program called exit({e.code!r})")
    except BaseException as e:  # noqa: BLE001 - any failure of untrusted code is a result
        line = next((f.lineno for f in reversed(_tb_frames(e)) if f.filename == "<program>"), None)
        where = f" (line {line})" if line else ""
        # the kernel sandbox answers what it refuses with EACCES or EPERM
        kind = "forbidden" if isinstance(e, PermissionError) else "runtime"
        return _failure(kind, f"{type(e).__name__}: {e}{where}"[:500])
    if violations:
        return _failure("forbidden", f"attempted {violations[0]}")
    name, obj = _pick_result(namespace, tree)
    if obj is None:
        return _failure("no_result", "no Workplane or Shape result (expected `solid`)")
    shape = _solids_of(obj)
    if shape is None:
        return _failure("empty", f"`{name}` holds no solid")
    return {"ok": True, "name": name, "brep": _brep_bytes(shape)}


def _measure(name: str, brep: bytes, opts: dict, postprocess: Callable | None) -> dict:
    """Trusted: everything the caller gets about a program's solid, from its BREP alone."""
    try:
        shape = _read_brep(brep)
    except Exception:  # noqa: BLE001 - the bytes come from the program's side
        return _failure("invalid_shape", f"`{name}` is not a readable B-rep")
    shape = _solids_of(shape)  # the program's side may have sent faces or shells
    if shape is None:
        return _failure("empty", f"`{name}` holds no solid")
    if not shape.isValid():
        return _failure("invalid_shape", f"`{name}` fails the B-rep validity check")
    volume, center, inertia = _mass_properties(shape)
    if not volume > MIN_SOLID_VOLUME:
        return _failure("empty", f"`{name}` has zero volume")
    out = {"ok": True, "error_kind": None, "message": "", "volume": volume, "center": center, "inertia": inertia}
    if opts.get("mesh"):
        out["vertices"], out["faces"] = mesh_arrays(shape)
    if opts.get("brep"):
        out["brep"] = _brep_bytes(shape)
    if postprocess is not None:
        out["extras"] = {"value": postprocess(shape, **(opts.get("postprocess_kwargs") or {}))}
    return out


def _read_brep(brep: bytes):
    """A cadquery Shape from BREP bytes, without any triangulation they carried (meshes are ours)."""
    import cadquery as cq
    from OCP.BRepTools import BRepTools

    shape = cq.Shape.importBrep(io.BytesIO(brep))
    BRepTools.Clean_s(shape.wrapped)
    return shape


def _resolve(dotted: str):
    module, _, name = dotted.partition(":")
    return getattr(importlib.import_module(module), name)


def _prepare(role: str, payload: tuple, workdir: str) -> Callable[[], dict]:
    """The job as a call, with any trusted function imported while the files are still visible."""
    if role == "program":
        return functools.partial(_run_program, payload, workdir)
    if role == "measure":
        name, brep, opts = payload
        postprocess = _resolve(opts["postprocess"]) if opts.get("postprocess") else None
        return functools.partial(_measure, name, brep, opts, postprocess)
    func, args = payload
    function = _resolve(func)
    return lambda: {"ok": True, "extras": {"value": function(*args)}}


def _tb_frames(e: BaseException):
    import traceback

    return traceback.extract_tb(e.__traceback__)


def _brep_bytes(shape) -> bytes:
    buffer = io.BytesIO()
    shape.exportBrep(buffer)
    return buffer.getvalue()


def _child_main(job_fd: int, workdir: str, result_fd: int, isolation: str) -> None:
    """Body of a forked child: wait for its job, fence itself in, do the job, write the result.

    Never returns. A child that cannot enter its sandbox exits with _SETUP_FAILED having run nothing.
    """
    status = _SETUP_FAILED
    try:
        os.setsid()  # own process group: the worker kills it whole
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # die with the worker
        with os.fdopen(job_fd, "rb") as f:
            role, payload, timeout, memory_mb = pickle.load(f)  # from the trusted worker
        try:
            task = _prepare(role, payload, workdir)
        except Exception as e:  # noqa: BLE001 - e.g. an unknown function name
            task = functools.partial(_failure, "runtime", f"{type(e).__name__}: {e}"[:500])
        _enter_sandbox(workdir, timeout, memory_mb, result_fd, isolation)
        status = 1
        try:
            out = task()
        except MemoryError:
            out = _failure("memory", "out of memory (address-space limit)")
        except BaseException as e:  # noqa: BLE001
            out = _failure("runtime", f"{type(e).__name__}: {e}"[:500])
        view = memoryview(_encode(out))
        while view:
            view = view[os.write(_RESULT_FD, view):]
        status = 0
    except BaseException:  # noqa: BLE001 - the worker reports a missing result
        pass
    os._exit(status)


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


def mesh_arrays(shape, tolerance: float = METRIC_MESH_TOLERANCE, angular: float = METRIC_MESH_ANGULAR):
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


# --------------------------------------------------------------------------------------------
# The worker: a long-lived process with CadQuery imported that forks the children.

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


def _kill_leftovers(keep: set[int]) -> int:
    """Kill and reap every child of this (subreaper) worker but `keep`; return how many."""
    count = 0
    while True:
        pids = [pid for pid in _children() if pid not in keep]
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

    Forking a process that has CadQuery loaded costs 10-20 ms; the worker forks the next children
    while it would otherwise wait for work, so that cost is off the caller's clock.
    """

    live: set[int] = set()  # pids of the spares not yet reaped (never counted as leftovers)

    def __init__(self, isolation: str):
        self.workdir = tempfile.mkdtemp(prefix="img2cq-run-")
        job_r, self.job_w = os.pipe()
        self.result_r, result_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            _child_main(job_r, self.workdir, result_w, isolation)
        os.close(job_r)
        os.close(result_w)
        _SpareChild.live.add(self.pid)

    def run(self, job: tuple, deadline: float, timeout: float, memory_mb: int,
            max_bytes: int | None = None) -> tuple[bytes | None, str]:
        """Hand the job over and collect its output by `deadline`; (raw output or None, why it is missing)."""
        try:
            with os.fdopen(self.job_w, "wb") as f:
                pickle.dump((*job, max(deadline - time.monotonic(), 0.0), memory_mb), f)
        except BrokenPipeError:  # the child died before its job (reported from its exit status)
            pass
        chunks, size, timed_out = [], 0, False
        try:
            while max_bytes is None or size <= max_bytes:
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
                size += len(chunk)
        finally:
            status, leftovers = self._reap()
        if timed_out:
            return None, f"timeout: exceeded {timeout:g} s wall time"
        if leftovers:
            return None, f"forbidden: left {leftovers} process(es) running"
        if max_bytes is not None and size > max_bytes:
            return None, f"invalid_shape: the result's B-rep exceeds {max_bytes >> 20} MiB"
        if chunks:
            return b"".join(chunks), ""
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            if sig == signal.SIGXCPU:
                return None, "timeout: exceeded the CPU-time limit"
            name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
            return None, f"crash: killed by {name}"
        if os.WEXITSTATUS(status) == _SETUP_FAILED:
            return None, "worker: a sandbox child could not fence itself in"
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
        _SpareChild.live.discard(self.pid)
        leftovers = _kill_leftovers(_SpareChild.live)
        shutil.rmtree(self.workdir, ignore_errors=True)
        return status, leftovers


def _program_outcome(data: bytes) -> tuple[str, bytes, str]:
    """(result name, BREP, "") from a program child's output, else ("", b"", "kind: message").

    The output is untrusted: whatever does not parse as one of the two answers is a `crash`.
    """
    try:
        out = _decode(data)
        if out["ok"] is True:
            name, brep = out["name"], out["brep"]
            if isinstance(name, str) and name.isidentifier() and len(name) <= 100 and isinstance(brep, bytes) and brep:
                return name, brep, ""
        elif out["ok"] is False:
            kind, message = out["error_kind"], out["message"]
            if isinstance(kind, str) and kind in ERROR_KINDS and kind != "worker" and isinstance(message, str):
                return "", b"", f"{kind}: {message[:500]}"
    except Exception:  # noqa: BLE001 - any malformed byte stream
        pass
    return "", b"", "crash: malformed output from the program's sandbox"


def _serve(spares: dict, job: tuple, timeout: float, memory_mb: int) -> tuple[bytes | None, str, dict]:
    """Run one job by `timeout`: a program in the program child, then its BREP in the measuring
    child; a call in the measuring child. Returns (measured result or None, why not, timings)."""
    deadline = time.monotonic() + timeout
    kind, payload = job
    timings = {}
    if kind == "program":
        code, opts = payload
        started = time.perf_counter()
        data, why = spares.pop("program").run(("program", code), deadline, timeout, memory_mb, MAX_BREP_BYTES)
        timings["exec"] = time.perf_counter() - started
        name, brep, why = _program_outcome(data) if data is not None else ("", b"", why)
        if why:
            return None, why, timings
        job = ("measure", (name, brep, opts))
    else:
        job = ("call", payload)
    started = time.perf_counter()
    data, why = spares.pop("trusted").run(job, deadline, timeout, memory_mb)
    timings["measure" if kind == "program" else "call"] = time.perf_counter() - started
    if why and kind == "program":
        error, _, message = why.partition(": ")
        why = f"{error}: measuring the result: {message}"
    return data, why, timings


def _warm_up() -> None:
    """Run the trusted result pipeline once so lazy imports and OCC set-up are inherited by children."""
    import cadquery as cq

    shape = _solids_of(cq.Workplane().box(1, 1, 1))  # no booleans: OCC thread pools must not exist before fork
    shape = _solids_of(_read_brep(_brep_bytes(shape)))
    shape.isValid()
    _mass_properties(shape)
    mesh_arrays(shape)
    _brep_bytes(shape)
    _decode(_encode({"a": np.zeros(3), "b": b""}))
    _sandbox_rules()
    _seccomp_filter()


def _worker_main(read_fd: int, write_fd: int, isolation: str, nice: int, preload: list[str]) -> None:
    """Serve jobs from the parent until it closes the pipe."""
    os.nice(nice)  # inherited by every child
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)  # orphans of our children come back to us
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # go when the caller goes
    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    import cadquery  # noqa: F401 - paid once here, inherited by every forked child

    for module in preload:
        importlib.import_module(module)
    _warm_up()
    conn_in, conn_out = Connection(read_fd, writable=False), Connection(write_fd, readable=False)
    roles = ("program", "trusted")
    spares = {role: _SpareChild(isolation) for role in roles}
    try:
        conn_out.send("ready")
        while True:
            job, timeout, memory_mb = conn_in.recv()
            conn_out.send(_serve(spares, job, timeout, memory_mb))
            for role in roles:  # replace the children the job used
                if role not in spares:
                    spares[role] = _SpareChild(isolation)
    except (EOFError, BrokenPipeError):  # the caller closed the executor
        for spare in spares.values():
            spare.discard()


class _Worker:
    """Handle on one worker process (the caller's side)."""

    def __init__(self, preload: tuple[str, ...], isolation: str, nice: int):
        to_worker_r, to_worker_w = os.pipe()
        from_worker_r, from_worker_w = os.pipe()
        env = _worker_environment()
        env["PYTHONPATH"] = os.pathsep.join(p for p in [_repo_root(), env.get("PYTHONPATH", "")] if p)
        self.process = subprocess.Popen(
            [sys.executable, "-c", "import sys, img2cq.executor as e; "
             "e._worker_main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5:])",
             str(to_worker_r), str(from_worker_w), isolation, str(nice), *preload],
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


_WORKER_ENV_NAMES = {"PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "LD_LIBRARY_PATH"}
_WORKER_ENV_PREFIXES = ("LC_", "PYTHON", "VTK_", "MESA_", "LP_", "GALLIUM_", "LIBGL_", "EGL_", "__EGL_", "__GLX_",
                        "OMP_", "OPENBLAS_", "MKL_", "KMP_", "CSF_", "MMGT_")


def _worker_environment() -> dict[str, str]:
    """The caller's variables that Python, OCC, BLAS and GL read, and no other: a child's memory is
    a copy of its worker's, environment included, so nothing secret (DATABASE_URL, tokens) goes in."""
    return {k: v for k, v in os.environ.items()
            if (k in _WORKER_ENV_NAMES or k.startswith(_WORKER_ENV_PREFIXES)) and not _looks_secret(k)}


def _looks_secret(name: str) -> bool:
    return bool(re.search(r"TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|CREDENTIAL|AWS_|HF_", name, re.I))


def _repo_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Executor:
    """A pool of preloaded workers that run programs in sandboxed children. Thread-safe.

    `isolation` (default: $IMG2CQ_ISOLATION, else "strict"): "strict" confines every child in the
    kernel and raises SandboxUnavailable where the kernel cannot; "trusted" drops the kernel
    sandbox (all else stays), for programs one trusts on such machines. `nice` (0-19) lowers the
    workers' CPU priority, e.g. below a server's request handling.
    """

    def __init__(self, workers: int = 1, timeout: float = DEFAULT_TIMEOUT_S,
                 memory_mb: int = DEFAULT_MEMORY_MB, preload: Iterable[str] = (), isolation: str | None = None,
                 nice: int = 0):
        if workers < 1:
            raise ValueError("workers must be >= 1")
        if timeout <= 0:
            raise ValueError("timeout must be > 0")
        if not 0 <= nice <= 19:
            raise ValueError("nice must be 0-19")
        isolation = isolation or os.environ.get(ISOLATION_ENV) or "strict"
        if isolation not in ISOLATION_MODES:
            raise ValueError(f"isolation must be one of {', '.join(ISOLATION_MODES)}, not {isolation!r}")
        if isolation == "strict" and (problem := strict_isolation_problem()):
            raise SandboxUnavailable(
                f"cannot confine untrusted programs on this machine: {problem}. Only for programs you trust: "
                f"Executor(isolation='trusted') or {ISOLATION_ENV}=trusted runs them without the kernel sandbox.")
        self.workers, self.timeout, self.memory_mb = workers, float(timeout), int(memory_mb)
        self.preload, self.isolation, self.nice = tuple(preload), isolation, nice
        self._idle: Queue[_Worker] = Queue()
        self._all: list[_Worker] = []
        self._lock = threading.Lock()
        self._closed = False
        for _ in range(workers):
            self._add_worker()

    def _add_worker(self) -> None:
        worker = _Worker(self.preload, self.isolation, self.nice)
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
            data, why, timings = worker.recv.recv()
        except (EOFError, OSError, RuntimeError) as e:
            self._retire(worker)
            self._add_worker()
            return ExecResult(ok=False, error_kind="worker", message=f"executor worker failed: {e}",
                              timings={"total": time.perf_counter() - started})
        self._idle.put(worker)
        return _result_from(data, why, timings, time.perf_counter() - started)

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


def _result_from(data: bytes | None, why: str, timings: dict, total_s: float) -> ExecResult:
    """The caller's ExecResult from what the worker relayed: a measuring child's output, or why not."""
    timings = {**timings, "total": total_s}
    if data is None:
        kind, _, message = why.partition(": ")
        return ExecResult(ok=False, error_kind=kind, message=message, timings=timings)
    try:
        fields = _decode(data)
        result = ExecResult(**{k: v for k, v in fields.items() if k in ExecResult.__dataclass_fields__})
        if not isinstance(result.ok, bool):
            raise ValueError("bad result")
    except Exception as e:  # noqa: BLE001 - decoding sandbox output must never raise here
        return ExecResult(ok=False, error_kind="crash", message=f"malformed result from the sandbox ({e})",
                          timings=timings)
    result.timings = timings
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
