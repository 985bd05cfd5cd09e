"""Critical path method over an activity-on-node network: pure functions, no HTTP, no database.

Conventions
-----------
* The project starts at time 0 and no activity starts before 0.
* Every activity has a duration ``d >= 0``; ``EF = ES + d`` and ``LS = LF - d``.
* A dependency from predecessor ``i`` to successor ``j`` with lag ``L`` (negative = lead) means
    - FS (finish-to-start):  ``ES_j >= EF_i + L``
    - SS (start-to-start):   ``ES_j >= ES_i + L``
    - FF (finish-to-finish): ``EF_j >= EF_i + L``
    - SF (start-to-finish):  ``EF_j >= ES_i + L``
  All four reduce to ``ES_j >= ES_i + w`` with ``w = (d_i if i's finish is linked) + L - (d_j if j's
  finish is linked)``, so the forward pass is a longest path over starts and the backward pass
  its mirror image. Activities are not split: an FF/SF link pushes the whole activity.
* The project duration ``T`` is the largest early finish (0 for an empty project). The backward
  pass lets no activity finish after ``T``.
* Total float ``LS - ES``; free float is how far an activity can slip from its early start
  without moving any successor's early start or the project finish.
* An activity is critical when its total float is at most ``tolerance * max(1, T)``
  (``tolerance = 1e-9``), so float rounding in fractional durations does not hide a critical task.
* A critical chain follows links whose constraint is tight at the early dates between critical
  activities; it starts at a critical activity with no such incoming link and ends at one with no
  such outgoing link. Ties are enumerated depth-first, at most ``max_paths`` chains, so a network
  with exponentially many tied chains costs ``O(max_paths * V)``, never more.

Everything runs in ``O(V + E)``: the edge weights and floats are numpy vector operations; the
forward pass rides along Kahn's topological sort and the backward pass walks that order in reverse,
both as plain loops over CSR lists (``benchmarks/bench_cpm.py`` times 100k tasks / 300k links).
"""

from dataclasses import dataclass
from enum import StrEnum
from typing import Hashable, Iterable, Mapping, Sequence

import numpy as np


class LinkType(StrEnum):
    """The four dependency types; the one declaration used by the API schemas and the database."""

    FS = "FS"  # finish-to-start
    SS = "SS"  # start-to-start
    FF = "FF"  # finish-to-finish
    SF = "SF"  # start-to-finish


DEPENDENCY_TYPES = tuple(LinkType)
TOLERANCE = 1e-9
MAX_PATHS = 20


class CycleError(ValueError):
    """The network has a cycle; ``cycle`` lists its task ids in link order, first id repeated last."""

    def __init__(self, cycle: list):
        self.cycle = cycle
        super().__init__("dependency cycle: " + " -> ".join(str(t) for t in cycle))


@dataclass
class Schedule:
    """Early/late dates and floats, one array entry per task in the order the tasks were given."""

    task_ids: list
    duration: float
    earliest_start: np.ndarray
    earliest_finish: np.ndarray
    latest_start: np.ndarray
    latest_finish: np.ndarray
    total_float: np.ndarray
    free_float: np.ndarray
    critical: np.ndarray
    critical_paths: list[list]
    critical_paths_truncated: bool


