"""server.py through FastAPI's TestClient: every endpoint, every refusal, concurrent writers,
hostile programs, and the /generate batcher under load (the real-server and schemathesis tests
are in test_server_live.py). The scheduling API runs on SQLite and on PostgreSQL."""

import asyncio
import gc
import io
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import psutil
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy.orm import Session

import server
from img2cq.serving import model_api
from scheduling.database import make_engine, migrate
from scheduling.tables import Dependency, Project, Task



@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A freshly initialised tiny model on disk: what /generate loads from IMG2CQ_MODEL."""
    from img2cq.modeling import build_model, save_pretrained

    out = tmp_path_factory.mktemp("model")
    save_pretrained(out, *build_model("tiny"))
    return out


@contextmanager
def serve(database: str, model_dir, **settings):
    """server.app in a TestClient, started with these settings (IMG2CQ_<NAME>=value)."""
    env = {"DATABASE_URL": database, "IMG2CQ_MODEL": str(model_dir), "IMG2CQ_EXEC_TIMEOUT": "5",
           "IMG2CQ_EXEC_MEMORY_MB": "3072", "IMG2CQ_WARM_UP": "false",  # loaded on first use: cheaper here
           } | {f"IMG2CQ_{k.upper()}": str(v) for k, v in settings.items()}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        with TestClient(server.app) as c:
            yield c


@pytest.fixture(scope="module")
def client(database_url, model_dir):
    """The scheduling API on each database (SQLite always, PostgreSQL where it can be started)."""
    with serve(database_url, model_dir) as c:
        yield c


@pytest.fixture(scope="module")
def model_client(tmp_path_factory, model_dir):
    """The model and metrics routes (the database plays no part in them: SQLite)."""
    with serve("sqlite:///" + str(tmp_path_factory.mktemp("db") / "model.db"), model_dir) as c:
        yield c


def new_project(client, name="p") -> int:
    r = client.post("/projects", json={"name": name})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def new_task(client, pid, name="t", duration=1.0) -> int:
    r = client.post(f"/projects/{pid}/tasks", json={"name": name, "duration": duration})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def link(client, pid, a, b, **extra):
    return client.post(f"/projects/{pid}/dependencies", json={"predecessor_id": a, "successor_id": b, **extra})


def test_health(client):
    assert client.get("/health").json() == {"status": "ok", "model_configured": True}


def test_project_crud(client):
    pid = new_project(client, "bridge")
    assert client.get(f"/projects/{pid}").json() == {"id": pid, "name": "bridge"}
    assert {"id": pid, "name": "bridge"} in client.get("/projects", params={"limit": 1000}).json()
    a, b = new_task(client, pid), new_task(client, pid)
    assert link(client, pid, a, b).status_code == 201
    assert client.delete(f"/projects/{pid}").status_code == 204  # tasks and links go with it
    assert client.get(f"/projects/{pid}").status_code == 404
    assert client.get(f"/projects/{pid}/tasks/{a}").status_code == 404
    with Session(client.app.state.scheduling.engine) as s:
        assert s.get(Task, a) is None and s.query(Dependency).filter_by(project_id=pid).count() == 0
    assert client.delete(f"/projects/{pid}").status_code == 404


def test_task_crud(client):
    pid = new_project(client)
    tid = new_task(client, pid, "dig", 3)
    assert client.get(f"/projects/{pid}/tasks/{tid}").json() == {"id": tid, "project_id": pid, "name": "dig", "duration": 3.0}
    assert client.patch(f"/projects/{pid}/tasks/{tid}", json={"duration": 4.5}).json()["duration"] == 4.5
    assert client.patch(f"/projects/{pid}/tasks/{tid}", json={"name": "dig deep"}).json() == \
        {"id": tid, "project_id": pid, "name": "dig deep", "duration": 4.5}
    assert client.put(f"/projects/{pid}/tasks/{tid}", json={"name": "pour", "duration": 2}).json()["name"] == "pour"
    assert [t["id"] for t in client.get(f"/projects/{pid}/tasks").json()] == [tid]
    assert client.delete(f"/projects/{pid}/tasks/{tid}").status_code == 204
    assert client.get(f"/projects/{pid}/tasks").json() == []


def test_dependencies_and_critical_path(client):
    pid = new_project(client)
    a, b, c, d = (new_task(client, pid, n, dur) for n, dur in [("a", 2), ("b", 3), ("c", 1), ("d", 3)])
    for p, s in [(a, b), (a, c), (b, d), (c, d)]:
        assert link(client, pid, p, s).status_code == 201
    r = link(client, pid, c, b, type="SS", lag=-1)  # b may start 1 before c starts: holds c late start at 3
    assert r.status_code == 201 and r.json()["type"] == "SS" and r.json()["lag"] == -1
    assert len(client.get(f"/projects/{pid}/dependencies").json()) == 5

    cp = client.get(f"/projects/{pid}/critical-path").json()
    assert cp["duration"] == 8 and cp["critical_path"] == [a, b, d] and cp["critical_paths"] == [[a, b, d]]
    by_id = {t["id"]: t for t in cp["tasks"]}
    assert by_id[c] | {"name": "c"} == {"id": c, "name": "c", "duration": 1.0, "earliest_start": 2.0,
                                        "earliest_finish": 3.0, "latest_start": 3.0, "latest_finish": 4.0,
                                        "total_float": 1.0, "free_float": 1.0, "critical": False}

    # deleting the dependency and a task changes the schedule; the task's links go with it
    dep = client.get(f"/projects/{pid}/dependencies").json()[-1]["id"]
    assert client.delete(f"/projects/{pid}/dependencies/{dep}").status_code == 204
    assert client.delete(f"/projects/{pid}/dependencies/{dep}").status_code == 404
    assert client.delete(f"/projects/{pid}/tasks/{b}").status_code == 204
    assert len(client.get(f"/projects/{pid}/dependencies").json()) == 2
    assert client.get(f"/projects/{pid}/critical-path").json()["critical_path"] == [a, c, d]


def test_tied_critical_chains_and_empty_project(client):
    pid = new_project(client)
    a, b, c, d = (new_task(client, pid, n, 2) for n in "abcd")
    for p, s in [(a, b), (a, c), (b, d), (c, d)]:
        link(client, pid, p, s)
    cp = client.get(f"/projects/{pid}/critical-path").json()
    assert cp["critical_paths"] == [[a, b, d], [a, c, d]] and not cp["critical_paths_truncated"]
    capped = client.get(f"/projects/{pid}/critical-path", params={"max_paths": 1}).json()
    assert capped["critical_paths"] == [[a, b, d]] and capped["critical_paths_truncated"]
    empty = client.get(f"/projects/{new_project(client)}/critical-path").json()
    assert empty["duration"] == 0 and empty["critical_path"] == [] and empty["tasks"] == []


def test_dependency_refusals(client):
    pid, other = new_project(client), new_project(client)
    a, b, c = (new_task(client, pid) for _ in range(3))
    x = new_task(client, other)
    assert link(client, pid, a, b).status_code == 201
    assert link(client, pid, b, c).status_code == 201

    cycle = link(client, pid, c, a)
    assert cycle.status_code == 409
    assert all(str(t) in cycle.json()["detail"] for t in (a, b, c)) and "cycle" in cycle.json()["detail"]
    assert link(client, pid, a, b, type="SS").status_code == 409  # duplicate pair
    assert link(client, pid, a, a).status_code == 422  # self-loop
    cross = link(client, pid, a, x)
    assert cross.status_code == 422 and cross.json()["detail"][0]["loc"] == ["body", "successor_id"]
    assert link(client, pid, a, 10**9).status_code == 422
    assert link(client, pid, a, c, type="XX").status_code == 422
    assert link(client, 10**9, a, b).status_code == 404
    assert len(client.get(f"/projects/{pid}/dependencies").json()) == 2


@pytest.mark.parametrize("method, path, body", [
    ("post", "/projects", {}),
    ("post", "/projects", {"name": ""}),
    ("post", "/projects", {"name": "x" * 201}),
    ("post", "/projects", '{"name": "\\ud800"}'),  # a lone surrogate: valid JSON, unstorable text
    ("post", "/projects/{pid}/tasks", {"name": "t", "duration": -1}),
    ("post", "/projects/{pid}/tasks", {"name": "t", "duration": "soon"}),
    ("post", "/projects/{pid}/tasks", {"name": "t", "duration": 1e300}),
    ("post", "/projects/{pid}/tasks", '{"name": "t", "duration": NaN}'),  # Python's json accepts these
    ("post", "/projects/{pid}/tasks", '{"name": "t", "duration": -Infinity}'),
    ("post", "/projects/{pid}/tasks", '[NaN]'),
    ("patch", "/projects/{pid}/tasks/{tid}", {"duration": -2}),
    ("put", "/projects/{pid}/tasks/{tid}", {"name": "t"}),
    ("post", "/projects/{pid}/dependencies", {"predecessor_id": 1}),
    ("post", "/projects/{pid}/dependencies", {"predecessor_id": 1, "successor_id": 2, "lag": "nan"}),
    ("get", "/projects/0", None),
    ("get", f"/projects/{2**64}", None),
    ("get", "/projects/abc", None),
    ("get", "/projects?limit=0", None),
    ("get", "/projects/{pid}/critical-path?max_paths=0", None),
])
def test_invalid_input_is_422_with_field_errors(client, method, path, body):
    pid = new_project(client)
    tid = new_task(client, pid)
    sent = {} if body is None else {"content": body} if isinstance(body, str) else {"json": body}
    r = client.request(method, path.format(pid=pid, tid=tid), headers={"content-type": "application/json"}, **sent)
    assert r.status_code == 422, r.text
    assert r.json()["detail"] and all("loc" in e and "msg" in e for e in r.json()["detail"])


@pytest.mark.parametrize("path", ["/projects/{pid}/tasks/{tid}", "/projects/{pid}/critical-path",
                                  "/projects/{pid}/tasks", "/projects/{pid}/dependencies"])
def test_unknown_ids_are_404(client, path):
    pid, tid = 10**12, 10**12
    assert client.get(path.format(pid=pid, tid=tid)).status_code == 404
    real = new_project(client)
    if "{tid}" in path:  # a task of another project is not found either
        other = new_task(client, new_project(client))
        assert client.get(path.format(pid=real, tid=other)).status_code == 404


def test_import_is_all_or_nothing(client):
    before = len(client.get("/projects", params={"limit": 1000}).json())
    body = {"name": "house",
            "tasks": [{"key": "found", "name": "foundation", "duration": 5},
                      {"key": "walls", "name": "walls", "duration": 10},
                      {"key": "roof", "name": "roof", "duration": 4},
                      {"key": "paint", "name": "paint", "duration": 3}],
            "dependencies": [{"predecessor": "found", "successor": "walls"},
                             {"predecessor": "walls", "successor": "roof"},
                             {"predecessor": "walls", "successor": "paint", "type": "SS", "lag": 6}]}
    r = client.post("/projects/import", json=body)
    assert r.status_code == 201, r.text
    ids = r.json()["task_ids"]
    cp = client.get(f"/projects/{r.json()['id']}/critical-path").json()
    assert cp["duration"] == 19 and cp["critical_path"] == [ids["found"], ids["walls"], ids["roof"]]

    cyclic = {**body, "dependencies": body["dependencies"] + [{"predecessor": "roof", "successor": "found"}]}
    r = client.post("/projects/import", json=cyclic)
    assert r.status_code == 409 and "cycle" in r.json()["detail"]
    assert all(key in r.json()["detail"] for key in ("found", "walls", "roof"))
    for bad in ({**body, "dependencies": [{"predecessor": "found", "successor": "cellar"}]},
                {**body, "dependencies": [{"predecessor": "roof", "successor": "roof"}]},
                {**body, "dependencies": body["dependencies"][:1] * 2},
                {**body, "tasks": body["tasks"] + body["tasks"][:1]}):
        r = client.post("/projects/import", json=bad)
        assert r.status_code == 422, r.text
    assert len(client.get("/projects", params={"limit": 1000}).json()) == before + 1


def test_concurrent_writer_processes_lose_nothing(tmp_path, repo_root):
    """Three processes insert 100 tasks each into one SQLite file at the same time."""
    path = tmp_path / "shared.db"
    engine = make_engine(f"sqlite:///{path}")
    migrate(engine)
    with Session(engine) as s:
        project = Project(name="shared")
        s.add(project)
        s.commit()
        pid = project.id
    writer = (
        "import sys\nfrom sqlalchemy.orm import Session\n"
        "from scheduling.database import make_engine\nfrom scheduling.tables import Task\n"
        "engine = make_engine(sys.argv[1])\n"
        "for i in range(100):\n"
        "    with Session(engine) as s:\n"
        "        s.add(Task(project_id=int(sys.argv[2]), name=f'{sys.argv[3]}-{i}', duration=i))\n"
        "        s.commit()\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", writer, f"sqlite:///{path}", str(pid), f"w{k}"], cwd=repo_root)
             for k in range(3)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    with Session(engine) as s:
        names = sorted(t.name for t in s.get(Project, pid).tasks)
    engine.dispose()
    assert names == sorted(f"w{k}-{i}" for k in range(3) for i in range(100))


def test_generate_with_a_model(model_client):
    """search=false: the model's greedy program alone (no search: no source, no agreement)."""
    png = io.BytesIO()
    Image.new("RGB", (64, 64), "white").save(png, format="PNG")
    r = model_client.post("/generate", params={"max_new_tokens": 24, "search": "false"},
                          files={"image": ("part.png", png.getvalue(), "image/png")})
    assert r.status_code == 200, r.text
    out = r.json()
    assert isinstance(out["program"], str) and isinstance(out["valid"], bool)
    assert out["valid"] == (out["error"] is None)
    assert out["source"] is None and out["agreement"] is None
    assert out["warning"] == "the picture is blank: no part found on it"


