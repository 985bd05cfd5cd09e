"""Render a CadQuery shape in the GenCAD-Code image style (see /work/shared/reference/gencad-code.md).

Orthographic camera looking at the part from (1, -1, 1) with +Z up, silhouette's longer side
400/448 of the image and centred, white background, faces flat-filled (141, 141, 138) without
lighting, visible B-rep edges in black, ~1 px, no anti-aliasing. A model trained on renders that
differ from the dataset's transfers poorly, so the style numbers are tested (tests/test_render.py).

Edges are taken from the face triangulation (BRep_Tool.PolygonOnTriangulation) so each edge
polyline lies exactly on mesh vertices; the faces are pushed back with a polygon offset and the
depth test then hides the back edges (hidden-line removal without a separate pass).
"""
from __future__ import annotations

import io
import os

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")  # headless, no X server

import numpy as np
import vtk
import vtkmodules.vtkRenderingOpenGL2 as vtk_gl
from vtk.util.numpy_support import numpy_to_vtk, numpy_to_vtkIdTypeArray, vtk_to_numpy
from OCP.BRep import BRep_Tool
from OCP.BRepMesh import BRepMesh_IncrementalMesh
from OCP.TopAbs import TopAbs_EDGE, TopAbs_FACE
from OCP.TopExp import TopExp
from OCP.TopLoc import TopLoc_Location
from OCP.TopoDS import TopoDS
from OCP.TopTools import TopTools_IndexedDataMapOfShapeListOfShape, TopTools_IndexedMapOfShape
from PIL import Image

BACKGROUND = (255, 255, 255)
FACE_COLOR = (141, 141, 138)
EDGE_COLOR = (0, 0, 0)
VIEW_DIRECTION = np.array([1.0, -1.0, 1.0])   # from the part towards the camera
REFERENCE_SIZE, REFERENCE_SPAN = 448, 400      # the silhouette's longer side spans 400 of 448 px
MESH_TOLERANCE, MESH_ANGULAR = 1e-3, 0.15      # ~1 px chord error on the largest circles
# Resolved once at import: the executor's sandboxed children run with a scrubbed environment.
WINDOW_CLASS = getattr(vtk_gl, os.environ["VTK_DEFAULT_OPENGL_WINDOW"], vtk.vtkRenderWindow)


def tessellate(shape, tolerance: float = MESH_TOLERANCE, angular: float = MESH_ANGULAR):
    """Triangles of every face and polylines of every B-rep edge, from one OCC meshing pass.

    Returns (points (n,3), triangles (m,3) indices into points, list of edge polylines (k_i,3)).
    """
    wrapped = shape.wrapped if hasattr(shape, "wrapped") else shape
    BRepMesh_IncrementalMesh(wrapped, tolerance, False, angular, False)  # serial: no OCC threads in forking workers
    faces = TopTools_IndexedMapOfShape()
    TopExp.MapShapes_s(wrapped, TopAbs_FACE, faces)
    points, triangles, face_triangulation = [], [], {}
    offset = 0
    for i in range(1, faces.Extent() + 1):
        loc = TopLoc_Location()
        tri = BRep_Tool.Triangulation_s(TopoDS.Face_s(faces.FindKey(i)), loc)
        if tri is None:
            continue
        trsf = loc.Transformation()
        nodes = np.array([tri.Node(j).Transformed(trsf).Coord() for j in range(1, tri.NbNodes() + 1)])
        tris = np.array([tri.Triangle(j).Get() for j in range(1, tri.NbTriangles() + 1)], dtype=np.int64) - 1
        points.append(nodes)
        triangles.append(tris + offset)
        offset += len(nodes)
        face_triangulation[i] = (tri, loc)
    edge_faces = TopTools_IndexedDataMapOfShapeListOfShape()
    TopExp.MapShapesAndAncestors_s(wrapped, TopAbs_EDGE, TopAbs_FACE, edge_faces)
    polylines = []
    for i in range(1, edge_faces.Extent() + 1):
        edge = TopoDS.Edge_s(edge_faces.FindKey(i))
        if BRep_Tool.Degenerated_s(edge):
            continue
        for face in edge_faces.FindFromIndex(i):
            tri, loc = face_triangulation.get(faces.FindIndex(face), (None, None))
            if tri is None:
                continue
            poly = BRep_Tool.PolygonOnTriangulation_s(edge, tri, loc)
            if poly is None:
                continue
            trsf = loc.Transformation()
            nodes = poly.Nodes()
            polylines.append(np.array([tri.Node(nodes.Value(j)).Transformed(trsf).Coord()
                                       for j in range(nodes.Lower(), nodes.Upper() + 1)]))
            break
    if not points:
        raise ValueError("shape has no triangulated faces")
    return np.concatenate(points), np.concatenate(triangles), polylines


def _polydata(points: np.ndarray, offsets: np.ndarray, connectivity: np.ndarray, lines: bool) -> vtk.vtkPolyData:
    """vtkPolyData from points and cells given as offsets + connectivity (VTK's own layout)."""
    pd = vtk.vtkPolyData()
    vpts = vtk.vtkPoints()
    vpts.SetData(numpy_to_vtk(np.ascontiguousarray(points, dtype=np.float64), deep=True))
    pd.SetPoints(vpts)
    arr = vtk.vtkCellArray()
    arr.SetData(numpy_to_vtkIdTypeArray(offsets.astype(np.int64), deep=True),
                numpy_to_vtkIdTypeArray(connectivity.astype(np.int64), deep=True))
    (pd.SetLines if lines else pd.SetPolys)(arr)
    return pd


