"""The caller's side of the sandbox: a thread-safe pool of workers (`Executor`), the shared
default pool, and `ProgramRunner`, the interface that a local pool and a Dask cluster both offer.

    with Executor(workers=2) as ex:
        result = ex.run(code)            # ExecResult
        results = ex.map(codes, progress="executing")
"""

from __future__ import annotations

import atexit
import os
import re
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from queue import Queue
from typing import Iterable, Iterator, Protocol, Self, runtime_checkable

from img2cq.sandbox.confine import SandboxUnavailable, strict_isolation_problem
from img2cq.sandbox.process import Worker
from img2cq.sandbox.wire import ExecResult, decode, safe_text

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MEMORY_MB = 4096  # a process with CadQuery imported already maps ~1 GiB; OCC needs >= 1.5 GiB
ISOLATION_MODES = ("strict", "trusted")
ISOLATION_ENV = "IMG2CQ_ISOLATION"


@runtime_checkable
class ProgramRunner(Protocol):
    """What runs programs in the sandbox: a local `Executor`, or a `ClusterExecutor` on a Dask cluster.

    ``workers`` programs run at a time; ``run`` and ``call`` never raise for anything the program
    or function does (their failure is the result's), and ``map`` keeps the input order.
    """

    workers: int

    def run(self, code: str, *, mesh: bool = True, brep: bool = False, postprocess: str | None = None,
            postprocess_kwargs: dict | None = None, timeout: float | None = None) -> ExecResult: ...

    def map(self, codes: Iterable[str], *, progress: bool | str = False, **kwargs) -> list[ExecResult]: ...

    def call(self, func: str, *args, timeout: float | None = None) -> ExecResult: ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc) -> None: ...


def clean_code(code: str) -> str:
    """Strip Markdown code fences and common indentation, as models emit them."""
    fenced = re.search(r"```[ \t]*(?:python|py)?[ \t]*\n(.*?)(?:```|\Z)", code, re.S)
    if fenced:
        code = fenced.group(1)
    return textwrap.dedent(code).strip() + "\n"


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
        self._idle: Queue[Worker] = Queue()
        self._all: list[Worker] = []
        self._lock = threading.Lock()
        self._closed = False
        for _ in range(workers):
            self._add_worker()

    def _add_worker(self) -> None:
        worker = Worker(self.preload, self.isolation, self.nice)
        with self._lock:
            self._all.append(worker)
        self._idle.put(worker)

    def _retire(self, worker: Worker) -> None:
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
        bar = progress_bar(len(codes), progress)
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

    def worker_pids(self) -> list[int]:
        """The process ids of the pool's workers now (a worker that failed is replaced by a new one)."""
        with self._lock:
            return [worker.process.pid for worker in self._all]

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


def progress_bar(total: int, progress: bool | str):
    """A tqdm bar over `total` programs, labelled `progress` (a string) or "executing"; None if not asked."""
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=progress if isinstance(progress, str) else "executing", unit="prog")


def _result_from(data: bytes | None, why: str, timings: dict, total_s: float) -> ExecResult:
    """The caller's ExecResult from what the worker relayed: a measuring child's output, or why not."""
    timings = {**timings, "total": total_s}
    if data is None:
        kind, _, message = why.partition(": ")
        return ExecResult(ok=False, error_kind=kind, message=safe_text(message, 10_000), timings=timings)
    try:
        fields = decode(data)
        result = ExecResult(**{k: v for k, v in fields.items() if k in ExecResult.__dataclass_fields__})
        if not isinstance(result.ok, bool):
            raise ValueError("bad result")
    except Exception as e:  # noqa: BLE001 - decoding sandbox output must never raise here
        return ExecResult(ok=False, error_kind="crash", message=f"malformed result from the sandbox ({e})",
                          timings=timings)
    result.timings = timings
    result.extras = result.extras or {}
    result.message = safe_text(result.message, 10_000)
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
