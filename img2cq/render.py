"""Render a CadQuery shape in the GenCAD-Code image style (see ../shared/reference/gencad-code.md).

Orthographic camera looking at the part from (1, -1, 1) with +Z up, white background, faces
flat-filled (141, 141, 138) without lighting, visible B-rep edges in black, ~1 px, no anti-aliasing.
Scale and position follow the dataset's fit rule (``fit="bbox"``): the part's axis-aligned 3D
bounding box is projected and scaled so that it fits a 400 px wide x 300 px tall window of a 448 px
image (proportionally for other sizes), touching one of the two limits, its centre at the image
centre. ``fit="silhouette"`` is this project's earlier rule (the silhouette's longer side spans
400/448 of the image, centred), kept to measure what the difference costs. A model trained on
renders that differ from the dataset's transfers poorly, so the style numbers are tested
(tests/test_render.py).

Edges are taken from the face triangulation (BRep_Tool.PolygonOnTriangulation) so each edge
polyline lies exactly on mesh vertices; the faces are pushed back with a polygon offset and the
depth test then hides the back edges (hidden-line removal without a separate pass).

Creating an offscreen GL context and compiling its shaders costs far more than drawing a part (in a
forked child on the loaded 2-core dev machine: window + first draw about 140 ms, a later draw on an
existing context 8-20 ms), so each process has one scene (window, renderer, actors), created and
drawn once when this module is imported. Executor workers preload this module, so every child they
fork inherits a ready context. That is only safe because Mesa's llvmpipe is told to rasterise in the calling thread (LP_NUM_THREADS=0) and
to keep no shader-cache thread: threads do not survive a fork, and a child would hang on them.
"""
from __future__ import annotations

import io
import os

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")  # headless, no X server
os.environ["LP_NUM_THREADS"] = "0"                # fork-safe GL: llvmpipe draws in the calling thread
os.environ["MESA_SHADER_CACHE_DISABLE"] = "true"  # and starts no disk-cache thread

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

from img2cq.geometry import RENDER_MESH_ANGULAR, RENDER_MESH_TOLERANCE

BACKGROUND = (255, 255, 255)
FACE_COLOR = (141, 141, 138)
EDGE_COLOR = (0, 0, 0)
VIEW_DIRECTION = np.array([1.0, -1.0, 1.0])   # from the part towards the camera
REFERENCE_SIZE = 448                           # the dataset's image size; the numbers below scale with it
BOX_WINDOW = (400, 300)                        # fit="bbox": the projected 3D box fits 400 px wide x 300 px tall
SILHOUETTE_SPAN = 400                          # fit="silhouette": the silhouette's longer side spans 400 px
FITS = ("bbox", "silhouette")
# Resolved once at import: the executor's sandboxed children run with a scrubbed environment.
WINDOW_CLASS = getattr(vtk_gl, os.environ["VTK_DEFAULT_OPENGL_WINDOW"], vtk.vtkRenderWindow)


def _face_nodes(tri, loc) -> np.ndarray:
    """(n, 3) nodes of one face triangulation in world coordinates."""
    nodes = np.array([tri.Node(j).Coord() for j in range(1, tri.NbNodes() + 1)])
    if loc.IsIdentity():
        return nodes
    t = loc.Transformation()
    rot = np.array([[t.Value(i, j) for j in (1, 2, 3)] for i in (1, 2, 3)])
    return nodes @ rot.T + np.array([t.Value(i, 4) for i in (1, 2, 3)])


