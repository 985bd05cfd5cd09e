"""POST /generate under load: a real `uvicorn server:app` on 127.0.0.1 (free port, the model service
alone: no database) with a model directory, and 1, 4, 16, 64 loopback clients, each level bounded in time.

    python benchmarks/bench_serving.py                       # shipped model, 1/4/16/64 clients, 30 s each
    python benchmarks/bench_serving.py --concurrency 1,16 --seconds 20
    python benchmarks/bench_serving.py --search --concurrency 1,4   # /generate's default search lane

Without --search the clients ask for the model's greedy program alone (`search=false`): the
batched lane, whose throughput this measures; a search runs one request at a time.

Every client posts pictures back to back, going round a set of test pictures (64 of the seed-1000
test split, `benchmarks/pictures`) from its own starting point, so that concurrent requests carry
different pictures, as they would from different users; on 503 it waits the Retry-After it was
given (at most the time left). A /health poller runs throughout, in a process of its own (the
clients' threads and their garbage collections would otherwise delay it as much as the server
does). Per level: requests/s (answers 200 per second of wall time, until the last answer),
p50/p95 latency of the 200s, the worst and the 99th percentile /health latency, and counts of
200, 503 (with/without Retry-After), other answers and client timeouts.
"""

import argparse
import json
import multiprocessing
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=REPO / "models" / "img2cq-cpu", help="model directory")
    p.add_argument("--pictures", type=Path, default=REPO / "benchmarks" / "pictures",
                   help="a PNG every client posts, or a folder whose PNGs (any depth) the clients go round")
    p.add_argument("--concurrency", default="1,4,16,64", help="comma-separated client counts")
    p.add_argument("--seconds", type=float, default=30.0, help="clients start new requests for this long per level")
    p.add_argument("--client-timeout", type=float, default=300.0, help="seconds a client waits for one answer")
    p.add_argument("--batch-size", type=int, default=16, help="IMG2CQ_BATCH_SIZE of the server")
    p.add_argument("--batch-wait-ms", type=float, default=20.0, help="IMG2CQ_BATCH_WAIT_MS of the server")
    p.add_argument("--queue-size", type=int, default=16, help="IMG2CQ_QUEUE_SIZE of the server (small: 64 clients overflow it)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="cap per request (default: the model's own)")
    p.add_argument("--search", action="store_true", help="post with /generate's default test-time search "
                   "(default: search=false, the batched greedy program)")
    p.add_argument("--torch-threads", type=int, default=1, help="IMG2CQ_TORCH_THREADS of the server")
    p.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = p.parse_args(argv)
    for path in (args.model, args.pictures):
        if not path.exists():
            p.error(f"{path} does not exist")
    args.picture_files = sorted(args.pictures.rglob("*.png")) if args.pictures.is_dir() else [args.pictures]
    if not args.picture_files:
        p.error(f"{args.pictures} holds no PNG")
    args.generate_params = {} if args.search else {"search": "false"}
    if args.max_new_tokens is not None:
        args.generate_params["max_new_tokens"] = args.max_new_tokens
    try:
        args.levels = [int(c) for c in args.concurrency.split(",")]
    except ValueError:
        p.error(f"--concurrency must be comma-separated integers, got {args.concurrency!r}")
    return args


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def start_server(args, log) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if k != "DATABASE_URL"}, "IMG2CQ_DB": "", "IMG2CQ_MODEL": str(args.model),
           "IMG2CQ_BATCH_SIZE": str(args.batch_size), "IMG2CQ_BATCH_WAIT_MS": str(args.batch_wait_ms),
           "IMG2CQ_QUEUE_SIZE": str(args.queue_size), "IMG2CQ_REQUEST_TIMEOUT": str(args.client_timeout),
           "IMG2CQ_TORCH_THREADS": str(args.torch_threads)}
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "server:app", "--host", "127.0.0.1", "--port", str(port),
                             "--log-level", "warning"], cwd=REPO, env=env, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"error: the server exited during start-up (log: {log.name})")
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("error: the server did not answer /health within 120 s")
        time.sleep(0.2)


def poll_health(base: str, finished, answers) -> None:
    """GET /health every 0.1 s until ``finished``; puts the list of latencies (s) on ``answers``."""
    import httpx

    latencies = []
    with httpx.Client(base_url=base, timeout=30) as c:
        while not finished.is_set():
            sent = time.perf_counter()
            c.get("/health")
            latencies.append(time.perf_counter() - sent)
            finished.wait(0.1)
    answers.put(latencies)


