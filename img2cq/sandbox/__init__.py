"""Safe execution of CadQuery programs: the one place where untrusted code runs.

Every program a model writes is untrusted. A pool of long-lived workers imports CadQuery once; each
program then runs in two fresh children, both forked ahead of their job:

1. the *program child* runs the program and hands back only the BREP of its result solid, or its
   error;
2. the *measuring child* runs no untrusted code: it reads that BREP and computes all the caller
   gets (validity, volume, centre, inertia, mesh, BREP bytes, the ``postprocess`` value).

Every child is fenced in before it touches its job (``isolation="strict"``, the default): Landlock
and seccomp in the kernel, no capabilities, a PID namespace of its own where the worker is root,
no inherited descriptor but its result pipe, a scrubbed environment, resource limits, and a
Python audit hook for early, readable errors. Where the kernel cannot do its part, ``Executor``
refuses to start (``SandboxUnavailable``) unless the caller opts into ``isolation="trusted"`` (or
``IMG2CQ_ISOLATION=trusted``). Children send back plain data (a JSON header plus raw byte blobs,
never a pickle).

The modules, from the caller down:

* ``pool``: ``Executor`` (the pool), ``default_executor``, ``ProgramRunner`` (the interface of
  every program runner), ``clean_code``;
* ``cluster``: ``ClusterExecutor`` and ``connect``, the same interface on a Dask cluster (Dask
  itself is imported only when a cluster is used);
* ``process``: the workers, their fork servers and the children they fork, timeouts and clean-up;
* ``child``: what a sandbox child does: fence itself in, run its one job, write its answer;
* ``confine``: resource limits, descriptors, environment, Landlock, seccomp, capabilities and the
  audit hook;
* ``wire``: the answer frame, ``ExecResult`` and ``ERROR_KINDS``.

    with Executor(workers=2) as ex:
        result = ex.run(code)            # ExecResult
        results = ex.map(codes, progress="executing")
"""

from img2cq.sandbox.cluster import ClusterExecutor, ClusterUnavailable, connect
from img2cq.sandbox.confine import SandboxUnavailable, strict_isolation_problem
from img2cq.sandbox.pool import (DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT_S, ISOLATION_ENV, ISOLATION_MODES, Executor,
                                 ProgramRunner, clean_code, default_executor)
from img2cq.sandbox.wire import ERROR_KINDS, ExecResult

__all__ = [
    "ClusterExecutor", "ClusterUnavailable", "DEFAULT_MEMORY_MB", "DEFAULT_TIMEOUT_S", "ERROR_KINDS", "ExecResult",
    "Executor", "ISOLATION_ENV", "ISOLATION_MODES", "ProgramRunner", "SandboxUnavailable", "clean_code", "connect",
    "default_executor", "strict_isolation_problem",
]
