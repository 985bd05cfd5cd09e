"""Safe execution of CadQuery programs: the one place where untrusted code runs.

Every program a model writes is untrusted. A pool of long-lived workers imports CadQuery once (the
2-3 s import is paid once per worker); each program then runs in two fresh children, both forked
ahead of their job so the 10-20 ms fork is off the caller's clock:

1. the *program child* runs the program and hands back only the BREP of its result solid, or its
   error;
2. the *measuring child* runs no untrusted code: it reads that BREP and computes all the caller
   gets (validity, volume, centre, inertia, mesh, BREP bytes, the ``postprocess`` value). A
   program that forges its output can at worst hand over a solid it could have built anyway.

Children are forked by each worker's *fork server*, itself forked from the worker after its
imports and before its first job, and told nothing but "fork" and "reap": a child starts from
memory that never held another program, result or argument, and receives its own job through its
pipe after its fork. Every child is fenced in before it touches its job (``isolation="strict"``,
the default):

* in the kernel: Landlock lets it read only the Python installation and its packages, this
  project's ``img2cq/`` and ``metrics/`` packages, the shared libraries, ``/dev/null`` and
  ``/dev/urandom``, and write only its private temporary directory (no ``/proc``, ``/etc``,
  ``/tmp``, home directories or databases), and neither bind nor connect TCP, signal or trace
  processes outside itself nor reach their abstract unix sockets. A seccomp filter refuses sockets
  of any family (pathname unix sockets are beyond Landlock's reach), System V and POSIX
  message-queue IPC, the kernel keyrings, io_uring, namespaces and mounts, running any program,
  ptrace and other processes' memory, bpf, perf events, userfaultfd and the administrator's calls;
  it refuses changing the limits, priority, CPUs or scheduling of any process but the caller. It
  holds no capabilities and can gain none. Where the worker runs as root, each child is also in a
  PID namespace of its own, so it sees no process but its own and those it starts;
* every inherited descriptor is closed but its result pipe; stdio is /dev/null; the environment is
  scrubbed (and the worker itself only ever gets the variables Python, OCC, BLAS and GL read);
* resource limits: address space (``memory_mb``), CPU seconds, file size, open files, no core
  dumps. The worker enforces the wall-clock timeout and bounds what it reads; after each job the
  fork server kills the child's process group and its PID namespace (else, as a child subreaper,
  whatever came back to it), so nothing a program started outlives its answer. Failure kinds are
  the worker's findings (its clock, exit statuses, the CPU time the kernel counted); a program's
  bytes carry only an answer or its own error;
* a Python audit hook in the program child refuses process creation, sockets, ctypes and writes
  outside its directory, and marks the program ``forbidden`` even if it catches the exception: an
  early, readable error, not a boundary.

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
import collections
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
import socket
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
    "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,  # its operations bypass seccomp
    # namespaces (a new user namespace would hand the child every capability inside it) and mounts
    "unshare": 272, "setns": 308, "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161,
    "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
    "mount_setattr": 442,
    # other processes' memory and descriptors (Landlock's ptrace scoping refuses them too)
    "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "kcmp": 312, "pidfd_getfd": 438,
    "process_madvise": 440, "migrate_pages": 256, "move_pages": 279,
    # running any other program: Landlock grants no execute right, and memfd files are beyond its reach
    "execve": 59, "execveat": 322,
    # the kernel's less guarded corners, and what only an administrator does
    "bpf": 321, "perf_event_open": 298, "userfaultfd": 323, "fanotify_init": 300,
    "name_to_handle_at": 303, "open_by_handle_at": 304, "lookup_dcookie": 212, "syslog": 103,
    "kexec_load": 246, "kexec_file_load": 320, "init_module": 175, "finit_module": 313, "delete_module": 176,
    "reboot": 169, "swapon": 167, "swapoff": 168, "acct": 163, "vhangup": 153, "quotactl": 179, "quotactl_fd": 443,
    "settimeofday": 164, "clock_settime": 227, "clock_adjtime": 305, "adjtimex": 159,
    "sethostname": 170, "setdomainname": 171, "iopl": 172, "ioperm": 173, "modify_ldt": 154, "uselib": 134,
    "ioprio_set": 251,
}
# Allowed only on the calling process itself: these arguments (by index) must be 0. Processes of
# the same user may otherwise change each other's limits, priority, CPUs and scheduling.
_SELF_ONLY_SYSCALLS = {
    "prlimit64": (302, (0,)), "setpriority": (141, (0, 1)),  # PRIO_PROCESS, who = 0
    "sched_setaffinity": (203, (0,)), "sched_setscheduler": (144, (0,)), "sched_setparam": (142, (0,)),
    "sched_setattr": (314, (0,)),
}
_SYS_CLONE, _SYS_CLONE3 = 56, 435  # clone: refused with a namespace flag; clone3 (its flags sit in memory
_CLONE_NEW_NAMESPACES = 0x7E020000  # a filter cannot read): ENOSYS, so that libc falls back to clone
_SYS_UNSHARE, _SYS_SETNS, _CLONE_NEWPID = 272, 308, 0x20000000
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
    """BPF program: kill other architectures; refuse the x32 ABI, _DENIED_SYSCALLS, the
    _SELF_ONLY_SYSCALLS aimed at another process and clone with a namespace flag (EPERM); clone3
    with ENOSYS; allow the rest."""
    load, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ/JGE/JSET|K, BPF_RET|K
    allow, kill = 0x7FFF0000, 0x80000000  # SECCOMP_RET_ALLOW, SECCOMP_RET_KILL_PROCESS
    deny, enosys = 0x00050000 | errno.EPERM, 0x00050000 | errno.ENOSYS  # SECCOMP_RET_ERRNO

    def arg_low(index: int) -> int:  # seccomp_data.args[index], its low 32 bits (pids and flags fit)
        return 16 + 8 * index

    # (code, jump if true, jump if false, k); a jump is 0 (next) or the name of a label below
    program: list = [(load, 0, 0, 4), (jeq, 0, "kill", _AUDIT_ARCH_X86_64), (load, 0, 0, 0),  # arch, nr
                     (jge, "deny", 0, _X32_SYSCALL_BIT), (jeq, "enosys", 0, _SYS_CLONE3), (jeq, "clone", 0, _SYS_CLONE)]
    program += [(jeq, "deny", 0, number) for number in sorted(_DENIED_SYSCALLS.values())]
    program += [(jeq, f"self-{number}", 0, number) for number, _ in _SELF_ONLY_SYSCALLS.values()]
    program += [(ret, 0, 0, allow), "clone", (load, 0, 0, arg_low(0)), (jset, "deny", "allow", _CLONE_NEW_NAMESPACES)]
    for number, indices in _SELF_ONLY_SYSCALLS.values():
        program.append(f"self-{number}")
        for index in indices:
            program += [(load, 0, 0, arg_low(index)), (jeq, 0, "deny", 0)]
        program.append((ret, 0, 0, allow))
    program += ["allow", (ret, 0, 0, allow), "deny", (ret, 0, 0, deny), "enosys", (ret, 0, 0, enosys),
                "kill", (ret, 0, 0, kill)]
    labels, instructions = {}, []
    for item in program:
        if isinstance(item, str):
            labels[item] = len(instructions)
        else:
            instructions.append(item)

    def offset(target, at: int) -> int:
        distance = target if isinstance(target, int) else labels[target] - at - 1
        if not 0 <= distance <= 255:
            raise ValueError("seccomp jump out of range")
        return distance

    return b"".join(struct.pack("<HBBI", code, offset(jt, i), offset(jf, i), k)
                    for i, (code, jt, jf, k) in enumerate(instructions))


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
    """Refuse process creation, sockets, ctypes and writes outside `workdir`; remember each try.

    An early, friendly error only (the kernel is the boundary): the hook keeps its own copies of
    the tables and functions it uses, so rebinding the module's names does not change it."""
    root = os.path.realpath(workdir) + os.sep
    forbidden, path_events, write_flags = tuple(_FORBIDDEN_EVENTS), tuple(_PATH_EVENTS), int(_WRITE_FLAGS)
    realpath, fsdecode, sep, violation, remember = os.path.realpath, os.fsdecode, os.sep, SandboxViolation, violations.append
    path_types = (str, bytes, os.PathLike)

    def inside(path) -> bool:
        if isinstance(path, int):  # an fd the program already holds
            return True
        try:
            path = fsdecode(path)
        except TypeError:
            return False
        return (realpath(path) + sep).startswith(root)

    def hook(event: str, args: tuple) -> None:
        if event.startswith(forbidden):
            remember(event)
            raise violation(f"{event} is not allowed in a CadQuery program")
        if event == "open" and args:
            path, mode, flags = (tuple(args) + (None, None))[:3]
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & write_flags
            )
            if writing and not inside(path):
                remember(f"write to {path}")
                raise violation(f"writing {path} is not allowed (outside the sandbox)")
        elif event.startswith(path_events) and args and not all(
            inside(a) for a in args[:2] if isinstance(a, path_types)
        ):
            remember(f"{event} {args[0]}")
            raise violation(f"{event} outside the sandbox is not allowed")

    sys.addaudithook(hook)


