"""A real `uvicorn server:app` on a free loopback port, for tests that use the server as a client would."""

import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.postgres import free_port

REPO = Path(__file__).resolve().parents[1]


@contextmanager
def live_server(env: dict[str, str], workers: int = 1, unset: tuple[str, ...] = ("IMG2CQ_MODEL",),
                start_timeout: float = 120):
    """Start uvicorn with ``env`` on top of this environment (less ``unset``), wait until /health
    answers, yield (base URL, process); always stop it."""
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if k not in unset}
    environment.update(env)
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "server:app", "--host", "127.0.0.1", "--port", str(port),
                             "--workers", str(workers), "--log-level", "warning"], cwd=REPO, env=environment)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            assert proc.poll() is None, "uvicorn exited during start-up"
            try:
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"uvicorn did not answer /health within {start_timeout:g} s"
            time.sleep(0.2)
        yield base, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
