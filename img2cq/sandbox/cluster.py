"""Running programs on a Dask cluster: `ClusterExecutor`, a `ProgramRunner` like the local `Executor`.

Data generation and bulk evaluation only ever call an executor's ``map`` (ordered results), so a
``ClusterExecutor`` makes them run on many machines unchanged. It splits the programs into chunks and
sends each chunk to a Dask task; the task runs it on a local ``Executor`` cached in that Dask
worker process (one per set of options), so every program still runs in the sandboxed children and
never in a Dask worker itself. Draws are seeded per (seed, split, index), so the rows do not
depend on which machine ran them.

    with connect("tcp://head:8786") as ex:     # or "local" (a cluster on this machine), or "auto"
        results = ex.map(codes, progress="executing")

Every node needs this project and its dependencies installed (the tasks import ``img2cq``).
Results travel between the Dask processes by Dask's own serialisation (pickle), so the nodes of a
cluster must trust each other, as in any Dask cluster; what a program's sandbox sends back has been
decoded as plain data by the local ``Executor`` before that.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import threading
from typing import Iterable

from img2cq.sandbox.pool import DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT_S, Executor, progress_bar
from img2cq.sandbox.wire import ExecResult

CONNECT_TIMEOUT_S = 10.0
CHUNKS_PER_WORKER = 8  # enough chunks per worker thread to balance uneven programs; few enough to keep overhead low
INSTALL_HINT = "pip install 'img2cq[cluster]'"


class ClusterUnavailable(RuntimeError):
    """No cluster to run on: the extra is not installed, or the scheduler cannot be reached."""


# ----------------------------------------------------------------------------------------------
# Worker side: one cached sandboxed Executor per Dask worker process and set of options.

_local: dict[tuple, Executor] = {}
_local_lock = threading.Lock()


def _local_executor(options: tuple) -> Executor:
    with _local_lock:
        if options not in _local:
            preload, timeout, memory_mb, workers = options
            _local[options] = Executor(workers=workers, timeout=timeout, memory_mb=memory_mb, preload=preload)
            atexit.register(_local[options].close)
        return _local[options]


def _worker_threads() -> int:
    from distributed import get_worker

    return get_worker().state.nthreads


def _run_chunk(codes: list[str], options: tuple, run_options: dict) -> list[ExecResult]:
    return _local_executor(options + (_worker_threads(),)).map(codes, **run_options)


def _call(func: str, args: tuple, options: tuple, timeout: float | None) -> ExecResult:
    return _local_executor(options + (_worker_threads(),)).call(func, *args, timeout=timeout)


# ----------------------------------------------------------------------------------------------
# Caller side.

class ClusterExecutor:
    """An executor whose programs run on the workers of a Dask cluster (sandboxed there as everywhere).

    ``workers`` is the number of worker threads of the cluster, each with one sandbox process.
    """

    def __init__(self, client, local_cluster=None, timeout: float = DEFAULT_TIMEOUT_S,
                 memory_mb: int = DEFAULT_MEMORY_MB, preload: Iterable[str] = ()):
        self.client, self._local_cluster = client, local_cluster
        self.timeout, self.memory_mb, self.preload = float(timeout), int(memory_mb), tuple(preload)
        self.address = client.scheduler.address
        self.workers = max(1, sum(w["nthreads"] for w in client.scheduler_info()["workers"].values()))

    def _options(self) -> tuple:
        return (self.preload, self.timeout, self.memory_mb)

    def map(self, codes: Iterable[str], *, progress: bool | str = False, **kwargs) -> list[ExecResult]:
        """Run programs on the cluster; results in input order."""
        from distributed import as_completed

        codes = list(codes)
        if not codes:
            return []
        size = max(1, math.ceil(len(codes) / (self.workers * CHUNKS_PER_WORKER)))
        starts = range(0, len(codes), size)
        futures = {self.client.submit(_run_chunk, codes[s:s + size], self._options(), kwargs, pure=False): s
                   for s in starts}
        results: list[ExecResult | None] = [None] * len(codes)
        bar = progress_bar(len(codes), progress)
        try:
            for future in as_completed(futures):
                chunk = future.result()
                results[futures[future]:futures[future] + len(chunk)] = chunk
                if bar:
                    bar.update(len(chunk))
        finally:
            for future in futures:
                future.cancel()
            if bar:
                bar.close()
        return results  # type: ignore[return-value]

    def run(self, code: str, **kwargs) -> ExecResult:
        """Run one program on the cluster; never raises for anything the program does."""
        return self.map([code], **kwargs)[0]

    def call(self, func: str, *args, timeout: float | None = None) -> ExecResult:
        """Run a trusted function "module:name" on plain-data args in a sandboxed child on the cluster."""
        return self.client.submit(_call, func, args, self._options(), timeout, pure=False).result()

    def close(self) -> None:
        self.client.close()
        if self._local_cluster is not None:
            self._local_cluster.close()

    def __enter__(self) -> "ClusterExecutor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def connect(address: str, workers: int = 2, connect_timeout: float = CONNECT_TIMEOUT_S,
            **executor_options) -> ClusterExecutor:
    """A ClusterExecutor on the Dask scheduler at ``address`` ("tcp://host:8786"), on the one named by
    $DASK_SCHEDULER_ADDRESS (``"auto"``), or on a new cluster of ``workers`` processes here (``"local"``).

    Raises ClusterUnavailable, in one line, when the extra is missing or no scheduler answers
    within ``connect_timeout`` seconds.
    """
    try:
        import dask
        from distributed import Client, LocalCluster
    except ImportError as e:
        raise ClusterUnavailable(f"--cluster needs Dask distributed ({e}); install it with {INSTALL_HINT}") from e
    local_cluster = None
    if address == "local":
        # One thread per worker process: each runs one sandbox process, like the local pool's workers.
        local_cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                     dashboard_address=":0", silence_logs=logging.ERROR)
        address = local_cluster.scheduler_address
    elif address == "auto":
        address = os.environ.get("DASK_SCHEDULER_ADDRESS") or dask.config.get("scheduler-address", None)
        if not address:
            raise ClusterUnavailable("--cluster auto: no scheduler named; set DASK_SCHEDULER_ADDRESS=tcp://HOST:8786 "
                                     "or pass the address")
    try:
        client = Client(address, timeout=connect_timeout)
    except (OSError, TimeoutError, ValueError) as e:
        if local_cluster is not None:
            local_cluster.close()
        raise ClusterUnavailable(f"cannot reach a Dask scheduler at {address} within {connect_timeout:g} s "
                                 f"({type(e).__name__}); start one with `dask scheduler` and `dask worker ADDRESS`") from e
    try:
        client.wait_for_workers(1, timeout=connect_timeout)
    except TimeoutError as e:
        client.close()
        if local_cluster is not None:
            local_cluster.close()
        raise ClusterUnavailable(f"the Dask scheduler at {address} has no workers after {connect_timeout:g} s; "
                                 f"start some with `dask worker {address}`") from e
    return ClusterExecutor(client, local_cluster, **executor_options)
