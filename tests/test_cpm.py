"""scheduling.cpm: a published textbook example, hand-derived cases for every link type, and property
tests against an independent longest-path computation with networkx."""

import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduling import cpm


def rows(result: cpm.Schedule) -> dict:
    keys = ("earliest_start", "earliest_finish", "latest_start", "latest_finish", "total_float", "free_float")
    return {t: tuple(float(getattr(result, k)[i]) for k in keys) for i, t in enumerate(result.task_ids)}


def test_textbook_milwaukee_paper():
    """Heizer, Render & Munson, *Operations Management*, chapter 3 "Project Management",
    Milwaukee Paper Manufacturing (pollution-control project, activity-on-node): the book gives
    ES/EF/LS/LF and slack below, project time 15 weeks, critical path A-C-E-G-H."""
    tasks = {"A": 2, "B": 3, "C": 2, "D": 4, "E": 4, "F": 3, "G": 5, "H": 2}
    links = [("A", "C"), ("A", "D"), ("B", "D"), ("C", "E"), ("C", "F"), ("D", "G"), ("E", "G"),
             ("F", "H"), ("G", "H")]
    result = cpm.schedule(tasks, [(p, s, "FS", 0) for p, s in links])
    # (ES, EF, LS, LF, slack) as printed in the book; free float derived from the same table.
    book = {"A": (0, 2, 0, 2, 0), "B": (0, 3, 1, 4, 1), "C": (2, 4, 2, 4, 0), "D": (3, 7, 4, 8, 1),
            "E": (4, 8, 4, 8, 0), "F": (4, 7, 10, 13, 6), "G": (8, 13, 8, 13, 0), "H": (13, 15, 13, 15, 0)}
    free = {"A": 0, "B": 0, "C": 0, "D": 1, "E": 0, "F": 6, "G": 0, "H": 0}
    assert result.duration == 15
    assert rows(result) == {t: book[t] + (free[t],) for t in tasks}
    assert result.critical_paths == [["A", "C", "E", "G", "H"]]
    assert [t for t, c in zip(result.task_ids, result.critical) if c] == ["A", "C", "E", "G", "H"]


@pytest.mark.parametrize(
    "kind, lag, b_start",
    [
        ("FS", 0, 4),    # B starts when A (0..4) finishes
        ("FS", 2, 6),    # ... two days later
        ("FS", -1, 3),   # ... a one-day lead
        ("SS", 1, 1),    # B starts a day after A starts
        ("FF", 0, 1),    # B (3 days) finishes with A at 4
        ("FF", -3, 0),   # a lead that would start B before the project: clamped to 0
        ("SF", 5, 2),    # B finishes 5 days after A starts
    ],
)
def test_each_link_type(kind, lag, b_start):
    """A (4 days) -> B (3 days), hand-derived from the conventions in the module docstring."""
    result = cpm.schedule({"A": 4, "B": 3}, [("A", "B", kind, lag)])
    es = dict(zip(result.task_ids, result.earliest_start))
    assert es == {"A": 0, "B": b_start}
    assert result.duration == max(4, b_start + 3)
    assert (result.total_float >= 0).all() and (result.free_float <= result.total_float).all()


def test_ff_successor_drives_predecessor_late_dates():
    """A (2) FF+0 B (5): B ends at 5, A may start as late as 3 and still finish with B."""
    result = cpm.schedule({"A": 2, "B": 5}, [("A", "B", "FF", 0)])
    assert rows(result) == {"A": (0, 2, 3, 5, 3, 3), "B": (0, 5, 0, 5, 0, 0)}
    assert result.critical_paths == [["B"]]


def test_ties_and_empty_and_cycle():
    tied = cpm.schedule({1: 1, 2: 2, 3: 2, 4: 1}, [(1, 2, "FS", 0), (1, 3, "FS", 0), (2, 4, "FS", 0), (3, 4, "FS", 0)])
    assert tied.critical_paths == [[1, 2, 4], [1, 3, 4]]
    empty = cpm.schedule({}, [])
    assert empty.duration == 0 and empty.critical_paths == []
    with pytest.raises(cpm.CycleError) as err:
        cpm.schedule({1: 1, 2: 1, 3: 1, 4: 1}, [(4, 1, "FS", 0), (1, 2, "FS", 0), (2, 3, "FS", 0), (3, 1, "FS", 0)])
    assert err.value.cycle in ([1, 2, 3, 1], [2, 3, 1, 2], [3, 1, 2, 3])
    assert cpm.find_cycle([1, 2], [(1, 2)]) is None
    assert cpm.find_cycle([1, 2], [(1, 2), (2, 1)]) in ([1, 2, 1], [2, 1, 2])