def test_generate_with_test_time_search_keeps_a_program_that_builds(model_client, reference_programs):
    """With candidates, the kept program is the proposal whose render agrees best with the picture;
    one that builds beats any that does not (the tiny untrained model's own proposals rarely build)."""
    png = io.BytesIO()
    Image.new("RGB", (64, 64), "white").save(png, format="PNG")
    r = model_client.post("/generate", params={"max_new_tokens": 24, "candidates": 2, "alternatives": 3},
                          files={"image": ("part.png", png.getvalue(), "image/png")})
    assert r.status_code == 200, r.text
    out = r.json()
    assert isinstance(out["program"], str) and out["source"] is not None and out["agreement"] is not None
    assert len(out["alternatives"]) == 3 and all(a["source"].startswith("library:") for a in out["alternatives"])
    assert all(isinstance(a["agreement"], float) for a in out["alternatives"])  # each was rendered and judged
    assert out["source"].removesuffix("+refined") not in [a["source"] for a in out["alternatives"]]
    for bad in ({"candidates": 0}, {"refine": -1}, {"candidates": 65}, {"search": "maybe"},
                {"search": "false", "refine": 1}, {"alternatives": 17}, {"search": "no", "alternatives": 1},
                {"search": "no", "candidates": 2}):
        r = model_client.post("/generate", params=bad, files={"image": ("part.png", png.getvalue(), "image/png")})
        assert r.status_code == 422, (bad, r.text)
    assert "search=false takes no candidates, refine or alternatives" in r.json()["detail"]


