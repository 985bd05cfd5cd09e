"""A real `uvicorn server:app` on 127.0.0.1, on SQLite and on PostgreSQL: used over HTTP, hammered
by concurrent writers and by racing links that would close cycles (two server processes),
restarted on the same database (data must survive), and fuzzed with schemathesis (no 5xx)."""

import importlib.util
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import pytest

from scheduling import cpm
from tests.live_server import live_server as start_live_server



@contextmanager
def live_server(database: str, workers: int = 1):
    """uvicorn on ``database``, `workers` processes; yields its base URL."""
    env = {"DATABASE_URL": database, "IMG2CQ_EXEC_TIMEOUT": "5", "IMG2CQ_EXEC_MEMORY_MB": "3072"}
    with start_live_server(env, workers=workers) as (url, _):
        yield url


@pytest.fixture(scope="module")
def base(database_url):
    with live_server(database_url) as url:
        yield url


def test_concurrent_writers_over_http(base):
    """4 clients add 40 tasks each at once; then 8 clients race to link a->b or b->a: exactly one
    link may win, the rest see a cycle or a duplicate (409), never a 5xx or a stored cycle."""
    pid = httpx.post(base + "/projects", json={"name": "busy"}).json()["id"]
    statuses: list[int] = []

    def add_tasks(k: int) -> None:
        with httpx.Client(base_url=base, timeout=60) as c:
            statuses.extend(c.post(f"/projects/{pid}/tasks", json={"name": f"w{k}-{i}", "duration": i}).status_code
                            for i in range(40))

    threads = [threading.Thread(target=add_tasks, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    tasks = httpx.get(f"{base}/projects/{pid}/tasks").json()
    assert statuses == [201] * 160
    assert sorted(t["name"] for t in tasks) == sorted(f"w{k}-{i}" for k in range(4) for i in range(40))

    a, b = tasks[0]["id"], tasks[1]["id"]
    barrier = threading.Barrier(8)
    races: list[int] = []

    def race(k: int) -> None:
        pair = (a, b) if k % 2 else (b, a)
        with httpx.Client(base_url=base, timeout=60) as c:
            barrier.wait()
            races.append(c.post(f"/projects/{pid}/dependencies",
                                json={"predecessor_id": pair[0], "successor_id": pair[1]}).status_code)

    threads = [threading.Thread(target=race, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(races) == [201] + [409] * 7
    assert len(httpx.get(f"{base}/projects/{pid}/dependencies").json()) == 1
    assert httpx.get(f"{base}/projects/{pid}/critical-path").status_code == 200


def test_data_survives_a_restart(base, database_url):
    body = {"name": "kept", "tasks": [{"key": k, "name": k, "duration": d} for k, d in [("a", 3), ("b", 2), ("c", 5)]],
            "dependencies": [{"predecessor": "a", "successor": "b"}, {"predecessor": "a", "successor": "c", "type": "SS", "lag": 1}]}
    created = httpx.post(base + "/projects/import", json=body)
    assert created.status_code == 201, created.text
    pid = created.json()["id"]
    before = httpx.get(f"{base}/projects/{pid}/critical-path").json()
    with live_server(database_url) as second:  # a second process on the same file, then only it
        assert httpx.get(f"{second}/projects/{pid}/critical-path").json() == before
    with live_server(database_url) as restarted:
        assert httpx.get(f"{restarted}/projects/{pid}").json() == {"id": pid, "name": "kept"}
        assert httpx.get(f"{restarted}/projects/{pid}/critical-path").json() == before
        assert before["duration"] == 6 and before["critical_path"] == [created.json()["task_ids"]["a"],
                                                                      created.json()["task_ids"]["c"]]


def test_racing_links_never_close_a_cycle(database_url):
    """Two server processes, 32 clients at a time, 150 link inserts that would close cycles:
    pairs raced both ways (a->b / b->a), a ring of 12, and random links among all of them. Every
    answer is 201 or 409, what is stored is exactly what was answered 201, and it is acyclic."""
    rng = random.Random(0)
    with live_server(database_url, workers=2) as url, httpx.Client(base_url=url, timeout=120) as c:
        pid = c.post("/projects", json={"name": "race"}).json()["id"]
        tasks = [c.post(f"/projects/{pid}/tasks", json={"name": f"t{i}", "duration": 1 + i % 3}).json()["id"]
                 for i in range(32)]
        pairs, ring = [tasks[2 * i:2 * i + 2] for i in range(10)], tasks[20:32]
        links = [(a, b) for a, b in pairs for _ in range(2)] + [(b, a) for a, b in pairs for _ in range(2)]
        links += [(ring[i], ring[(i + 1) % len(ring)]) for i in range(len(ring))] * 2
        links += [tuple(rng.sample(tasks, 2)) for _ in range(150 - len(links))]
        rng.shuffle(links)

        def insert(link):
            with httpx.Client(base_url=url, timeout=120) as client:
                return link, client.post(f"/projects/{pid}/dependencies",
                                         json={"predecessor_id": link[0], "successor_id": link[1]}).status_code

        with ThreadPoolExecutor(32) as pool:
            answers = list(pool.map(insert, links))
        stored = [(d["predecessor_id"], d["successor_id"]) for d in c.get(f"/projects/{pid}/dependencies").json()]
        critical = c.get(f"/projects/{pid}/critical-path")
    assert {status for _, status in answers} <= {201, 409}, sorted({status for _, status in answers})
    assert sorted(link for link, status in answers if status == 201) == sorted(stored)
    assert cpm.find_cycle(tasks, stored) is None
    assert all(not ((a, b) in stored and (b, a) in stored) for a, b in pairs)
    assert critical.status_code == 200


def test_schemathesis_finds_no_server_errors(base):
    """Fuzz every operation in /openapi.json over HTTP (25 examples each) and require no 5xx.
    /generate is left out: with no model configured its 503 is the documented answer. /score runs
    only once metrics.best_iou exists (its programs go through the sandbox)."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_url(base + "/openapi.json")
    skip = {"/generate"} | (set() if importlib.util.find_spec("metrics.best_iou") else {"/score"})
    failures, calls = [], []
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path in skip:
            continue

        @settings(max_examples=25, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def fuzz(case):
            response = case.call(base_url=base)
            calls.append(response.status_code)
            if response.status_code >= 500:
                failures.append((case.method, case.formatted_path, case.query, case.body, response.status_code,
                                 response.text[:300]))

        fuzz()
    assert len(calls) > 100
    assert failures == []