def test_exponentially_many_tied_chains_are_capped():
    """60 diamonds in a row have 2**60 tied critical chains; enumeration stops at max_paths."""
    tasks, links = {0: 1}, []
    for k in range(60):
        a, b, join = 3 * k + 1, 3 * k + 2, 3 * k + 3
        tasks.update({a: 1, b: 1, join: 1})
        links += [(3 * k, a, "FS", 0), (3 * k, b, "FS", 0), (a, join, "FS", 0), (b, join, "FS", 0)]
    result = cpm.schedule(tasks, links, max_paths=7)
    assert result.critical_paths_truncated and len(result.critical_paths) == 7
    assert all(len(p) == 121 for p in result.critical_paths)
    assert len({tuple(p) for p in result.critical_paths}) == 7


@st.composite
def dags(draw, kinds=("FS",), lags=st.integers(0, 3)):
    n = draw(st.integers(1, 10))
    durations = draw(st.lists(st.integers(1, 9), min_size=n, max_size=n))
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    chosen = draw(st.lists(st.sampled_from(pairs), unique=True, max_size=len(pairs))) if pairs else []
    perm = draw(st.permutations(range(n)))  # ids in a random order, so index order is no hint
    tasks = {perm[i]: float(durations[i]) for i in range(n)}
    links = [(perm[i], perm[j], draw(st.sampled_from(kinds)), float(draw(lags))) for i, j in chosen]
    return tasks, links


@settings(max_examples=150, deadline=None)
@given(dags())
def test_fs_matches_networkx_longest_paths(net):
    """Bellman-Ford (networkx) on negated weights gives every early start and late finish."""
    tasks, links = net
    result = cpm.schedule(tasks, links)
    g = nx.DiGraph()
    g.add_edges_from((("S", t) for t in tasks), weight=0.0)
    g.add_edges_from(((t, "T") for t in tasks))
    for t, d in tasks.items():
        g.edges[t, "T"]["weight"] = d
    g.add_edges_from((p, s, {"weight": tasks[p] + lag}) for p, s, _, lag in links)
    neg = nx.DiGraph((u, v, {"weight": -w}) for u, v, w in g.edges(data="weight"))
    to_task = nx.single_source_bellman_ford_path_length(neg, "S")
    from_task = nx.single_source_bellman_ford_path_length(neg.reverse(), "T")
    total = -to_task["T"]
    assert result.duration == pytest.approx(total)
    for i, t in enumerate(result.task_ids):
        assert result.earliest_start[i] == pytest.approx(-to_task[t])
        assert result.latest_finish[i] == pytest.approx(total + from_task[t] + tasks[t])
    # Every longest S -> T path is exactly one listed critical chain (durations >= 1 make them distinct).
    longest = [p[1:-1] for p in nx.all_simple_paths(g, "S", "T")
               if abs(nx.path_weight(g, p, "weight") - total) < 1e-9]
    assert sorted(result.critical_paths) == sorted(longest)[: cpm.MAX_PATHS] or result.critical_paths_truncated


@settings(max_examples=150, deadline=None)
@given(dags(kinds=cpm.DEPENDENCY_TYPES, lags=st.integers(-4, 4)))
def test_all_link_types_respect_constraints(net):
    """Early and late schedules both satisfy every link as stated in the docstring, early is the
    earliest (each start is 0 or held by a tight link), and floats are consistent."""
    tasks, links = net
    r = cpm.schedule(tasks, links)
    at = {t: i for i, t in enumerate(r.task_ids)}
    tol = 1e-9
    for es, ef in ((r.earliest_start, r.earliest_finish), (r.latest_start, r.latest_finish)):
        assert (es >= -tol).all() and (ef <= r.duration + tol).all()
        for p, s, kind, lag in links:
            i, j = at[p], at[s]
            before = {"FS": ef[i], "SS": es[i], "FF": ef[i], "SF": es[i]}[kind] + lag
            after = {"FS": es[j], "SS": es[j], "FF": ef[j], "SF": ef[j]}[kind]
            assert after >= before - tol
    for t, i in at.items():
        held = [r.earliest_start[i] + (tasks[t] if k in ("FF", "SF") else 0) - lag
                - {"FS": r.earliest_finish, "SS": r.earliest_start, "FF": r.earliest_finish,
                   "SF": r.earliest_start}[k][at[p]]
                for p, s, k, lag in links if s == t]
        assert r.earliest_start[i] == 0 or min(abs(h) for h in held) <= tol
    assert np.all(r.total_float >= 0) and np.all(r.free_float >= 0)
    assert np.all(r.free_float <= r.total_float + tol)
    assert r.duration == pytest.approx(max(r.earliest_finish))