def test_generate_refusals(model_client):
    r = model_client.post("/generate", files={"image": ("part.png", b"\x89PNG\r\n\x1a\n not really", "image/png")})
    assert r.status_code == 400 and "not a readable image" in r.json()["detail"]
    assert model_client.post("/generate").status_code == 422
    model_dir, model_client.app.state.model_dir = model_client.app.state.model_dir, None  # as if IMG2CQ_MODEL were unset
    try:
        r = model_client.post("/generate", files={"image": ("part.png", b"whatever", "image/png")})
    finally:
        model_client.app.state.model_dir = model_dir
    assert r.status_code == 503 and "IMG2CQ_MODEL" in r.json()["detail"]


HOSTILE = {
    "infinite loop": "while True:\n    pass\n",
    "hard exit": "import os\nos._exit(3)\n",
    "huge allocation": "x = bytearray(64 * 2**30)\n",
    "syntax": "def (:\n",
}


def test_score_and_hostile_programs_leave_the_server_up(model_client, reference_programs):
    pytest.importorskip("metrics.best_iou")
    BOX = reference_programs["box"]
    r = model_client.post("/score", json={"reference": BOX, "candidate": BOX})
    assert r.status_code == 200, r.text
    assert r.json()["reference_valid"] and r.json()["candidate_valid"] and r.json()["iou"] == pytest.approx(1.0, abs=1e-3)
    for name, code in HOSTILE.items():
        r = model_client.post("/score", json={"reference": BOX, "candidate": code})
        assert r.status_code == 200, (name, r.text)
        assert not r.json()["candidate_valid"] and r.json()["candidate_error"] and r.json()["iou"] == 0, name
        assert model_client.get("/health").status_code == 200
    assert model_client.post("/score", json={"reference": BOX}).status_code == 422