def run_level(base: str, clients: int, args, pictures: list[bytes]) -> dict:
    import httpx

    lock = threading.Lock()
    latencies, counts = [], {"200": 0, "503+retry": 0, "503 bare": 0, "other": 0, "timeout": 0}
    # made before the clock starts, so the load generator's own set-up does not land on the level
    sessions = [httpx.Client(base_url=base, timeout=args.client_timeout) for _ in range(clients)]
    start = time.perf_counter()
    stop_at = start + args.seconds

    def client(number: int) -> float:
        last = start
        next_picture = number * len(pictures) // clients
        with sessions[number] as c:
            while time.perf_counter() < stop_at:
                image = pictures[next_picture % len(pictures)]
                next_picture += 1
                sent = time.perf_counter()
                try:
                    r = c.post("/generate", params=args.generate_params, files={"image": ("part.png", image, "image/png")})
                except httpx.TimeoutException:
                    kind, wait = "timeout", 0.0
                else:
                    retry = r.headers.get("retry-after")
                    kind = ("200" if r.status_code == 200 else "503+retry" if r.status_code == 503 and retry
                            else "503 bare" if r.status_code == 503 else "other")
                    wait = float(retry) if kind == "503+retry" else 0.0
                last = time.perf_counter()
                with lock:
                    counts[kind] += 1
                    if kind == "200":
                        latencies.append(last - sent)
                if wait:
                    time.sleep(min(wait, max(0.0, stop_at - time.perf_counter())))
        return last

    finished, answers = multiprocessing.Event(), multiprocessing.Queue()
    poller = multiprocessing.Process(target=poll_health, args=(base, finished, answers))
    poller.start()
    with ThreadPoolExecutor(clients) as pool:
        ends = list(pool.map(client, range(clients)))
    finished.set()
    health = answers.get(timeout=60)
    poller.join()
    wall = max(ends) - start
    latencies.sort()
    return {"clients": clients, "wall_s": wall, "requests_per_s": counts["200"] / wall,
            "p50_s": statistics.median(latencies) if latencies else None,
            "p95_s": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))] if latencies else None,
            "health_worst_ms": 1000 * max(health), "health_p99_ms": 1000 * sorted(health)[int(0.99 * (len(health) - 1))],
            "counts": counts}


def main(argv=None) -> None:
    args = parse_args(argv)
    import httpx

    pictures = [path.read_bytes() for path in args.picture_files]
    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs; python {platform.python_version()}; "
          f"load average before: {load_average()}")
    model = args.model.resolve()
    model = model.relative_to(REPO) if model.is_relative_to(REPO) else model
    print(f"server: batch {args.batch_size}, wait {args.batch_wait_ms} ms, queue {args.queue_size}; "
          f"torch threads {args.torch_threads}; model {model}; {args.seconds:.0f} s per level; max_new_tokens {args.max_new_tokens or 'model default'}; "
          f"{len(pictures)} distinct pictures")
    with tempfile.TemporaryDirectory() as tmp:
        log = open(Path(tmp) / "server.log", "w")
        proc, base = start_server(args, log)
        try:
            warm = httpx.post(base + "/generate", files={"image": ("part.png", pictures[0], "image/png")},
                              params=args.generate_params, timeout=args.client_timeout)  # loads the model
            if warm.status_code != 200:
                raise SystemExit(f"error: warm-up request answered {warm.status_code}: {warm.text[:300]}")
            results = []
            for clients in args.levels:
                results.append(run_level(base, clients, args, pictures))
                r = results[-1]
                print(f"  {clients} clients done: {r['requests_per_s']:.3f} req/s, load {load_average()}", flush=True)
        finally:
            proc.terminate()  # a graceful stop waits for the running batch: bounded here
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
    print(f"load average after: {load_average()}\n")
    print("| clients | requests/s | p50 s | p95 s | /health worst ms | /health p99 ms | 200 | 503 + Retry-After | 503 without | other | timeouts |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        c = r["counts"]
        p50 = "-" if r["p50_s"] is None else f"{r['p50_s']:.1f}"
        p95 = "-" if r["p95_s"] is None else f"{r['p95_s']:.1f}"
        print(f"| {r['clients']} | {r['requests_per_s']:.3f} | {p50} | {p95} | {r['health_worst_ms']:.0f} | {r['health_p99_ms']:.0f} | "
              f"{c['200']} | {c['503+retry']} | {c['503 bare']} | {c['other']} | {c['timeout']} |")
    one = next((r for r in results if r["clients"] == 1), None)
    if one and one["requests_per_s"]:
        for r in results:
            print(f"{r['clients']} clients: {r['requests_per_s'] / one['requests_per_s']:.1f}x one-at-a-time")
    if args.out:
        args.out.write_text(json.dumps({"command": sys.argv, "settings": vars(args) | {"model": str(args.model),
                                        "pictures": str(args.pictures), "picture_files": len(pictures), "out": str(args.out)}, "results": results},
                                       indent=1, default=str))


if __name__ == "__main__":
    main()
