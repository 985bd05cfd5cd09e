"""The sandbox as an outside caller meets it: a real `uvicorn server:app` on a temporary SQLite
database, with secrets in its environment, answers hostile `POST /score` candidates without
changing the database or returning a byte of /etc/passwd, of the database or of any process
environment, and `/health` keeps answering throughout.

DATABASE_URL points at the database; SQLAlchemy refuses a password in a SQLite URL
("sqlite://user:pw@/path" is an ArgumentError), so the password rides beside it in
IMG2CQ_DB_PASSWORD, as a deployment would hand it to a PostgreSQL URL.
"""

import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from img2cq.sandbox import strict_isolation_problem
from tests.live_server import live_server as start_live_server

SECRET = "pw-7c1e9a-hunter2"
PROJECT = "kept-project-5d2b"
REFERENCE = "import cadquery as cq\nsolid = cq.Workplane().box(1, 1, 1)\n"
PASSWD_LINES = [line for line in open("/etc/passwd").read().splitlines() if line.strip()]

pytestmark = pytest.mark.skipif(
    strict_isolation_problem() is not None,
    reason=f"the kernel cannot enforce strict isolation here: {strict_isolation_problem()}")


@contextmanager
def live_server(db_path: Path):
    """uvicorn with the database and secrets in its environment; yields (base URL, server pid)."""
    env = {"DATABASE_URL": f"sqlite:///{db_path}", "IMG2CQ_DB_PASSWORD": SECRET, "IMG2CQ_EXEC_TIMEOUT": "5",
           "IMG2CQ_EXEC_MEMORY_MB": "3072"}
    with start_live_server(env, unset=("IMG2CQ_DB", "IMG2CQ_MODEL", "IMG2CQ_ISOLATION"), start_timeout=90) as (base, proc):
        yield base, proc.pid


def database_dump(db_path: Path) -> list[str]:
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as db:
        return list(db.iterdump())


def hostile_candidates(db_path: Path, server_pid: int) -> dict[str, str]:
    return {
        "update_database_by_path": f"import sqlite3\nc = sqlite3.connect({str(db_path)!r})\n"
                                   "c.execute(\"update projects set name='pwned'\")\nc.commit()\n",
        "read_database_tables": f"import sqlite3\nc = sqlite3.connect({str(db_path)!r})\n"
                                "raise RuntimeError(c.execute('select name, sql from sqlite_master').fetchall())\n",
        "read_database_bytes": f"raise RuntimeError(open({str(db_path)!r}, 'rb').read(4000))\n",
        "read_etc_passwd": "raise RuntimeError(open('/etc/passwd').read())\n",
        "read_server_environ": f"raise RuntimeError(open('/proc/{server_pid}/environ', 'rb').read())\n",
        "read_every_environ": "import os\nfound = []\nfor pid in os.listdir('/proc'):\n    try:\n"
                              "        found.append(open(f'/proc/{pid}/environ', 'rb').read())\n"
                              "    except OSError:\n        pass\nraise RuntimeError(found)\n",
        "read_worker_environ": "import os\nraise RuntimeError(open(f'/proc/{os.getppid()}/environ', 'rb').read())\n",
        "list_tmp": "import os\nraise RuntimeError(os.listdir('/tmp'))\n",
        "list_database_directory": f"import os\nraise RuntimeError(os.listdir({str(db_path.parent)!r}))\n",
        # with the audit hook's tables emptied: the server's own limits, low enough to stop it
        "limit_the_server": "import img2cq.sandbox.confine as E\nE._FORBIDDEN_EVENTS = ()\nimport resource\n"
                            f"resource.prlimit({server_pid}, resource.RLIMIT_NOFILE, (3, 3))\n"
                            f"resource.prlimit({server_pid}, resource.RLIMIT_CPU, (1, 1))\n",
    }


def leaks(text: str) -> list[str]:
    found = [line for line in PASSWD_LINES if line in text]
    found += [marker for marker in (SECRET, PROJECT, "SQLite format 3", "CREATE TABLE", "IMG2CQ_") if marker in text]
    return found


def test_hostile_score_requests_change_nothing_and_leak_nothing(tmp_path):
    db_path = tmp_path / "server.db"
    with live_server(db_path) as (base, server_pid):
        created = httpx.post(base + "/projects", json={"name": PROJECT})
        assert created.status_code == 201, created.text
        project = created.json()
        assert httpx.post(f"{base}/projects/{project['id']}/tasks", json={"name": "a", "duration": 2}).status_code == 201
        before_api, before_db = httpx.get(base + "/projects").json(), database_dump(db_path)

        health, stop = [], threading.Event()

        def poll_health() -> None:
            with httpx.Client(base_url=base, timeout=10) as client:
                while not stop.is_set():
                    health.append(client.get("/health").status_code)
                    time.sleep(0.1)

        poller = threading.Thread(target=poll_health)
        poller.start()
        try:
            answers = {}
            with httpx.Client(base_url=base, timeout=60) as client:
                for name, candidate in hostile_candidates(db_path, server_pid).items():
                    response = client.post("/score", json={"reference": REFERENCE, "candidate": candidate})
                    answers[name] = response
                    assert client.get("/health").status_code == 200, f"/health failed after {name}"
        finally:
            stop.set()
            poller.join()

        for name, response in answers.items():
            assert response.status_code == 200, f"{name}: {response.status_code} {response.text[:300]}"
            body = response.json()
            assert body["reference_valid"] and not body["candidate_valid"], f"{name}: {body}"
            assert body["iou"] == 0.0, f"{name}: {body}"
            assert leaks(response.text) == [], f"{name} leaked: {response.text[:300]}"
        assert health and set(health) == {200}, f"/health answered {sorted(set(health))}"
        assert httpx.get(base + "/projects").json() == before_api == [project]
        assert database_dump(db_path) == before_db
        assert any(PROJECT in line for line in before_db)  # the dump does see the data it guards