# --------------------------------------------------------------------------------------------
# /generate under load: the batcher, its bounded queue, deadlines, disconnects

def png_bytes() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), "white").save(out, format="PNG")
    return out.getvalue()


def post_image(client):
    """The greedy program alone (search=false): the batched lane."""
    return client.post("/generate", params={"max_new_tokens": 8, "search": "false"},
                       files={"image": ("part.png", png_bytes(), "image/png")})


class GatedModel:
    """Wraps the one call into the model: records each batch's size; the first batch waits for
    ``release`` so that the requests behind it queue up."""

    def __init__(self):
        self.batches: list[int] = []
        self.running, self.release = threading.Event(), threading.Event()
        self.real = model_api.generate_programs

    def __call__(self, model, images, options, *search):
        self.batches.append(len(images))
        self.running.set()
        assert self.release.wait(60), "test never released the model"
        return self.real(model, images, options, *search)


@pytest.fixture
def gated(monkeypatch):
    gate = GatedModel()
    monkeypatch.setattr(model_api, "generate_programs", gate)
    yield gate
    gate.release.set()


def wait_until(condition, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.02)


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'api.db'}"


def test_concurrent_generate_requests_share_one_batched_call(sqlite_url, model_dir, gated):
    with serve(sqlite_url, model_dir, batch_size=8) as client, ThreadPoolExecutor(8) as pool:
        batcher = client.app.state.model_service.batcher
        first = pool.submit(post_image, client)
        assert gated.running.wait(60)
        rest = [pool.submit(post_image, client) for _ in range(7)]
        wait_until(lambda: batcher.waiting == 7, "7 requests wait behind the running batch")
        gated.release.set()
        responses = [f.result() for f in [first, *rest]]
    assert [r.status_code for r in responses] == [200] * 8, [r.text for r in responses]
    assert gated.batches == [1, 7]


