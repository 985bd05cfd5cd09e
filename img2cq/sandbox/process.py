"""Supervising the sandbox: the worker processes, their fork servers and the children they fork.

A pool of long-lived workers imports CadQuery once (the 2-3 s import is paid once per worker);
each program then runs in two fresh children (see ``img2cq.sandbox.child``), both forked ahead of
their job so the 10-20 ms fork is off the caller's clock. Children are forked by each worker's
*fork server*, itself forked from the worker after its imports and before its first job, and told
nothing but "fork", "reap" and "drop": a child starts from memory that never held another program,
result or argument, and receives its own job through its pipe after its fork. Where the worker runs
as root, each child is also in a PID namespace of its own.

The worker enforces the wall-clock timeout and bounds what it reads; after each job the fork
server kills the child's process group and its PID namespace (else, as a child subreaper, whatever
came back to it), so nothing a program started outlives its answer. Failure kinds are the worker's
findings (its clock, exit statuses, the CPU time the kernel counted); a program's bytes carry only
an answer or its own error.
"""

from __future__ import annotations

import collections
import importlib
import json
import math
import os
import pickle
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Connection

import numpy as np

from img2cq.measure import brep_bytes, mass_properties, mesh_arrays, read_brep, solids_of
from img2cq.sandbox.child import child_main
from img2cq.sandbox.confine import (CLONE_NEWPID, PR_SET_CHILD_SUBREAPER, PR_SET_PDEATHSIG, SYS_SETNS, SYS_UNSHARE,
                                    precompute, prctl, repo_root, syscall)
from img2cq.sandbox.wire import FENCED, decode, encode, safe_text

MAX_BREP_BYTES = 64 << 20  # a program child's output beyond this is refused unread
_MAX_PROGRAM_HEADER = 1 << 16  # a program child's answer header (a name or a message of <= 500 characters)


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
            syscall(SYS_UNSHARE, CLONE_NEWPID)
            syscall(SYS_SETNS, own.fileno(), CLONE_NEWPID)
    except OSError:
        return None
    return init


def pid_namespaces_available() -> bool:
    """Whether this process may give each sandbox child a PID namespace of its own (as root)."""
    return _pid_namespace_init() is not None


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
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        prctl(PR_SET_CHILD_SUBREAPER, 1)  # without PID namespaces, orphans of children come back here
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
            syscall(SYS_UNSHARE, CLONE_NEWPID)  # for the next children of this process only
            alive_r, keep_alive = os.pipe()
            try:
                init_pid = os.posix_spawn(init, ["cat"], {}, file_actions=[
                    (os.POSIX_SPAWN_DUP2, alive_r, 0), (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0)])
            finally:
                os.close(alive_r)
        pid = os.fork()
        if pid == 0:
            child_main(job_r, workdir, result_w, isolation)
    finally:
        if init:
            syscall(SYS_SETNS, own_namespace, CLONE_NEWPID)  # back to this process's own namespace
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
    """Read a child's answer: FENCED, then one frame (header length, JSON header, blobs).

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
            fenced = first == FENCED
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
            name = signal.Signals(sig).name if sig in {s.value for s in signal.Signals} else str(sig)
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
        out = decode(data)
        if out["ok"] is True:
            name, brep = out["name"], out["brep"]
            if isinstance(name, str) and name.isidentifier() and len(name) <= 100 and isinstance(brep, bytes) and brep:
                return name, brep, ""
        elif out["ok"] is False:
            kind, message = out["error_kind"], out["message"]
            if isinstance(message, str):
                return "", b"", f"{kind if kind in _PROGRAM_KINDS else 'runtime'}: {safe_text(message)}"
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


def warm_up() -> None:
    """Run the trusted result pipeline once so lazy imports and OCC set-up are inherited by children."""
    import cadquery as cq

    shape = solids_of(cq.Workplane().box(1, 1, 1))  # no booleans: OCC thread pools must not exist before fork
    shape = solids_of(read_brep(brep_bytes(shape)))
    shape.isValid()
    mass_properties(shape)
    mesh_arrays(shape)
    brep_bytes(shape)
    decode(encode({"a": np.zeros(3), "b": b""}))
    precompute()


# Children each worker keeps forked ahead, by role. Two measuring children: a program uses one,
# and the call that often follows it (an exact IoU on the two results) then finds the other ready.
_SPARES = {"program": 1, "trusted": 2}


def worker_main(read_fd: int, write_fd: int, isolation: str, nice: int, preload: list[str]) -> None:
    """Serve jobs from the parent until it closes the pipe."""
    os.nice(nice)  # inherited by every child
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # go when the caller goes
    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    import cadquery  # noqa: F401 - paid once here, inherited by every forked child

    for module in preload:
        importlib.import_module(module)
    warm_up()
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


class Worker:
    """Handle on one worker process (the caller's side)."""

    def __init__(self, preload: tuple[str, ...], isolation: str, nice: int):
        to_worker_r, to_worker_w = os.pipe()
        from_worker_r, from_worker_w = os.pipe()
        env = _worker_environment()
        env["PYTHONPATH"] = os.pathsep.join(p for p in [repo_root(), env.get("PYTHONPATH", "")] if p)
        self.process = subprocess.Popen(
            # SIGINT ignored first of all: a terminal's Ctrl-C is the caller's (it closes the executor),
            # and one that comes while the worker is still importing must not print its traceback
            [sys.executable, "-c", "import signal; signal.signal(signal.SIGINT, signal.SIG_IGN); "
             "import sys; from img2cq.sandbox.process import worker_main; "
             "worker_main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5:])",
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
