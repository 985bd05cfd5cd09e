"""What an attack on the server found, each pinned down: bursts of critical-path reads on SQLite
(every one answered, /health at once throughout), pictures and bodies that are small on the wire
and large in memory (refused from the header, or at the door), text in an answer that cannot be
encoded as UTF-8, and test-time search holding up plain /generate."""

import asyncio
import io
import json
import multiprocessing
import queue
import sqlite3
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import httpx
import psutil
import pytest
from sqlalchemy import event

from img2cq.serving import model_api
from scheduling import cpm
from tests.live_server import live_server
from tests.test_server import model_dir, png_bytes, post_image, serve, wait_until  # noqa: F401 (model_dir: fixture)


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'api.db'}"


def chain_project(client_or_base, n: int = 40) -> int:
    """A project of ``n`` tasks in a chain with a few side links; its id."""
    body = {"name": "chain", "tasks": [{"key": f"t{i}", "name": f"t{i}", "duration": 1 + i % 3} for i in range(n)],
            "dependencies": [{"predecessor": f"t{i}", "successor": f"t{i + 1}"} for i in range(n - 1)]
            + [{"predecessor": f"t{i}", "successor": f"t{i + 3}", "type": "SS", "lag": 1} for i in range(0, n - 3, 5)]}
    post = client_or_base.post if not isinstance(client_or_base, str) else (
        lambda path, **kw: httpx.post(client_or_base + path, timeout=60, **kw))
    r = post("/projects/import", json=body)
    assert r.status_code == 201, r.text
    return r.json()["id"]


# --------------------------------------------------------------------------------------------
# The critical-path API under bursts

BURST = 200


def poll_health(base: str, every: float, stop, results, timeout: float) -> None:
    """GET /health every ``every`` seconds until ``stop`` is set; each latency (``timeout`` for no
    answer) goes to ``results``. Runs in a process of its own, so that the burst's client does not
    delay it."""
    with httpx.Client(base_url=base, timeout=timeout) as client:
        while not stop.is_set():
            started = time.perf_counter()
            try:
                ok = client.get("/health").status_code == 200
            except httpx.TransportError:
                ok = False
            results.put(time.perf_counter() - started if ok else timeout)
            stop.wait(every)


async def burst(base: str, path: str, n: int, timeout: float) -> list[tuple[int | None, float, str | None]]:
    """``n`` concurrent GETs of ``path``: (status or None, seconds, Retry-After) each."""
    async def read(client):
        started = time.perf_counter()
        try:
            r = await client.get(path)
        except httpx.TransportError:
            return None, time.perf_counter() - started, None
        return r.status_code, time.perf_counter() - started, r.headers.get("retry-after")

    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(base_url=base, timeout=timeout, limits=limits) as client:
        return await asyncio.gather(*(read(client) for _ in range(n)))


def burst_with_health_polls(base: str, path: str, n: int, timeout: float = 30):
    """``n`` concurrent GETs of ``path`` while another process polls /health every 50 ms:
    (the burst's answers, the /health latencies)."""
    context = multiprocessing.get_context("spawn")
    stop, results = context.Event(), context.Queue()
    poller = context.Process(target=poll_health, args=(base, 0.05, stop, results, timeout))
    poller.start()
    try:
        time.sleep(1.0)
        answers = asyncio.run(burst(base, path, n, timeout))
        time.sleep(0.3)
    finally:
        stop.set()
    health = []
    while poller.is_alive() or not results.empty():
        try:
            health.append(results.get(timeout=0.5))
        except queue.Empty:
            pass
    poller.join()
    return answers, health


