"""What crosses a sandbox boundary: the answer frame, the caller's ExecResult and its failure kinds.

A child answers on its result pipe with one byte, FENCED, once it is fenced in, then one frame: an
8-byte header length, a JSON header and raw byte blobs (arrays and bytes). Decoding never
unpickles anything: a child can at worst send malformed data, which the caller reports as a crash.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

ERROR_KINDS = (
    "syntax", "runtime", "timeout", "memory", "crash", "exit", "forbidden",
    "no_result", "empty", "invalid_shape", "worker",
)
RESULT_FD = 3  # a child's result pipe, once every other descriptor is closed
FENCED = b"\x01"  # the first byte on a result pipe: written once the child is fenced in, before its job runs
MESSAGE_CHARS = 500


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


def safe_text(value: Any, limit: int = MESSAGE_CHARS) -> str:
    """Untrusted text as valid UTF-8: lone surrogates and the like come back escaped."""
    return str(value)[:limit].encode("utf-8", "backslashreplace").decode("utf-8")


_BLOB_DTYPES = {"float64", "float32", "int64", "int32", "uint8", "bool"}


def encode(value: Any) -> bytes:
    """One frame: header length, JSON header, blobs (numpy arrays and bytes travel as raw bytes)."""
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


def decode(data: bytes) -> Any:
    """The value of one frame; raises on anything that is not exactly one well-formed frame."""
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