def _jittered_direction(view_jitter_deg: float, seed) -> np.ndarray:
    """The GenCAD view direction, optionally tilted by up to view_jitter_deg (training augmentation)."""
    d = VIEW_DIRECTION / np.linalg.norm(VIEW_DIRECTION)
    if view_jitter_deg <= 0:
        return d
    rng = np.random.default_rng(seed)
    axis = np.cross(d, rng.normal(size=3))
    axis /= np.linalg.norm(axis)
    a = np.radians(rng.uniform(0, view_jitter_deg))
    return d * np.cos(a) + np.cross(axis, d) * np.sin(a) + axis * np.dot(axis, d) * (1 - np.cos(a))


def render_array(shape, size: int = 448, line_width: float = 1.0, view_jitter_deg: float = 0.0,
                 seed=None) -> np.ndarray:
    """(size, size, 3) uint8 render of a cadquery Shape (or OCC TopoDS_Shape) in GenCAD style."""
    points, triangles, polylines = tessellate(shape)
    direction = _jittered_direction(view_jitter_deg, seed)
    up = np.array([0.0, 0.0, 1.0])
    right = np.cross(-direction, up)
    right /= np.linalg.norm(right)
    screen_up = np.cross(right, -direction)
    u, v = points @ right, points @ screen_up
    span = max(u.max() - u.min(), v.max() - v.min(), 1e-9)
    # centre of the silhouette's box on screen, at the depth of the part's centre
    centre = right * (u.max() + u.min()) / 2 + screen_up * (v.max() + v.min()) / 2 \
        + direction * float(np.mean(points @ direction))
    radius = float(np.linalg.norm(points - centre, axis=1).max())

    faces = vtk.vtkPolyDataMapper()
    faces.SetInputData(_polydata(points, np.arange(0, 3 * len(triangles) + 1, 3), triangles.ravel(), lines=False))
    faces.SetResolveCoincidentTopologyToPolygonOffset()
    faces.SetRelativeCoincidentTopologyPolygonOffsetParameters(1.0, 1.0)
    face_actor = vtk.vtkActor()
    face_actor.SetMapper(faces)
    prop = face_actor.GetProperty()
    prop.SetColor(*(c / 255 for c in FACE_COLOR))
    prop.SetAmbient(1.0)
    prop.SetDiffuse(0.0)
    prop.SetSpecular(0.0)
    prop.LightingOff()

    edge_points = np.concatenate(polylines) if polylines else np.zeros((0, 3))
    edge_offsets = np.concatenate([[0], np.cumsum([len(p) for p in polylines])])
    edges = vtk.vtkPolyDataMapper()
    edges.SetInputData(_polydata(edge_points, edge_offsets, np.arange(len(edge_points)), lines=True))
    edge_actor = vtk.vtkActor()
    edge_actor.SetMapper(edges)
    eprop = edge_actor.GetProperty()
    eprop.SetColor(*(c / 255 for c in EDGE_COLOR))
    eprop.SetAmbient(1.0)
    eprop.SetDiffuse(0.0)
    eprop.LightingOff()
    eprop.SetLineWidth(line_width)
    eprop.RenderLinesAsTubesOff()

    renderer = vtk.vtkRenderer()
    renderer.SetBackground(*(c / 255 for c in BACKGROUND))
    renderer.AddActor(face_actor)
    renderer.AddActor(edge_actor)
    renderer.UseFXAAOff()
    camera = renderer.GetActiveCamera()
    camera.ParallelProjectionOn()
    camera.SetFocalPoint(*centre)
    camera.SetPosition(*(centre + direction * (radius * 4 + 1)))
    camera.SetViewUp(*up)
    camera.SetParallelScale(span / 2 * REFERENCE_SIZE / REFERENCE_SPAN)
    renderer.ResetCameraClippingRange()

    window = WINDOW_CLASS()
    window.SetOffScreenRendering(1)
    window.SetMultiSamples(0)
    window.LineSmoothingOff()
    window.PolygonSmoothingOff()
    window.SetSize(size, size)
    window.AddRenderer(renderer)
    window.Render()
    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.SetInputBufferTypeToRGB()
    grab.ReadFrontBufferOff()
    grab.Update()
    image = grab.GetOutput()
    w, h, _ = image.GetDimensions()
    pixels = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(h, w, -1)[::-1, :, :3].copy()
    window.Finalize()
    return pixels


def render_image(shape, size: int = 448, line_width: float = 1.0, view_jitter_deg: float = 0.0,
                 seed=None) -> Image.Image:
    """PIL RGB image of render_array."""
    return Image.fromarray(render_array(shape, size, line_width, view_jitter_deg, seed), "RGB")


def render_png(shape, size: int = 448, line_width: float = 1.0, view_jitter_deg: float = 0.0,
               seed=None) -> bytes:
    """PNG bytes of render_array (what the dataset stores)."""
    buf = io.BytesIO()
    render_image(shape, size, line_width, view_jitter_deg, seed).save(buf, format="PNG", optimize=False)
    return buf.getvalue()