def tessellate(shape, tolerance: float = RENDER_MESH_TOLERANCE, angular: float = RENDER_MESH_ANGULAR):
    """Triangles of every face and polylines of every B-rep edge, from one OCC meshing pass.

    Returns (points (n,3), triangles (m,3) indices into points, list of edge polylines (k_i,3)).
    """
    wrapped = shape.wrapped if hasattr(shape, "wrapped") else shape
    BRepMesh_IncrementalMesh(wrapped, tolerance, False, angular, False)  # serial: no OCC threads in forking workers
    faces = TopTools_IndexedMapOfShape()
    TopExp.MapShapes_s(wrapped, TopAbs_FACE, faces)
    points, triangles, face_mesh = [], [], {}
    offset = 0
    for i in range(1, faces.Extent() + 1):
        loc = TopLoc_Location()
        tri = BRep_Tool.Triangulation_s(TopoDS.Face_s(faces.FindKey(i)), loc)
        if tri is None:
            continue
        nodes = _face_nodes(tri, loc)
        tris = np.array([tri.Triangle(j).Get() for j in range(1, tri.NbTriangles() + 1)], dtype=np.int64) - 1
        points.append(nodes)
        triangles.append(tris + offset)
        offset += len(nodes)
        face_mesh[i] = (tri, loc, nodes)
    edge_faces = TopTools_IndexedDataMapOfShapeListOfShape()
    TopExp.MapShapesAndAncestors_s(wrapped, TopAbs_EDGE, TopAbs_FACE, edge_faces)
    polylines = []
    for i in range(1, edge_faces.Extent() + 1):
        edge = TopoDS.Edge_s(edge_faces.FindKey(i))
        if BRep_Tool.Degenerated_s(edge):
            continue
        for face in edge_faces.FindFromIndex(i):
            tri, loc, nodes = face_mesh.get(faces.FindIndex(face), (None, None, None))
            if tri is None:
                continue
            poly = BRep_Tool.PolygonOnTriangulation_s(edge, tri, loc)
            if poly is None:
                continue
            index = poly.Nodes()
            polylines.append(nodes[[index.Value(j) - 1 for j in range(index.Lower(), index.Upper() + 1)]])
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