def _csr(src: np.ndarray, dst: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Edges grouped by source: returns (row pointer, edge indices sorted by source)."""
    order = np.argsort(src, kind="stable")
    ptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(src, minlength=n), out=ptr[1:])
    return ptr, order


def topological_order(n: int, pred: np.ndarray, succ: np.ndarray) -> list[int]:
    """Kahn's order of task indices; raises CycleError (with indices) if there is a cycle."""
    return _kahn_forward(n, pred, succ, np.zeros(len(pred)))[0]


def _kahn_forward(n: int, pred: np.ndarray, succ: np.ndarray, weight: np.ndarray):
    """Kahn's algorithm fused with the forward pass: when a task leaves the queue its early start
    is final, and relaxing its outgoing links gives ``ES_j = max(0, max ES_i + w)``. Returns the
    order, the early starts, and the out-link CSR (row pointer, targets, weights) for reuse."""
    ptr, order = _csr(pred, succ, n)
    ptr_l, out, w = ptr.tolist(), succ[order].tolist(), weight[order].tolist()
    indegree = np.bincount(succ, minlength=n).tolist()
    es = [0.0] * n
    queue = [i for i in range(n) if indegree[i] == 0]
    for i in queue:  # the list grows while we walk it: a FIFO queue without pops
        start = es[i]
        a, b = ptr_l[i], ptr_l[i + 1]
        for j, wk in zip(out[a:b], w[a:b]):
            v = start + wk
            if v > es[j]:
                es[j] = v
            indegree[j] -= 1
            if indegree[j] == 0:
                queue.append(j)
    if len(queue) < n:
        raise CycleError(_find_cycle(indegree, pred.tolist(), succ.tolist()))
    return queue, es, ptr_l, out, w


def _find_cycle(indegree: list[int], pred: list[int], succ: list[int]) -> list[int]:
    """Walk backwards through the tasks Kahn could not order (each has such a predecessor) until
    a task repeats; the repeated stretch, reversed, is a cycle in link order."""
    remaining = {i for i, d in enumerate(indegree) if d > 0}
    back = {}
    for p, s in zip(pred, succ):
        if p in remaining and s in remaining:
            back.setdefault(s, p)
    node = next(iter(sorted(remaining)))
    seen: dict[int, int] = {}
    walk = []
    while node not in seen:
        seen[node] = len(walk)
        walk.append(node)
        node = back[node]
    cycle = walk[seen[node]:][::-1]
    return cycle + [cycle[0]]


def compute(
    durations: np.ndarray,
    pred: np.ndarray,
    succ: np.ndarray,
    kind: np.ndarray,
    lag: np.ndarray,
    max_paths: int = MAX_PATHS,
) -> Schedule:
    """CPM over task indices 0..n-1. ``kind`` holds indices into DEPENDENCY_TYPES."""
    d = np.asarray(durations, dtype=np.float64)
    n = len(d)
    pred = np.asarray(pred, dtype=np.int64)
    succ = np.asarray(succ, dtype=np.int64)
    kind = np.asarray(kind, dtype=np.int64)
    lag = np.asarray(lag, dtype=np.float64)
    if n == 0:
        empty = np.zeros(0)
        return Schedule([], 0.0, empty, empty, empty, empty, empty, empty, np.zeros(0, bool), [], False)

    pred_finish = (kind == 0) | (kind == 2)  # FS, FF link the predecessor's finish
    succ_finish = (kind == 2) | (kind == 3)  # FF, SF link the successor's finish
    weight = np.where(pred_finish, d[pred], 0.0) + lag - np.where(succ_finish, d[succ], 0.0)

    topo, es, ptr_l, out, w = _kahn_forward(n, pred, succ, weight)
    es_a = np.array(es)
    ef_a = es_a + d
    total = float(ef_a.max())

    # Backward pass: LS_i = min(T - d_i, min over outgoing links of LS_j - w).
    ls = (total - d).tolist()
    for i in reversed(topo):
        best = ls[i]
        a, b = ptr_l[i], ptr_l[i + 1]
        for j, wk in zip(out[a:b], w[a:b]):
            v = ls[j] - wk
            if v < best:
                best = v
        ls[i] = best
    ls_a = np.array(ls)
    lf_a = ls_a + d

    eps = TOLERANCE * max(1.0, abs(total))
    total_float = ls_a - es_a
    link_slack = es_a[succ] - es_a[pred] - weight  # slack of each link at the early dates
    free_float = total - ef_a
    np.minimum.at(free_float, pred, link_slack)
    total_float[np.abs(total_float) <= eps] = 0.0
    free_float[np.abs(free_float) <= eps] = 0.0
    critical = total_float <= eps

    tight = critical[pred] & critical[succ] & (np.abs(link_slack) <= eps)
    paths, truncated = _critical_chains(n, es_a, critical, pred[tight], succ[tight], max_paths)
    return Schedule(list(range(n)), total, es_a, ef_a, ls_a, lf_a, total_float, free_float, critical, paths, truncated)


def _critical_chains(n, es, critical, pred, succ, max_paths) -> tuple[list[list[int]], bool]:
    """Depth-first enumeration of tight critical chains, earliest start first, at most max_paths.
    Every branch ends at a chain end, so each step of the walk lies on an emitted chain."""
    ptr, order = _csr(pred, succ, n)
    ptr_l, out = ptr.tolist(), succ[order].tolist()
    has_in = np.zeros(n, bool)
    has_in[succ] = True
    starts = np.flatnonzero(critical & ~has_in)
    starts = starts[np.argsort(es[starts], kind="stable")].tolist()
    paths: list[list[int]] = []
    for s in starts:
        path, cursor = [s], [ptr_l[s]]
        while path:
            node = path[-1]
            if ptr_l[node] == ptr_l[node + 1]:  # chain end
                if len(paths) == max_paths:
                    return paths, True
                paths.append(list(path))
            if cursor[-1] < ptr_l[node + 1]:
                nxt = out[cursor[-1]]
                cursor[-1] += 1
                path.append(nxt)
                cursor.append(ptr_l[nxt])
            else:
                path.pop()
                cursor.pop()
    return paths, False


def schedule(
    tasks: Mapping[Hashable, float],
    dependencies: Sequence[tuple[Hashable, Hashable, str, float]],
    max_paths: int = MAX_PATHS,
) -> Schedule:
    """CPM over tasks keyed by any hashable id: ``tasks`` maps id -> duration, ``dependencies`` are
    ``(predecessor_id, successor_id, type, lag)``. Ids in the result (paths, cycles) are task ids."""
    ids = list(tasks)
    index = {t: i for i, t in enumerate(ids)}
    kinds = {k: i for i, k in enumerate(DEPENDENCY_TYPES)}
    preds, succs, types, lags = zip(*dependencies) if dependencies else ((), (), (), ())
    pred = np.array(list(map(index.__getitem__, preds)), np.int64)
    succ = np.array(list(map(index.__getitem__, succs)), np.int64)
    kind = np.array(list(map(kinds.__getitem__, types)), np.int64)
    lag = np.array(lags, np.float64)
    try:
        result = compute(np.array(list(tasks.values()), np.float64), pred, succ, kind, lag, max_paths)
    except CycleError as e:
        raise CycleError([ids[i] for i in e.cycle]) from None
    result.task_ids = ids
    result.critical_paths = [[ids[i] for i in p] for p in result.critical_paths]
    return result


def find_cycle(task_ids: Iterable[Hashable], links: Iterable[tuple[Hashable, Hashable]]) -> list | None:
    """The ids of one cycle among the links (first id repeated last), or None if there is none."""
    ids = list(task_ids)
    index = {t: i for i, t in enumerate(ids)}
    links = list(links)
    pred = np.fromiter((index[p] for p, _ in links), np.int64, len(links))
    succ = np.fromiter((index[s] for _, s in links), np.int64, len(links))
    try:
        topological_order(len(ids), pred, succ)
    except CycleError as e:
        return [ids[i] for i in e.cycle]
    return None