def test_the_programs_of_a_batch_are_checked_together_each_distinct_one_once(sqlite_url, model_dir, gated):
    with serve(sqlite_url, model_dir, batch_size=8) as client, ThreadPoolExecutor(8) as pool:
        checker, executor = client.app.state.model_service.checker, client.app.state.executor
        checked, run = [], []
        check, run_in_sandbox = checker.run_batch, executor.map
        checker.run_batch = lambda programs: checked.append(len(programs)) or check(programs)
        executor.map = lambda codes, **options: run.append(len(codes)) or run_in_sandbox(codes, **options)
        first = pool.submit(post_image, client)
        assert gated.running.wait(60)
        rest = [pool.submit(post_image, client) for _ in range(7)]
        wait_until(lambda: client.app.state.model_service.batcher.waiting == 7, "7 requests wait")
        gated.release.set()
        responses = [f.result() for f in [first, *rest]]
    assert [r.status_code for r in responses] == [200] * 8, [r.text for r in responses]
    assert len({r.json()["program"] for r in responses}) == 1  # one picture, one untrained model
    assert gated.batches == [1, 7] and checked == [1, 7] and run == [1, 1]


def test_the_loaded_model_is_kept_out_of_full_garbage_collections(sqlite_url, model_dir):
    """A full collection scanning torch and the model stalls every request for a quarter second."""
    gc.unfreeze()
    with serve(sqlite_url, model_dir) as client:
        assert gc.get_freeze_count() == 0  # nothing frozen before the model is loaded
        assert post_image(client).status_code == 200
        assert gc.get_freeze_count() > 0


def test_warm_up_loads_what_the_first_search_needs_before_any_request(sqlite_url, model_dir):
    with serve(sqlite_url, model_dir, warm_up="true") as client:
        service = client.app.state.model_service
        assert client.get("/health").status_code == 200  # answered while loading
        wait_until(lambda: service.model is not None and service._library is not None, "the warm-up ends")
        assert len(service._library) > 0
        assert post_image(client).status_code == 200