def test_a_burst_of_critical_path_reads_is_answered_while_health_answers_at_once(tmp_path):
    """200 concurrent critical-path reads on SQLite: every one answered within 30 s (200, or 503
    with Retry-After where the database queue is full), and /health under 1 s throughout."""
    env = {"DATABASE_URL": f"sqlite:///{tmp_path / 'burst.db'}", "IMG2CQ_EXEC_WORKERS": "1"}
    with live_server(env) as (base, _):
        pid = chain_project(base)
        answers, health = burst_with_health_polls(base, f"/projects/{pid}/critical-path", BURST)
    statuses = [status for status, _, _ in answers]
    slowest = max(seconds for _, seconds, _ in answers)
    print(f"\n{BURST} critical-path reads: {statuses.count(200)} x 200, {statuses.count(503)} x 503, "
          f"slowest {slowest:.2f} s; /health worst {max(health) * 1000:.0f} ms over {len(health)} polls")
    assert None not in statuses and slowest < 30
    assert all(status == 200 or (status == 503 and retry) for status, _, retry in answers), sorted(set(statuses))
    assert statuses.count(200) == BURST  # the default queue holds the whole burst
    assert max(health) < 1.0


def test_reads_take_no_write_lock(sqlite_url, model_dir):
    """A reader is not held up by a writer holding SQLite's write lock (nor does it take it)."""
    with serve(sqlite_url, model_dir) as client, ThreadPoolExecutor(1) as pool:
        pid = chain_project(client, 5)
        writer = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
        writer.execute("BEGIN IMMEDIATE")
        try:
            read = pool.submit(client.get, f"/projects/{pid}/critical-path")
            answer = read.result(timeout=10)
        finally:
            writer.execute("ROLLBACK")
            writer.close()
    assert answer.status_code == 200 and answer.json()["duration"] > 0


async def get_watching_the_pool(app, path: str) -> tuple[int, int]:
    """GET ``path`` straight to the ASGI app: (status, connections checked out when it was sent)."""
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        if message["type"] == "http.response.start":
            sent.append((message["status"], app.state.scheduling.engine.pool.checkedout()))

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "client": ("127.0.0.1", 50000), "server": ("test", 80), "headers": [(b"host", b"test")]}
    await app(scope, receive, send)
    return sent[0]


def test_the_database_session_is_released_before_the_answer_is_sent(sqlite_url, model_dir):
    with serve(sqlite_url, model_dir) as client:
        pid = chain_project(client, 5)
        for path in (f"/projects/{pid}/critical-path", f"/projects/{pid}/tasks", f"/projects/{pid}"):
            assert client.portal.call(get_watching_the_pool, client.app, path) == (200, 0), path


def test_a_full_database_queue_answers_503_with_retry_after_at_once(sqlite_url, model_dir, monkeypatch):
    release, running = threading.Event(), threading.Semaphore(0)
    schedule = cpm.schedule

    def held(*args):
        running.release()
        assert release.wait(60)
        return schedule(*args)

    with serve(sqlite_url, model_dir, db_connections=1, db_queue_size=1) as client, ThreadPoolExecutor(3) as pool:
        pid = chain_project(client, 5)
        monkeypatch.setattr(cpm, "schedule", held)
        try:
            first = pool.submit(client.get, f"/projects/{pid}/critical-path")
            assert running.acquire(timeout=30)
            second = pool.submit(client.get, f"/projects/{pid}/critical-path")  # waits for the one connection
            time.sleep(0.3)
            started = time.perf_counter()
            third = pool.submit(client.get, f"/projects/{pid}/critical-path").result(timeout=10)
            refused_in = time.perf_counter() - started
            health = client.get("/health")
        finally:
            release.set()
        answers = [first.result(timeout=30), second.result(timeout=30)]
    assert [r.status_code for r in answers] == [200, 200]
    assert third.status_code == 503 and int(third.headers["retry-after"]) >= 1 and "busy" in third.json()["detail"]
    assert refused_in < 2 and health.status_code == 200


