"""Measuring a CadQuery result: which object a program built, its solids, their mass properties,
a watertight mesh, and BREP bytes both ways.

The sandbox's children use these on every program (CadQuery and OCC are imported inside the
functions, so importing this module stays light); so do the part builders and the file exports.
"""

from __future__ import annotations

import ast
import io

import numpy as np

from img2cq.geometry import METRIC_MESH_ANGULAR, METRIC_MESH_TOLERANCE

RESULT_NAMES = ("solid", "result", "shape", "part", "model", "body", "obj", "r")


def pick_result(namespace: dict, tree: ast.Module):
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


def solids_of(obj):
    """Reduce a Workplane or Shape to one Shape made of its solids (None if it has none)."""
    import cadquery as cq

    items = obj.vals() if isinstance(obj, cq.Workplane) else [obj]
    solids = [s for item in items if isinstance(item, cq.Shape) for s in item.Solids()]
    if not solids:
        return None
    return solids[0] if len(solids) == 1 else cq.Compound.makeCompound(solids)


def mass_properties(shape) -> tuple[float, np.ndarray, np.ndarray]:
    """(volume, centre of mass, 3x3 matrix of inertia) of a shape."""
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


def read_brep(brep: bytes):
    """A cadquery Shape from BREP bytes, without any triangulation they carried (meshes are ours)."""
    import cadquery as cq
    from OCP.BRepTools import BRepTools

    shape = cq.Shape.importBrep(io.BytesIO(brep))
    BRepTools.Clean_s(shape.wrapped)
    return shape


def brep_bytes(shape) -> bytes:
    """A shape as BREP bytes (read them back with read_brep)."""
    buffer = io.BytesIO()
    shape.exportBrep(buffer)
    return buffer.getvalue()