def test_generation_and_the_sandbox_run_below_the_http_loop(sqlite_url, model_dir, monkeypatch):
    """So that /health and refusals answer at once however busy the model and the sandbox are."""
    def niceness() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    generating_at = []
    generate = model_api.generate_programs
    monkeypatch.setattr(model_api, "generate_programs",
                        lambda *args: generating_at.append(niceness()) or generate(*args))
    base = niceness()
    with serve(sqlite_url, model_dir, background_nice=4) as client:
        assert post_image(client).status_code == 200
        workers = [psutil.Process(pid) for pid in client.app.state.executor.worker_pids()]
        assert workers and all(w.nice() == base + 4 for w in workers)
    assert generating_at == [base + 4] and niceness() == base


def test_a_full_queue_answers_503_with_retry_after_at_once(sqlite_url, model_dir, gated, monkeypatch):
    pictures_read = []
    read_image = model_api.read_image
    monkeypatch.setattr(model_api, "read_image", lambda data, *limits: pictures_read.append(1) or read_image(data, *limits))
    with serve(sqlite_url, model_dir, batch_size=1, queue_size=2) as client, ThreadPoolExecutor(3) as pool:
        batcher = client.app.state.model_service.batcher
        admitted = [pool.submit(post_image, client)]
        assert gated.running.wait(60)
        admitted += [pool.submit(post_image, client) for _ in range(2)]
        wait_until(lambda: batcher.waiting == 2, "the queue is full")
        refused = post_image(client)
        assert len(pictures_read) == 3  # refused at the door: its upload was never read
        assert client.get("/health").status_code == 200  # the event loop is free while the model works
        gated.release.set()
        assert [f.result().status_code for f in admitted] == [200] * 3
    assert refused.status_code == 503 and "busy" in refused.json()["detail"]
    assert int(refused.headers["retry-after"]) >= 1
    assert gated.batches == [1, 1, 1]


def test_a_request_past_its_deadline_is_504_and_never_generated(sqlite_url, model_dir, gated):
    with serve(sqlite_url, model_dir, batch_size=1, request_timeout=1) as client, ThreadPoolExecutor(2) as pool:
        running = pool.submit(post_image, client)
        assert gated.running.wait(60)
        queued = pool.submit(post_image, client)
        late = [running.result(timeout=30), queued.result(timeout=30)]  # both answered while the model is held
        gated.release.set()
        wait_until(lambda: client.app.state.model_service.batcher.idle, "the batcher is idle")
    assert [r.status_code for r in late] == [504, 504] and "not answered within 1 s" in late[1].json()["detail"]
    assert gated.batches == [1]  # only the held request's batch ran: the expired one was dropped


async def post_and_hang_up(app, hang_up: threading.Event) -> int:
    """POST /generate straight to the ASGI app, then disconnect once ``hang_up`` is set; the status."""
    request = httpx.Request("POST", "http://test/generate?max_new_tokens=8&search=false",
                            files={"image": ("part.png", png_bytes(), "image/png")})
    body = request.read()
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():
        if messages:
            return messages.pop()
        while not hang_up.is_set():
            await asyncio.sleep(0.02)
        return {"type": "http.disconnect"}

    sent = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/generate", "raw_path": b"/generate", "query_string": b"max_new_tokens=8&search=false",
             "root_path": "", "client": ("127.0.0.1", 50000), "server": ("test", 80),
             "headers": [(k.lower().encode(), v.encode()) for k, v in request.headers.items()]}
    await app(scope, receive, send)
    return sent[0]["status"]


def test_a_client_that_disconnects_before_its_batch_costs_no_generation(sqlite_url, model_dir, gated):
    hang_up = threading.Event()
    with serve(sqlite_url, model_dir, batch_size=1) as client, ThreadPoolExecutor(2) as pool:
        batcher = client.app.state.model_service.batcher
        running = pool.submit(post_image, client)
        assert gated.running.wait(60)
        gone = pool.submit(client.portal.call, post_and_hang_up, client.app, hang_up)
        wait_until(lambda: batcher.waiting == 1, "the second request is queued")
        hang_up.set()
        assert gone.result(timeout=30) == 499
        gated.release.set()
        assert running.result(timeout=60).status_code == 200
        assert post_image(client).status_code == 200
    assert gated.batches == [1, 1]  # the disconnected request never reached the model
