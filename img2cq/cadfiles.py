"""CAD files of a program's solid, made in the sandbox: STEP, STL, GLB and a PNG render.

A program's text runs only in the sandbox (``img2cq.sandbox``). ``cad_files(program, formats,
executor)`` runs it there with ``export`` as the postprocess: the sandbox's *measuring child*
(which runs no program text) reads the solid the program built and writes every file asked for
from it, STEP through CadQuery's exporter to a temporary file in the child's own working
directory, STL and GLB through trimesh from the solid's mesh, PNG through the dataset's renderer.

    with Executor() as ex:
        files = cad_files(program, ["step", "stl"], ex)     # {"step": b"ISO-10303-21;...", "stl": ...}
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

from img2cq.sandbox import ProgramRunner

# format -> (media type, file extension)
FORMATS = {
    "step": ("application/step", "step"),
    "stl": ("model/stl", "stl"),
    "glb": ("model/gltf-binary", "glb"),
    "png": ("image/png", "png"),
}
PNG_SIZE = 448  # the dataset pictures' size
# what an executor that makes PNGs must preload (VTK cannot be first imported in a fenced child)
PRELOAD = ("img2cq.render", "img2cq.cadfiles")
# finer than the metrics' mesh, for people looking at it
VIEW_MESH_TOLERANCE = 5e-4
VIEW_MESH_ANGULAR = 0.2


class CadFileError(Exception):
    """The program built no solid (``reason``: the sandbox's "kind: message")."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class CadFiles:
    files: dict[str, bytes]
    volume: float


def step_bytes(shape) -> bytes:
    """STEP (AP214) of a CadQuery shape, through a temporary file in the working directory."""
    from cadquery import exporters

    fd, path = tempfile.mkstemp(suffix=".step", dir=os.getcwd())
    os.close(fd)
    try:
        exporters.export(shape, path, exportType=exporters.ExportTypes.STEP)
        with open(path, "rb") as f:
            return f.read()
    finally:
        os.unlink(path)


def _mesh(shape):
    import trimesh

    from img2cq.measure import mesh_arrays

    vertices, faces = mesh_arrays(shape, VIEW_MESH_TOLERANCE, VIEW_MESH_ANGULAR)
    return trimesh.Trimesh(vertices=vertices, faces=faces, process=False)


def stl_bytes(shape) -> bytes:
    """Binary STL of the shape's mesh."""
    return _mesh(shape).export(file_type="stl")


def glb_bytes(shape) -> bytes:
    """Binary glTF of the shape's mesh."""
    return _mesh(shape).export(file_type="glb")


def png_bytes(shape, size: int = PNG_SIZE) -> bytes:
    """A render of the shape in the dataset pictures' style."""
    from img2cq.render import render_png

    return render_png(shape, size=size)


_WRITERS = {"step": step_bytes, "stl": stl_bytes, "glb": glb_bytes, "png": png_bytes}


def export(shape, formats=("step",)) -> dict:
    """Postprocess for ``Executor.run``: {format: file bytes} for each of ``formats``. Runs in the
    measuring child on the solid the program built."""
    unknown = [f for f in formats if f not in _WRITERS]
    if unknown:
        raise ValueError(f"unknown CAD format(s): {', '.join(map(str, unknown))}")
    return {f: _WRITERS[f](shape) for f in dict.fromkeys(formats)}


def cad_files(program: str, formats, executor: ProgramRunner, timeout: float | None = None) -> CadFiles:
    """The files of ``program``'s solid, made in ``executor``'s sandbox. Raises CadFileError when the
    program builds no solid, or a file cannot be written."""
    formats = list(dict.fromkeys(formats))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"unknown CAD format(s): {', '.join(unknown)}; known: {', '.join(FORMATS)}")
    result = executor.run(program, mesh=False, postprocess="img2cq.cadfiles:export",
                          postprocess_kwargs={"formats": formats}, timeout=timeout)
    if not result.ok:
        raise CadFileError(result.reason)
    files = result.extras.get("value")
    if not isinstance(files, dict) or any(not isinstance(files.get(f), bytes) or not files[f] for f in formats):
        raise CadFileError("export: the sandbox returned no file")
    return CadFiles({f: files[f] for f in formats}, float(result.volume))