_RESULT_FD = 3  # a child's result pipe, once every other descriptor is closed
_SETUP_FAILED = 3  # exit status of a child that could not fence itself in (it ran nothing)
_FENCED = b"\x01"  # the first byte on a result pipe: written once the child is fenced in, before its job runs
_MAX_PROGRAM_HEADER = 1 << 16  # a program child's answer header (a name or a message of <= 500 characters)
_MESSAGE_CHARS = 500


def _text(value: Any, limit: int = _MESSAGE_CHARS) -> str:
    """Untrusted text as valid UTF-8: lone surrogates and the like come back escaped."""
    return str(value)[:limit].encode("utf-8", "backslashreplace").decode("utf-8")


def _enter_sandbox(workdir: str, cpu: int, memory_mb: int, result_fd: int, isolation: str) -> None:
    """Fence this process in before it runs its job: limits, stdio, descriptors, environment, and
    (strict isolation) the kernel sandbox. Afterwards the result pipe is descriptor _RESULT_FD."""
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))  # every soft limit is its hard limit: none can be raised
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
        return _failure(kind, f"{type(e).__name__}: {e}{where}"[:_MESSAGE_CHARS])
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

    Never returns. A child that cannot enter its sandbox exits with _SETUP_FAILED having run
    nothing and written nothing; one that did writes _FENCED first.
    """
    status = _SETUP_FAILED
    try:
        os.setsid()  # own process group
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # die with the process that forked it
        with os.fdopen(job_fd, "rb") as f:
            role, payload, cpu, memory_mb = pickle.load(f)  # from the trusted worker, after the fork
        try:
            task = _prepare(role, payload, workdir)
        except Exception as e:  # noqa: BLE001 - e.g. an unknown function name
            task = functools.partial(_failure, "runtime", f"{type(e).__name__}: {e}"[:_MESSAGE_CHARS])
        del payload
        _enter_sandbox(workdir, cpu, memory_mb, result_fd, isolation)
        status = 1
        os.write(_RESULT_FD, _FENCED)
        try:
            out = task()
        except MemoryError:
            out = _failure("memory", "out of memory (address-space limit)")
        except BaseException as e:  # noqa: BLE001
            out = _failure("runtime", f"{type(e).__name__}: {e}"[:_MESSAGE_CHARS])
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
# The worker: a long-lived process with CadQuery imported; its fork server forks the children.

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


def _count_children(pid: int) -> int:
    """How many children process `pid` has (0 if it is gone)."""
    count = 0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                count += len(f.read().split())
    except OSError:
        pass
    return count


def _kill_leftovers(keep: set[int]) -> int:
    """Kill and reap every child of this (subreaper) process but `keep`; return how many."""
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


def _pid_namespace_init() -> str | None:
    """The program that stands as process 1 of each child's PID namespace (it only waits for the
    end of its input), or None where this process cannot create PID namespaces (not root)."""
    init = shutil.which("cat", path="/usr/bin:/bin")
    if init is None:
        return None
    try:
        with open("/proc/self/ns/pid", "rb") as own:
            _syscall(_SYS_UNSHARE, _CLONE_NEWPID)
            _syscall(_SYS_SETNS, own.fileno(), _CLONE_NEWPID)
    except OSError:
        return None
    return init


class _ForkServer:
    """The worker's side of its fork server.

    The fork server is forked from the worker once the worker has imported and warmed up
    everything, before it receives any job; it forks every sandbox child and is told nothing but
    "fork", "reap" and "drop". So a child starts from memory that never held a program, a result
    or a caller's argument (not even freed), and gets its own job only after its fork, through its
    pipe. Where it can (as root), it puts each child in a PID namespace of its own, under a
    stand-in process 1: the child sees no other process, and killing that process 1 ends
    everything the child started, wherever it went.

    Forks are asked for ahead and answered in order (the fork server forks while the worker
    waits for work); a child that gave a complete answer in its own PID namespace is dropped
    (killed at once, reaped by the fork server in its own time), any other is reaped at once for
    its exit status.
    """

    def __init__(self, isolation: str, inherited: tuple[int, ...]):
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.pending: collections.deque[_SpareChild] = collections.deque()  # forks asked for, in order
        self.pid = os.fork()
        if self.pid == 0:
            os.close(self.sock.detach())
            _fork_server_main(theirs, isolation, inherited)
        theirs.close()

    def _send(self, words: list, fds: list[int] = ()) -> None:
        socket.send_fds(self.sock, [" ".join(map(str, words)).encode()], list(fds))

    def _reply(self) -> list[int]:
        reply = self.sock.recv(256)
        if not reply:
            raise EOFError("the sandbox's fork server is gone")
        return [float(word) if "." in word else int(word) for word in reply.decode().split()]

    def fork(self, spare: "_SpareChild", job_r: int, result_w: int) -> None:
        """Ask for a child waiting on these pipe ends; `spare` learns its pids from wait_for."""
        self._send(["fork"], [job_r, result_w])
        self.pending.append(spare)

    def wait_for(self, spare: "_SpareChild") -> None:
        while spare.pid is None:
            self.pending.popleft().started(*self._reply())

    def reap(self, pid: int) -> tuple[int, float, int]:
        """Kill child `pid` and all it started; (wait status, CPU seconds it used, processes it left)."""
        while self.pending:
            self.wait_for(self.pending[-1])
        self._send(["reap", pid])
        status, cpu, leftovers = self._reply()
        return int(status), float(cpu), int(leftovers)

    def drop(self, pid: int) -> None:
        """Kill child `pid` and its PID namespace; the fork server reaps them in its own time."""
        self._send(["drop", pid])

    def close(self) -> None:
        self.sock.close()
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass


def _fork_server_main(sock: socket.socket, isolation: str, inherited: tuple[int, ...]) -> None:
    """Fork and reap sandbox children on the worker's word until the worker goes. Never returns."""
    children: dict[int, tuple[str, int, int]] = {}  # pid: (directory, its process 1, pipe keeping that alive)
    dropped: dict[int, tuple[int, tuple]] = {}  # pidfd: (pid, entry) of killed children not yet reaped
    status = 0
    try:
        for fd in inherited:  # the pipes to the caller are the worker's alone
            os.close(fd)
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        _prctl(_PR_SET_CHILD_SUBREAPER, 1)  # without PID namespaces, orphans of children come back here
        init = _pid_namespace_init()
        own_namespace = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC) if init else -1
        while True:
            ready, _, _ = select.select([sock, *dropped], [], [])
            for pidfd in ready:
                if pidfd in dropped:  # a dropped child has ended: reap it and its process 1
                    pid, entry = dropped.pop(pidfd)
                    os.close(pidfd)
                    _reap_child(pid, *entry, keep=children)
            if sock not in ready:
                continue
            message, fds, _, _ = socket.recv_fds(sock, 256, 2, socket.MSG_CMSG_CLOEXEC)
            if not message:
                break
            command, *args = message.decode().split()
            if command == "fork":
                pid, entry = _fork_child(fds, isolation, init, own_namespace)
                children[pid] = entry
                sock.send(f"{pid} {entry[1]}".encode())
            elif command == "reap":
                pid = int(args[0])
                status_, cpu, leftovers = _reap_child(pid, *children.pop(pid), keep=children)
                sock.send(f"{status_} {cpu:.6f} {leftovers}".encode())
            elif command == "drop":
                pid = int(args[0])
                entry = children.pop(pid)
                _kill_child(pid, entry[1])
                dropped[os.pidfd_open(pid)] = (pid, entry)
    except BaseException:  # noqa: BLE001 - the worker sees the fork server gone
        status = 1
    for pid, entry in [*children.items(), *dropped.values()]:
        try:
            _reap_child(pid, *entry, keep={})
        except OSError:
            pass
    os._exit(status)