def test_health_answers_from_memory(sqlite_url, model_dir):
    with serve(sqlite_url, model_dir) as client:
        statements = []
        event.listen(client.app.state.scheduling.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
        assert client.get("/health").json() == {"status": "ok", "model_configured": True}
    assert statements == []


def test_the_model_service_runs_with_no_database_configured(model_dir, tmp_path, monkeypatch):
    """IMG2CQ_DB set empty and no DATABASE_URL: the model service alone. /health and /generate
    answer, no database is opened or created, and the scheduler's routes are not served."""
    monkeypatch.chdir(tmp_path)  # where the default SQLite file would appear
    connects = []
    monkeypatch.setattr("scheduling.database.make_engine", lambda *a, **k: connects.append(a))
    with serve("", model_dir, db="") as client:
        assert client.app.state.scheduling is None
        assert client.get("/health").json() == {"status": "ok", "model_configured": True}
        assert post_image(client).status_code == 200
        assert client.get("/projects").status_code == 404
        assert not any(path.startswith("/projects") for path in client.get("/openapi.json").json()["paths"])
    assert connects == [] and list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------
# Small on the wire, large in memory

def bilevel_png(width: int, height: int) -> bytes:
    """A valid 1-bit greyscale PNG of width x height black pixels, built chunk by chunk: a few KB."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    packer, compressed = zlib.compressobj(9), []
    rows_at_once = max(1, 2**22 // len(row))
    for start in range(0, height, rows_at_once):
        compressed.append(packer.compress(row * min(rows_at_once, height - start)))
    compressed.append(packer.flush())
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", b"".join(compressed)) + chunk(b"IEND", b""))


class PeakMemory:
    """A process's resident memory (this one's by default), sampled every 5 ms while in the block:
    .growth in bytes."""

    def __init__(self, pid: int | None = None):
        self.pid = pid

    def __enter__(self):
        self.process, self.done = psutil.Process(self.pid), threading.Event()
        self.before = self.peak = self.process.memory_info().rss
        self.sampler = threading.Thread(target=self._sample)
        self.sampler.start()
        return self

    def _sample(self):
        while not self.done.wait(0.005):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __exit__(self, *exc):
        self.done.set()
        self.sampler.join()
        self.growth = self.peak - self.before


@pytest.mark.parametrize("width, height", [(89_000_000, 1), (4097, 4097), (1, 8193)])
def test_a_picture_too_large_in_pixels_is_refused_from_its_header(sqlite_url, model_dir, width, height):
    picture = bilevel_png(width, height)
    assert len(picture) < 64_000
    with serve(sqlite_url, model_dir) as client:
        assert post_image(client).status_code == 200  # model loaded: what follows costs only the picture
        with PeakMemory() as memory:
            started = time.perf_counter()
            r = client.post("/generate", params={"max_new_tokens": 8, "search": "false"},
                            files={"image": ("bomb.png", picture, "image/png")})
            seconds = time.perf_counter() - started
    print(f"\n{width} x {height} PNG of {len(picture)} bytes: {r.status_code} in {seconds * 1000:.0f} ms, "
          f"memory +{memory.growth / 2**20:.1f} MiB")
    assert r.status_code == 400, r.text
    assert r.json()["detail"] == (f"picture of {width} x {height} pixels is too large: at most "
                                  f"{4096 * 4096} pixels and 8192 per side")
    assert seconds < 1 and memory.growth < 100 * 2**20


def test_a_picture_beyond_pils_own_limit_gets_the_same_message(sqlite_url, model_dir):
    with serve(sqlite_url, model_dir) as client:
        r = client.post("/generate", files={"image": ("bomb.png", bilevel_png(20_000, 20_000), "image/png")})
    assert r.status_code == 400
    assert r.json()["detail"] == f"picture is too large: at most {4096 * 4096} pixels and 8192 per side"


async def post_raw(app, path: str, headers: dict[str, str], chunks, *, query: bytes = b""):
    """POST ``chunks`` (an iterable of bytes) straight to the ASGI app: (status, body, bytes it read)."""
    chunks, read, sent = iter(chunks), [0], []

    async def receive():
        chunk = next(chunks, None)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        read[0] += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": query, "root_path": "",
             "client": ("127.0.0.1", 50000), "server": ("test", 80),
             "headers": [(b"host", b"test")] + [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
    await app(scope, receive, send)
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], body, read[0]


LIMIT = 100_000
CHUNK = 2**16


@pytest.mark.parametrize("path, content_type, limit_setting", [
    ("/score", "application/json", "max_body_bytes"),
    ("/projects/import", "application/json", "max_body_bytes"),
    ("/generate", "multipart/form-data; boundary=x", "max_image_bytes"),
])
def test_a_body_over_the_limit_is_refused_at_the_door_by_its_length(sqlite_url, model_dir, path, content_type,
                                                                    limit_setting):
    with serve(sqlite_url, model_dir, **{limit_setting: LIMIT}) as client:
        declared = 200 * 2**20
        status, body, read = client.portal.call(post_raw, client.app, path,
                                                {"content-type": content_type, "content-length": str(declared)},
                                                [b"x" * CHUNK] * 4)
    assert status == 413 and read == 0, (status, body, read)
    assert "request body larger than" in json.loads(body)["detail"]


FORM_START = (b'--x\r\nContent-Disposition: form-data; name="image"; filename="part.png"\r\n'
              b"Content-Type: image/png\r\n\r\n")


@pytest.mark.parametrize("path, content_type, limit_setting, start", [
    ("/score", "application/json", "max_body_bytes", b'{"reference": "'),
    ("/generate", "multipart/form-data; boundary=x", "max_image_bytes", FORM_START),
])
def test_a_streamed_body_is_cut_off_at_the_limit(sqlite_url, model_dir, path, content_type, limit_setting, start):
    """No Content-Length (chunked): the bytes are counted as they arrive, and reading stops there."""
    with serve(sqlite_url, model_dir, **{limit_setting: LIMIT}) as client:
        status, body, read = client.portal.call(post_raw, client.app, path, {"content-type": content_type},
                                                [start] + [b"a" * CHUNK] * 40)
    assert status == 413, (status, body)
    assert "request body larger than" in json.loads(body)["detail"]
    assert read <= LIMIT + 64 * 2**10 + CHUNK  # the upload limit allows the form's own framing


def test_large_bodies_cost_a_real_server_no_memory(tmp_path):
    """Over HTTP to uvicorn, default limits: 64 MiB of JSON with a Content-Length, then streamed
    (chunked), and a streamed 64 MiB upload are each answered 413, the server growing < 100 MB."""
    def chunked(start: bytes, total: int):
        yield start
        for _ in range(total // 2**20):
            yield b"a" * 2**20

    size = 64 * 2**20
    bodies = {"/projects": [{"content": b'{"name": "' + b"a" * size + b'"}'},
                            {"content": chunked(b'{"name": "', size)}],
              "/generate": [{"content": chunked(FORM_START, size)}]}
    env = {"DATABASE_URL": f"sqlite:///{tmp_path / 'bodies.db'}", "IMG2CQ_EXEC_WORKERS": "1"}
    with live_server(env) as (base, server), PeakMemory(server.pid) as memory:
        answers = []
        for path, sends in bodies.items():
            content_type = "application/json" if path == "/projects" else "multipart/form-data; boundary=x"
            for send in sends:
                r = httpx.post(base + path, headers={"content-type": content_type}, timeout=120, **send)
                answers.append((r.status_code, r.json()["detail"]))
        health = httpx.get(base + "/health").status_code
    print(f"\n64 MiB bodies: {[status for status, _ in answers]}, server memory +{memory.growth / 2**20:.1f} MiB")
    assert answers == [(413, f"request body larger than {32 * 2**20} bytes")] * 2 + \
        [(413, f"request body larger than {20 * 2**20 + 2**16} bytes")]
    assert memory.growth < 100 * 2**20 and health == 200


def test_bodies_within_the_limits_still_work(sqlite_url, model_dir):
    with serve(sqlite_url, model_dir, max_body_bytes=LIMIT, max_image_bytes=LIMIT) as client:
        assert post_image(client).status_code == 200
        assert client.post("/projects", json={"name": "x" * 200}).status_code == 201


# --------------------------------------------------------------------------------------------
# Text that cannot be encoded

LONE_SURROGATE = chr(0xD800)


def test_an_answer_carrying_a_lone_surrogate_is_valid_utf8(sqlite_url, model_dir, monkeypatch):
    monkeypatch.setattr(model_api, "score_pair", lambda reference, candidate, executor: {
        "reference_valid": True, "candidate_valid": False, "iou": 0.0,
        "candidate_error": f"runtime: ValueError: {LONE_SURROGATE}"})
    with serve(sqlite_url, model_dir) as client:
        r = client.post("/score", json={"reference": "a", "candidate": "b"})
    assert r.status_code == 200
    assert json.loads(r.content.decode("utf-8", errors="strict"))["candidate_error"] == "runtime: ValueError: \\ud800"


def test_a_program_raising_a_lone_surrogate_is_scored(model_dir, sqlite_url, reference_programs):
    pytest.importorskip("metrics.best_iou")
    with serve(sqlite_url, model_dir) as client:
        r = client.post("/score", json={"reference": reference_programs["box"],
                                        "candidate": "raise ValueError(chr(0xD800))\n"})
    assert r.status_code == 200, r.text
    r.content.decode("utf-8", errors="strict")
    assert r.json()["candidate_valid"] is False and "ValueError" in r.json()["candidate_error"]


# --------------------------------------------------------------------------------------------
# Test-time search has a lane of its own

class HeldSearch:
    """The one call into the model: searching calls wait for ``release``; plain ones run."""

    def __init__(self):
        self.running, self.release = threading.Event(), threading.Event()
        self.real = model_api.generate_programs

    def __call__(self, model, images, options, *rest):
        if options.search:
            self.running.set()
            assert self.release.wait(60), "test never released the search"
            return ["import cadquery as cq\nsolid = cq.Workplane().box(1, 1, 1)\n"] * len(images)
        return self.real(model, images, options, *rest)


def test_the_door_sends_a_request_to_the_lane_its_query_asks_for():
    """The door reads the query as the route does: a search unless ``search`` reads false."""
    assert model_api.searching_query(b"") and model_api.searching_query(b"candidates=8&refine=8")
    assert model_api.searching_query(b"search=true") and model_api.searching_query(b"search=maybe")  # route: 422
    for false in (b"search=false", b"search=0", b"search=No", b"max_new_tokens=8&search=off"):
        assert not model_api.searching_query(false), false


def test_plain_generate_is_not_held_up_by_a_searching_request(sqlite_url, model_dir, monkeypatch):
    held = HeldSearch()
    monkeypatch.setattr(model_api, "generate_programs", held)
    monkeypatch.setattr(model_api.ModelService, "_search_library", lambda self: None)  # no retrieval
    searching = {"max_new_tokens": 8, "candidates": 4, "refine": 20}
    with serve(sqlite_url, model_dir, search_queue_size=1) as client, ThreadPoolExecutor(4) as pool:
        assert post_image(client).status_code == 200  # model loaded, sandbox started
        try:
            search = pool.submit(client.post, "/generate", params=searching,
                                 files={"image": ("part.png", png_bytes(), "image/png")})
            assert held.running.wait(60)
            started = time.perf_counter()
            plain = pool.submit(post_image, client).result(timeout=30)
            plain_s = time.perf_counter() - started
            assert not search.done()
            queued = pool.submit(client.post, "/generate", params=searching,
                                 files={"image": ("part.png", png_bytes(), "image/png")})
            wait_until(lambda: client.app.state.model_service.searcher.waiting == 1, "a search waits")
            refused = client.post("/generate", params=searching,
                                  files={"image": ("part.png", png_bytes(), "image/png")})
            also_plain = post_image(client)
        finally:
            held.release.set()
        answers = [search.result(timeout=60), queued.result(timeout=60)]
    print(f"\nplain /generate behind a held search: {plain_s * 1000:.0f} ms")
    assert plain.status_code == 200 and also_plain.status_code == 200, plain.text
    assert [r.status_code for r in answers] == [200, 200]
    assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
    assert "search" in refused.json()["detail"]
