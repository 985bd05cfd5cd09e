"""CadQuery/OCP geometry settings in one place: how finely solids are meshed, and what counts as a solid.

GenCAD-Code parts are normalised to about [-0.75, 0.75] on every axis, so lengths here are in
those model units. Two meshes serve two purposes and so have two tolerances: the metrics need a
mesh close to the B-rep (IoU booleans), a picture only one whose chords stay under half a pixel.
"""

# Meshing for metrics (IoU by mesh booleans): linear deflection in model units, angular in radians.
METRIC_MESH_TOLERANCE, METRIC_MESH_ANGULAR = 1e-3, 0.1
# Meshing for pictures: chord error <= ~0.5 px at 400 px per 1.5 units; finer is invisible and slower.
RENDER_MESH_TOLERANCE, RENDER_MESH_ANGULAR = 2e-3, 0.3
# Meshing for comparing a picture's candidates with one another (search's consensus): 3x fewer
# triangles than the metric's, pairwise IoUs within 0.01 of its and 2-3x faster to intersect.
CONSENSUS_MESH_TOLERANCE, CONSENSUS_MESH_ANGULAR = 1e-2, 0.3

# A program's result with no more volume than this holds no solid at all (invalid, kind "empty").
MIN_SOLID_VOLUME = 1e-9

# Generated training parts: a valid solid can still be unfit to learn from (the data engine rejects it).
# Thin is not degenerate (pins, wires, thin-walled tubes and sheets are real parts): a side counts
# as a sliver below 0.006, under two pixels of a 448 px picture where the part spans ~400.
MIN_PART_VOLUME = 2e-5      # smaller parts are dust
MIN_PART_EXTENT = 0.006     # a bounding-box side thinner than this is a sliver
MIN_PART_FILL = 0.01        # volume / bounding-box volume below this is a wire frame of slivers
