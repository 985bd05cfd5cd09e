"""Inside a sandbox child: fence itself in, do its one job, write its answer, exit.

A child does one of three jobs. The *program child* runs an untrusted program and hands back only
the BREP of its result solid, or its error. The *measuring child* runs no untrusted code: it reads
that BREP and computes all the caller gets (validity, volume, centre, inertia, mesh, BREP bytes,
the ``postprocess`` value); a program that forges its output can at worst hand over a solid it
could have built anyway. A *call* runs a trusted function on plain data.
"""

from __future__ import annotations

import ast
import functools
import importlib
import os
import pickle
import signal
from typing import Callable

from img2cq.geometry import MIN_SOLID_VOLUME
from img2cq.measure import brep_bytes, mass_properties, mesh_arrays, pick_result, read_brep, solids_of
from img2cq.sandbox.confine import PR_SET_PDEATHSIG, SandboxViolation, enter_sandbox, install_audit_hook, prctl
from img2cq.sandbox.wire import FENCED, MESSAGE_CHARS, RESULT_FD, encode

_SETUP_FAILED = 3  # exit status of a child that could not fence itself in (it ran nothing)


def _failure(kind: str, message: str) -> dict:
    return {"ok": False, "error_kind": kind, "message": message}


def _run_program(code: str, workdir: str) -> dict:
    """Untrusted: execute one program and hand over the BREP of its result solid (or its error)."""
    violations: list[str] = []
    install_audit_hook(workdir, violations)
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
        return _failure(kind, f"{type(e).__name__}: {e}{where}"[:MESSAGE_CHARS])
    if violations:
        return _failure("forbidden", f"attempted {violations[0]}")
    name, obj = pick_result(namespace, tree)
    if obj is None:
        return _failure("no_result", "no Workplane or Shape result (expected `solid`)")
    shape = solids_of(obj)
    if shape is None:
        return _failure("empty", f"`{name}` holds no solid")
    return {"ok": True, "name": name, "brep": brep_bytes(shape)}


def _measure(name: str, brep: bytes, opts: dict, postprocess: Callable | None) -> dict:
    """Trusted: everything the caller gets about a program's solid, from its BREP alone."""
    try:
        shape = read_brep(brep)
    except Exception:  # noqa: BLE001 - the bytes come from the program's side
        return _failure("invalid_shape", f"`{name}` is not a readable B-rep")
    shape = solids_of(shape)  # the program's side may have sent faces or shells
    if shape is None:
        return _failure("empty", f"`{name}` holds no solid")
    if not shape.isValid():
        return _failure("invalid_shape", f"`{name}` fails the B-rep validity check")
    volume, center, inertia = mass_properties(shape)
    if not volume > MIN_SOLID_VOLUME:
        return _failure("empty", f"`{name}` has zero volume")
    out = {"ok": True, "error_kind": None, "message": "", "volume": volume, "center": center, "inertia": inertia}
    if opts.get("mesh"):
        out["vertices"], out["faces"] = mesh_arrays(shape)
    if opts.get("brep"):
        out["brep"] = brep_bytes(shape)
    if postprocess is not None:
        out["extras"] = {"value": postprocess(shape, **(opts.get("postprocess_kwargs") or {}))}
    return out


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


def child_main(job_fd: int, workdir: str, result_fd: int, isolation: str) -> None:
    """Body of a forked child: wait for its job, fence itself in, do the job, write the result.

    Never returns. A child that cannot enter its sandbox exits with _SETUP_FAILED having run
    nothing and written nothing; one that did writes FENCED first.
    """
    status = _SETUP_FAILED
    try:
        os.setsid()  # own process group
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # die with the process that forked it
        with os.fdopen(job_fd, "rb") as f:
            role, payload, cpu, memory_mb = pickle.load(f)  # from the trusted worker, after the fork
        try:
            task = _prepare(role, payload, workdir)
        except Exception as e:  # noqa: BLE001 - e.g. an unknown function name
            task = functools.partial(_failure, "runtime", f"{type(e).__name__}: {e}"[:MESSAGE_CHARS])
        del payload
        enter_sandbox(workdir, cpu, memory_mb, result_fd, isolation)
        status = 1
        os.write(RESULT_FD, FENCED)
        try:
            out = task()
        except MemoryError:
            out = _failure("memory", "out of memory (address-space limit)")
        except BaseException as e:  # noqa: BLE001
            out = _failure("runtime", f"{type(e).__name__}: {e}"[:MESSAGE_CHARS])
        view = memoryview(encode(out))
        while view:
            view = view[os.write(RESULT_FD, view):]
        status = 0
    except BaseException:  # noqa: BLE001 - the worker reports a missing result
        pass
    os._exit(status)