def screen_axes(direction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors pointing right and up on screen for a camera looking along -direction, +Z up."""
    right = np.cross(-direction, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    return right, np.cross(right, -direction)


def box_corners(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """(8, 3) corners of the axis-aligned box lo..hi."""
    return np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])


def projected_extents(shape) -> dict:
    """Screen extents, in world units along the unjittered view's (right, up) axes, of the shape's
    3D bounding box ("box") and of its silhouette ("silhouette"), each [u_min, u_max, v_min, v_max].
    With an image's silhouette they tell which fit rule drew it (img2cq.fitcheck)."""
    points = tessellate(shape)[0]
    axes = np.stack(screen_axes(VIEW_DIRECTION / np.linalg.norm(VIEW_DIRECTION)), axis=1)
    box = box_corners(points.min(axis=0), points.max(axis=0)) @ axes
    silhouette = points @ axes
    return {name: [float(p[:, 0].min()), float(p[:, 0].max()), float(p[:, 1].min()), float(p[:, 1].max())]
            for name, p in (("box", box), ("silhouette", silhouette))}


def _flat_actor(mapper, color) -> vtk.vtkActor:
    """Actor drawn in one unlit colour."""
    actor = vtk.vtkActor()
    actor.SetMapper(mapper)
    prop = actor.GetProperty()
    prop.SetColor(*(c / 255 for c in color))
    prop.SetAmbient(1.0)
    prop.SetDiffuse(0.0)
    prop.SetSpecular(0.0)
    prop.LightingOff()
    return actor


class _Scene:
    """The process's one offscreen window with a face and an edge actor; each render swaps their data."""

    def __init__(self):
        self.faces = vtk.vtkPolyDataMapper()
        self.faces.SetResolveCoincidentTopologyToPolygonOffset()
        self.faces.SetRelativeCoincidentTopologyPolygonOffsetParameters(1.0, 1.0)
        self.edges = vtk.vtkPolyDataMapper()
        edge_actor = _flat_actor(self.edges, EDGE_COLOR)
        edge_actor.GetProperty().RenderLinesAsTubesOff()
        self.edge_prop = edge_actor.GetProperty()
        self.renderer = vtk.vtkRenderer()
        self.renderer.SetBackground(*(c / 255 for c in BACKGROUND))
        self.renderer.AddActor(_flat_actor(self.faces, FACE_COLOR))
        self.renderer.AddActor(edge_actor)
        self.renderer.UseFXAAOff()
        self.window = WINDOW_CLASS()
        self.window.SetOffScreenRendering(1)
        self.window.SetMultiSamples(0)
        self.window.LineSmoothingOff()
        self.window.PolygonSmoothingOff()
        self.window.AddRenderer(self.renderer)

    def draw(self, points, triangles, polylines, direction, size: int, line_width: float,
             fit: str = "bbox") -> np.ndarray:
        right, screen_up = screen_axes(direction)
        if fit == "bbox":
            # the 8 corners of the axis-aligned 3D box, projected; the box's centre is the image centre
            lo, hi = points.min(axis=0), points.max(axis=0)
            corners = box_corners(lo, hi)
            width, height = np.ptp(corners @ right), np.ptp(corners @ screen_up)
            units_per_px = max(width / BOX_WINDOW[0], height / BOX_WINDOW[1], 1e-9) * REFERENCE_SIZE / size
            centre = (lo + hi) / 2
        else:  # "silhouette"
            u, v = points @ right, points @ screen_up
            units_per_px = max(np.ptp(u), np.ptp(v), 1e-9) / SILHOUETTE_SPAN * REFERENCE_SIZE / size
            # centre of the silhouette's box on screen, at the depth of the part's centre
            centre = right * (u.max() + u.min()) / 2 + screen_up * (v.max() + v.min()) / 2 \
                + direction * float(np.mean(points @ direction))
        radius = float(np.linalg.norm(points - centre, axis=1).max())

        self.faces.SetInputData(_polydata(points, np.arange(0, 3 * len(triangles) + 1, 3), triangles.ravel(),
                                          lines=False))
        edge_points = np.concatenate(polylines) if polylines else np.zeros((0, 3))
        edge_offsets = np.concatenate([[0], np.cumsum([len(p) for p in polylines])])
        self.edges.SetInputData(_polydata(edge_points, edge_offsets, np.arange(len(edge_points)), lines=True))
        self.edge_prop.SetLineWidth(line_width)

        camera = self.renderer.GetActiveCamera()
        camera.ParallelProjectionOn()
        camera.SetFocalPoint(*centre)
        camera.SetPosition(*(centre + direction * (radius * 4 + 1)))
        camera.SetViewUp(0.0, 0.0, 1.0)
        camera.SetParallelScale(units_per_px * size / 2)  # half the image height, in world units
        self.renderer.ResetCameraClippingRange()

        self.window.SetSize(size, size)
        self.window.Render()
        pixels = vtk.vtkUnsignedCharArray()
        self.window.GetPixelData(0, 0, size - 1, size - 1, 0, pixels, 0)  # RGB of the back buffer, bottom row first
        return vtk_to_numpy(pixels).reshape(size, size, 3)[::-1].copy()


def png_bytes(pixels: np.ndarray) -> bytes:
    """PNG encoding of an RGB array, as the dataset stores it."""
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def _warm_up() -> _Scene:
    """Create the scene, draw a cube and encode it once: the GL context exists, its shaders are
    compiled and PIL's PNG plugin is loaded before any executor worker forks."""
    scene = _Scene()
    cube = np.array([[x, y, z] for x in (0.0, 1.0) for y in (0.0, 1.0) for z in (0.0, 1.0)])
    triangles = np.array([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
                          [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]])
    png_bytes(scene.draw(cube, triangles, [cube[[0, 1, 3, 2, 0]]], VIEW_DIRECTION / np.linalg.norm(VIEW_DIRECTION),
                         64, 1.0))
    return scene


_SCENE = _warm_up()


def render_array(shape, size: int = 448, line_width: float = 1.0, view_jitter_deg: float = 0.0,
                 seed=None, fit: str = "bbox") -> np.ndarray:
    """(size, size, 3) uint8 render of a cadquery Shape (or OCC TopoDS_Shape) in GenCAD style;
    ``fit`` is "bbox" (the dataset's rule) or "silhouette" (see the module docstring)."""
    if fit not in FITS:
        raise ValueError(f"unknown fit {fit!r}; expected one of {', '.join(FITS)}")
    return draw(*tessellate(shape), size, line_width, view_jitter_deg, seed, fit)


def draw(points: np.ndarray, triangles: np.ndarray, polylines: list, size: int = 448, line_width: float = 1.0,
         view_jitter_deg: float = 0.0, seed=None, fit: str = "bbox") -> np.ndarray:
    """(size, size, 3) uint8 render of a `tessellate` result: the drawing half of render_array."""
    return _SCENE.draw(points, triangles, polylines, _jittered_direction(view_jitter_deg, seed), size, line_width,
                       fit)


def render_png(shape, size: int = 448, line_width: float = 1.0, view_jitter_deg: float = 0.0,
               seed=None, fit: str = "bbox") -> bytes:
    """PNG bytes of render_array (what the dataset stores)."""
    return png_bytes(render_array(shape, size, line_width, view_jitter_deg, seed, fit))