def _fork_child(fds: list[int], isolation: str, init: str | None, own_namespace: int) -> tuple[int, tuple]:
    """Fork a child that waits on `fds` (its job pipe, its result pipe), in a PID namespace of its
    own where `init` names the stand-in process 1."""
    job_r, result_w = fds
    workdir = tempfile.mkdtemp(prefix="img2cq-run-")
    init_pid, keep_alive = 0, -1
    try:
        if init:
            _syscall(_SYS_UNSHARE, _CLONE_NEWPID)  # for the next children of this process only
            alive_r, keep_alive = os.pipe()
            try:
                init_pid = os.posix_spawn(init, ["cat"], {}, file_actions=[
                    (os.POSIX_SPAWN_DUP2, alive_r, 0), (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0)])
            finally:
                os.close(alive_r)
        pid = os.fork()
        if pid == 0:
            _child_main(job_r, workdir, result_w, isolation)
    finally:
        if init:
            _syscall(_SYS_SETNS, own_namespace, _CLONE_NEWPID)  # back to this process's own namespace
        os.close(job_r)
        os.close(result_w)
    return pid, (workdir, init_pid, keep_alive)


def _kill_child(pid: int, init_pid: int) -> None:
    """SIGKILL a child, its process group and (its namespace's process 1) everything it started."""
    for kill, target in ((os.killpg, pid), (os.kill, pid)) + (((os.kill, init_pid),) if init_pid else ()):
        try:
            kill(target, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _reap_child(pid: int, workdir: str, init_pid: int, keep_alive: int, keep) -> tuple[int, float, int]:
    """Kill a child and all it started, reap it; (wait status, CPU seconds, processes it left)."""
    leftovers = _count_children(pid) + (_count_children(init_pid) if init_pid else 0)
    _kill_child(pid, init_pid)
    _, status, usage = os.wait4(pid, 0)
    if init_pid:  # its end waits for every other process of the namespace to be gone
        os.waitpid(init_pid, 0)
        os.close(keep_alive)
    else:
        leftovers = _kill_leftovers(set(keep))
    shutil.rmtree(workdir, ignore_errors=True)
    return status, usage.ru_utime + usage.ru_stime, leftovers


def _read_answer(fd: int, pidfd: int, deadline: float, max_header: int | None,
                 max_bytes: int | None) -> tuple[bool, bytes | None, str]:
    """Read a child's answer: _FENCED, then one frame (header length, JSON header, blobs).

    Stops when the frame is complete, when the child has ended (whatever it started may hold the
    pipe open) or at `deadline`, and reads no byte beyond the bounds. Returns (fenced, the frame
    or None, "" or "timeout" / "too_big" / "malformed")."""
    buffer, fenced, need, ended = bytearray(), None, None, False
    while need is None or len(buffer) < need:
        remaining = 0.0 if ended else deadline - time.monotonic()
        if remaining <= 0 and not ended:
            return bool(fenced), None, "timeout"
        ready, _, _ = select.select([fd] if ended else [fd, pidfd], [], [], max(remaining, 0.0))
        if fd not in ready:
            if ended or not ready:
                if ended:
                    break
                continue
            ended = True  # the child is gone: what it wrote is in the pipe already
            continue
        if fenced is None:
            first = os.read(fd, 1)
            if not first:
                break
            fenced = first == _FENCED
            if not fenced:
                return False, None, "malformed"
            continue
        chunk = os.read(fd, min(1 << 20, need - len(buffer)) if need else 1 << (16 if max_header else 20))
        if not chunk:
            break
        buffer += chunk
        if need is None and len(buffer) >= 8:
            (n,) = struct.unpack_from("<Q", buffer, 0)
            if max_bytes is not None and n > max_bytes:
                return True, None, "too_big"
            if max_header is not None and n > max_header:
                return True, None, "malformed"
            if len(buffer) >= 8 + n:
                try:
                    sizes = json.loads(bytes(buffer[8 : 8 + n]))["sizes"]
                    if not all(isinstance(size, int) and size >= 0 for size in sizes):
                        raise ValueError("bad sizes")
                except Exception:  # noqa: BLE001 - untrusted bytes
                    return True, None, "malformed"
                if max_bytes is not None and sum(sizes) > max_bytes:
                    return True, None, "too_big"
                need = 8 + n + sum(sizes)
    if need is None or len(buffer) < need:
        return bool(fenced), None, ""
    del buffer[need:]  # whatever came after the frame is not part of the answer
    return True, bytes(buffer), ""


class _SpareChild:
    """A sandbox child forked ahead of its job (by the worker's fork server).

    Forking a process that has CadQuery loaded costs 10-20 ms; the worker has the next children
    forked while it would otherwise wait for work, so that cost is off the caller's clock.
    """

    def __init__(self, server: _ForkServer):
        self.server, self.pid, self.init = server, None, 0
        job_r, self.job_w = os.pipe()
        self.result_r, result_w = os.pipe()
        try:
            server.fork(self, job_r, result_w)
        finally:
            os.close(job_r)
            os.close(result_w)

    def started(self, pid: int, init: int) -> None:
        """The fork server's answer: the child's pid and that of its namespace's process 1 (0: none)."""
        self.pid, self.init = pid, init

    def run(self, job: tuple, deadline: float, timeout: float, memory_mb: int,
            max_header: int | None = None, max_bytes: int | None = None) -> tuple[bytes | None, str]:
        """Hand the job over and collect its answer by `deadline`; (the answer or None, why it is missing).

        Every failure kind here is the worker's own finding: the clock, the exit status, the CPU
        time the kernel counted, the bounds. The child's bytes can only be an answer."""
        self.server.wait_for(self)
        pidfd = os.pidfd_open(self.pid)  # readable once the child has ended (it is not reaped before we say)
        cpu = int(math.ceil(max(deadline - time.monotonic(), 0.0))) + 1  # CPU-second limit
        try:
            with os.fdopen(self.job_w, "wb") as f:
                pickle.dump((*job, cpu, memory_mb), f)
        except BrokenPipeError:  # the child died before its job (reported from its exit status)
            pass
        fenced, data, problem = False, None, "worker"
        try:
            fenced, data, problem = _read_answer(self.result_r, pidfd, deadline, max_header, max_bytes)
        finally:
            os.close(pidfd)
            os.close(self.result_r)
            if data is not None and self.init:  # answered: nothing to learn from its end, which costs time
                status, cpu_used = 0, 0.0
                leftovers = _count_children(self.pid) + _count_children(self.init)  # in this order: none slips by
                self.server.drop(self.pid)
            else:
                status, cpu_used, leftovers = self.server.reap(self.pid)
        if problem == "timeout":
            return None, f"timeout: exceeded {timeout:g} s wall time"
        if leftovers:
            return None, f"forbidden: left {leftovers} process(es) running"
        if problem == "too_big":
            return None, f"invalid_shape: the result's B-rep exceeds {max_bytes >> 20} MiB"
        if problem == "malformed":
            return None, "crash: malformed output from the program's sandbox"
        if not fenced:
            return None, "worker: a sandbox child could not fence itself in"
        if data is not None:
            return data, ""
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            if sig in (signal.SIGXCPU, signal.SIGKILL) and cpu_used >= cpu - 0.05:
                return None, "timeout: exceeded the CPU-time limit"
            name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
            return None, f"crash: killed by {name}"
        return None, f"exit: process exited with status {os.WEXITSTATUS(status)} before reporting a result"

    def discard(self) -> None:
        """Kill an unused spare (the worker is closing)."""
        self.server.wait_for(self)
        os.close(self.job_w)
        os.close(self.result_r)
        self.server.reap(self.pid)


# Failure kinds a program child may report: each describes what the program's own code did, and
# any program reaches it at once by itself (an allocation beyond the address-space limit fails
# at once). Any other kind it writes (timeout, crash, worker, ...) is reported as `runtime`.
_PROGRAM_KINDS = frozenset({"syntax", "runtime", "forbidden", "memory", "exit", "no_result", "empty"})


def _program_outcome(data: bytes) -> tuple[str, bytes, str]:
    """(result name, BREP, "") from a program child's answer, else ("", b"", "kind: message").

    The answer is untrusted: whatever does not parse as one of the two answers is a `crash`."""
    try:
        out = _decode(data)
        if out["ok"] is True:
            name, brep = out["name"], out["brep"]
            if isinstance(name, str) and name.isidentifier() and len(name) <= 100 and isinstance(brep, bytes) and brep:
                return name, brep, ""
        elif out["ok"] is False:
            kind, message = out["error_kind"], out["message"]
            if isinstance(message, str):
                return "", b"", f"{kind if kind in _PROGRAM_KINDS else 'runtime'}: {_text(message)}"
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
        data, why = spares["program"].popleft().run(("program", code), deadline, timeout, memory_mb,
                                              _MAX_PROGRAM_HEADER, MAX_BREP_BYTES)
        timings["exec"] = time.perf_counter() - started
        name, brep, why = _program_outcome(data) if data is not None else ("", b"", why)
        if why:
            return None, why, timings
        job = ("measure", (name, brep, opts))
    else:
        job = ("call", payload)
    started = time.perf_counter()
    data, why = spares["trusted"].popleft().run(job, deadline, timeout, memory_mb)
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


# Children each worker keeps forked ahead, by role. Two measuring children: a program uses one,
# and the call that often follows it (an exact IoU on the two results) then finds the other ready.
_SPARES = {"program": 1, "trusted": 2}


def _worker_main(read_fd: int, write_fd: int, isolation: str, nice: int, preload: list[str]) -> None:
    """Serve jobs from the parent until it closes the pipe."""
    os.nice(nice)  # inherited by every child
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # go when the caller goes
    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    import cadquery  # noqa: F401 - paid once here, inherited by every forked child

    for module in preload:
        importlib.import_module(module)
    _warm_up()
    server = _ForkServer(isolation, (read_fd, write_fd))  # before any job: see _ForkServer
    conn_in, conn_out = Connection(read_fd, writable=False), Connection(write_fd, readable=False)
    spares: dict[str, collections.deque[_SpareChild]] = {role: collections.deque() for role in _SPARES}

    def replenish() -> None:  # asks the fork server; the program children first: a program needs one at once
        for role, count in _SPARES.items():
            while len(spares[role]) < count:
                spares[role].append(_SpareChild(server))

    replenish()
    try:
        conn_out.send("ready")
        while True:
            conn_out.send(_serve(spares, *conn_in.recv()))
            replenish()
    except (EOFError, BrokenPipeError):  # the caller closed the executor (or the fork server is gone)
        for spare in (spare for queue in spares.values() for spare in queue):
            try:
                spare.discard()
            except (EOFError, OSError):
                pass
        server.close()


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
        return ExecResult(ok=False, error_kind=kind, message=_text(message, 10_000), timings=timings)
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
    result.message = _text(result.message, 10_000)
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
