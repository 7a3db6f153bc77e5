"""Load test for ``florence2 serve``: N concurrent clients for T seconds against a local server.

    .venv/bin/python scripts/loadtest.py --clients 8 --duration 20 --compare
    .venv/bin/python scripts/loadtest.py --url http://127.0.0.1:8000 --clients 4 --duration 10

Without ``--url`` it starts ``florence2 serve`` on a free loopback port (the embedded model, or
``--model``) and stops it afterwards; ``--compare`` runs once with batching on (``--max-batch-size``,
default 8) and once with it off (``--max-batch-size 1``), each on a fresh server; ``--rounds N``
repeats that, alternating the modes, so that other load on the machine affects both alike.

Each client posts the shipped example images in turn (or the ``--image`` files; multipart, one task
per request, cycling through ``--task``) and checks every answer: 200 with results equal to a direct
``Florence2.predict`` on the same image (strings and coordinates exact, scores within 1e-4), or 503
(queue full, then it waits a little). Every request is counted; anything else (another status, a
wrong answer, a connection error) is reported and makes the exit status 1. Reported: throughput,
latency percentiles, the batch-size histogram from ``/metrics``, and the server's own request
counts, which must match the clients'.

``--poison-clients N`` makes N of the clients send a text that is not valid Unicode (a lone
surrogate) with ``<OPEN_VOCABULARY_DETECTION>``: each must get 422, and the others' throughput is
what it costs them; ``--poison-compare`` runs without and with them on fresh servers. A poison
client waits ``--poison-interval`` seconds after each answer (default 0.4, about a clean client's
pace here); 0 makes it a flood, which tests the cost of any stream of requests refused at once. With a
started server, its resident memory is sampled during the run (idle before, peak, after).

    .venv/bin/python scripts/loadtest.py --clients 16 --duration 20 --poison-clients 1 --poison-compare
    .venv/bin/python scripts/loadtest.py --clients 16 --max-queue 4 --image big.png --duration 20

``--mix`` runs three modes on fresh servers: every client posting to ``/v1/predict``, every client
asking ``POST /v1/chat/completions`` (the OpenAI-compatible route; the same image as a data URL and
the task token as the text, answers checked through their ``florence2`` field), and half the
clients of each kind: both routes feed one queue, so the mixed run should keep the throughput of
either alone.

    .venv/bin/python scripts/loadtest.py --clients 8 --duration 20 --mix --rounds 3
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "florence2" / "assets" / "examples"


# ---------------------------------------------------------------------------------------------
# HTTP helpers (standard library only, so the clients are light)
# ---------------------------------------------------------------------------------------------


def multipart(image: bytes, filename: str, fields: dict[str, str]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"\r\n'
        "Content-Type: image/png\r\n\r\n".encode()
        + image
        + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


class Connection:
    def __init__(self, url: str, headers: dict[str, str]) -> None:
        parts = urlsplit(url)
        self.host, self.port, self.headers = parts.hostname, parts.port or 80, headers
        self.conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None):
        headers = dict(self.headers)
        if content_type:
            headers["Content-Type"] = content_type
        for attempt in range(2):  # one retry on a keep-alive connection the server closed
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
            try:
                self.conn.request(method, path, body=body, headers=headers)
                response = self.conn.getresponse()
                return response.status, dict(response.getheaders()), response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")


PREDICT_PATH = "/v1/predict"
CHAT_PATH = "/v1/chat/completions"


def chat_body(image: bytes, task: str) -> tuple[bytes, str]:
    """A chat-completion request for one task on one image (the image as a data URL)."""
    import base64

    url = "data:image/png;base64," + base64.b64encode(image).decode()
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": task}]
    body = {"model": "florence2", "messages": [{"role": "user", "content": content}]}
    return json.dumps(body).encode(), "application/json"


def answer_of(path: str, data: dict[str, Any]) -> tuple[Any, int]:
    """The results and the batch size of an answer from either route."""
    if path == CHAT_PATH:
        if not isinstance(data["choices"][0]["message"]["content"], str):
            return None, 0  # counted as a wrong answer
        data = data["florence2"]  # the /v1/predict answer for the same request
    return data["results"], data["timings"]["batch_size"]


def get(url: str, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    status, _, body = Connection(url, headers).request("GET", path)
    return status, body


# ---------------------------------------------------------------------------------------------
# Expected answers and comparison
# ---------------------------------------------------------------------------------------------


def same(actual: Any, expected: Any) -> bool:
    if isinstance(expected, dict):
        return (
            isinstance(actual, dict)
            and actual.keys() == expected.keys()
            and all(same(actual[k], expected[k]) for k in expected)
        )
    if isinstance(expected, list):
        return isinstance(actual, list) and len(actual) == len(expected) and all(map(same, actual, expected))
    if isinstance(expected, float) and isinstance(actual, (int, float)):
        return abs(actual - expected) <= 1e-6 + 1e-4 * abs(expected)
    return actual == expected


def expected_answers(images: dict[str, bytes], tasks: list[str], model: str | None) -> dict[tuple[str, str], Any]:
    sys.path.insert(0, str(ROOT))
    from florence2 import Florence2

    predictor = Florence2.from_pretrained(model)
    return {
        (name, task): json.loads(json.dumps(predictor.predict(data, task)))
        for name, data in images.items()
        for task in tasks
    }


# ---------------------------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------------------------


@dataclass
class Tally:
    outcomes: Counter = field(default_factory=Counter)  # ok / wrong / 503 / status-NNN / error
    latencies: list[float] = field(default_factory=list)  # seconds, correct answers only
    batch_sizes: list[int] = field(default_factory=list)
    sent: int = 0
    by_route: Counter = field(default_factory=Counter)  # correct answers per route
    problems: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


POISON_TASK = "<OPEN_VOCABULARY_DETECTION>"


def poison_bodies(images: dict[str, bytes]) -> list[tuple[str, str, bytes, str, str]]:
    """Requests whose text is not valid Unicode (a lone surrogate): each must be answered 422."""
    import base64

    return [
        (
            name,
            "poison",
            json.dumps({"image": base64.b64encode(data).decode(), "tasks": POISON_TASK, "text": "\ud800x"}).encode(),
            "application/json",
            PREDICT_PATH,
        )
        for name, data in images.items()
    ]


def client_loop(
    url: str,
    headers: dict[str, str],
    bodies: list[tuple[str, str, bytes, str, str]],
    expected: dict[tuple[str, str], Any],
    offset: int,
    deadline: float,
    tally: Tally,
    poison_interval: float = 0.0,
) -> None:
    conn = Connection(url, headers)
    index = offset
    while time.monotonic() < deadline:
        name, task, body, content_type, path = bodies[index % len(bodies)]
        index += 1
        with tally.lock:
            tally.sent += 1
        started = time.monotonic()
        try:
            status, response_headers, raw = conn.request("POST", path, body, content_type)
        except Exception as error:  # counted, never lost
            with tally.lock:
                tally.outcomes["error"] += 1
                tally.problems.append(f"{type(error).__name__}: {error}")
            conn = Connection(url, headers)
            continue
        elapsed = time.monotonic() - started
        if task == "poison":
            with tally.lock:
                tally.outcomes["poison-422" if status == 422 else f"poison-status-{status}"] += 1
                if status != 422:
                    tally.problems.append(f"poison request answered {status}: {raw[:200]!r}")
            time.sleep(poison_interval)
            continue
        if status == 200:
            results, batch_size = answer_of(path, json.loads(raw))
            correct = same(results, expected[(name, task)])
            with tally.lock:
                tally.outcomes["ok" if correct else "wrong"] += 1
                tally.by_route[path] += correct
                if correct:
                    tally.latencies.append(elapsed)
                    tally.batch_sizes.append(batch_size)
                else:
                    tally.problems.append(f"wrong answer for {name} {task} from {path}: {results}")
        elif status == 503:
            with tally.lock:
                tally.outcomes["503"] += 1
            time.sleep(min(0.05, float(response_headers.get("retry-after", 1))))
        else:
            with tally.lock:
                tally.outcomes[f"status-{status}"] += 1
                tally.problems.append(f"HTTP {status}: {raw[:200]!r}")


def histogram(metrics: str, name: str) -> dict[str, int]:
    """Per-bucket counts (not cumulative) of an unlabelled histogram."""
    cumulative = []
    for line in metrics.splitlines():
        if line.startswith(f"{name}_bucket{{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            cumulative.append((le, int(float(line.rsplit(" ", 1)[1]))))
    out, previous = {}, 0
    for le, count in cumulative:
        out[le] = count - previous
        previous = count
    return out


def server_counts(metrics: str) -> dict[str, int]:
    """Responses by status of both prediction routes, from the server's own counter."""
    counts: Counter = Counter()
    for route in (PREDICT_PATH, CHAT_PATH):
        prefix = f'florence2_http_requests_total{{route="{route}",status="'
        for line in metrics.splitlines():
            if line.startswith(prefix):
                counts[line[len(prefix) :].split('"', 1)[0]] += int(float(line.rsplit(" ", 1)[1]))
    return dict(counts)


class MemorySampler:
    """Resident memory of a process (``/proc``, Linux): idle when made, peak while running, at the end."""

    def __init__(self, pid: int | None) -> None:
        self.pid, self.peak_mib = pid, 0.0
        self.idle_mib = self.read()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        if self.idle_mib is not None:
            self._thread.start()

    def read(self) -> float | None:
        try:
            with open(f"/proc/{self.pid}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024
        except (OSError, TypeError):
            return None
        return None

    def _run(self) -> None:
        while not self._done.wait(0.02):
            self.peak_mib = max(self.peak_mib, self.read() or 0.0)

    def stop(self) -> None:
        self._done.set()
        if self._thread.is_alive():
            self._thread.join()
        self.end_mib = self.read()

    def figures(self) -> dict[str, float] | None:
        if self.idle_mib is None:
            return None
        return {"idle": round(self.idle_mib), "peak": round(self.peak_mib), "end": round(self.end_mib or 0)}


def run_load(
    args: argparse.Namespace,
    url: str,
    label: str,
    expected: dict,
    images: dict[str, bytes],
    pid: int | None = None,
    poisoned: int = 0,
    chat_clients: int = 0,
) -> dict:
    headers = {"X-API-Key": args.api_key} if args.api_key else {}
    bodies = [
        (name, task, *multipart(data, name, {"task": task}), PREDICT_PATH)
        for name, data in images.items()
        for task in args.task
    ]
    chats = [(name, task, *chat_body(data, task), CHAT_PATH) for name, data in images.items() for task in args.task]
    # one sequential warm-up round (first-call allocations), not counted by the clients
    warm = Connection(url, headers)
    for _name, _task, body, content_type, path in bodies + (chats if chat_clients else []):
        warm.request("POST", path, body, content_type)
    _, before = get(url, "/metrics", headers)

    tally = Tally()
    deadline = time.monotonic() + args.duration
    poison = poison_bodies(images)

    def bodies_of(client: int) -> list[tuple[str, str, bytes, str, str]]:
        # the first clients are the poison ones, the last ``chat_clients`` ask for chat completions
        return poison if client < poisoned else chats if client >= args.clients - chat_clients else bodies

    threads = [
        threading.Thread(
            target=client_loop,
            args=(url, headers, bodies_of(i), expected, i, deadline, tally, args.poison_interval),
        )
        for i in range(args.clients)
    ]
    memory = MemorySampler(pid)
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - started
    memory.stop()
    _, after = get(url, "/metrics", headers)
    before_text, after_text = before.decode(), after.decode()

    sizes_before = histogram(before_text, "florence2_batch_size")
    sizes = {le: n - sizes_before.get(le, 0) for le, n in histogram(after_text, "florence2_batch_size").items()}
    counts_before = server_counts(before_text)
    server = {s: n - counts_before.get(s, 0) for s, n in server_counts(after_text).items()}
    server = {s: n for s, n in server.items() if n}
    latencies = sorted(tally.latencies)

    def pct(q: float) -> float:
        return 1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else float("nan")

    counted = sum(tally.outcomes.values())
    return {
        "label": label,
        "load_average_1min": round(os.getloadavg()[0], 2),
        "clients": args.clients,
        "chat_clients": chat_clients,
        "poison_clients": poisoned,
        "server_rss_mib": memory.figures(),
        "duration_s": round(wall, 2),
        "sent": tally.sent,
        "outcomes": dict(tally.outcomes),
        "lost": tally.sent - counted,
        "server_status_counts": server,
        "throughput_rps": round(tally.outcomes["ok"] / wall, 2),
        "throughput_by_route_rps": {route: round(n / wall, 2) for route, n in sorted(tally.by_route.items())},
        "latency_ms": {
            "p50": round(pct(0.50), 1),
            "p90": round(pct(0.90), 1),
            "p99": round(pct(0.99), 1),
            "mean": round(1000 * statistics.fmean(latencies), 1) if latencies else None,
        },
        "mean_batch_size": round(statistics.fmean(tally.batch_sizes), 2) if tally.batch_sizes else None,
        "batch_size_histogram": {le: n for le, n in sizes.items() if n},
        # exact sizes: a batch of b answers b requests, so b's count / b batches
        "batches_by_size": {b: round(n / b, 1) for b, n in sorted(Counter(tally.batch_sizes).items())},
        "problems": tally.problems[:10],
    }


# ---------------------------------------------------------------------------------------------
# Server process
# ---------------------------------------------------------------------------------------------


class ServerProcess:
    def __init__(self, args: argparse.Namespace, max_batch_size: int) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "florence2.cli", "serve", "--port", str(self.port)]
        command += ["--max-batch-size", str(max_batch_size), "--max-queue", str(args.max_queue)]
        command += ["--log-level", "warning", "--max-decodes", str(args.max_decodes)]
        if args.max_wait_ms is not None:
            command += ["--max-wait-ms", str(args.max_wait_ms)]
        if args.model:
            command += ["--model", args.model]
        env = dict(os.environ)
        if args.api_key:
            env["FLORENCE2_API_KEY"] = args.api_key
        self.command = command
        self.process = subprocess.Popen(command, cwd=ROOT, env=env)

    def __enter__(self) -> ServerProcess:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}")
            try:
                if get(self.url, "/health", {})[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError("the server did not start within 120 s")

    def __exit__(self, *exc: Any) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def report(results: list[dict]) -> str:
    lines = [
        "| mode | clients | s | sent | correct | 503 | other | lost | req/s | p50 ms | p90 ms | p99 ms "
        "| mean batch | load |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        other = sum(n for k, n in r["outcomes"].items() if k not in ("ok", "503", "poison-422"))
        lat = r["latency_ms"]
        lines.append(
            f"| {r['label']} | {r['clients']} | {r['duration_s']} | {r['sent']} | {r['outcomes'].get('ok', 0)} | "
            f"{r['outcomes'].get('503', 0)} | {other} | {r['lost']} | {r['throughput_rps']} | {lat['p50']} | "
            f"{lat['p90']} | {lat['p99']} | {r['mean_batch_size']} | {r['load_average_1min']} |"
        )
    lines.append("")
    for r in results:
        if r["poison_clients"]:
            lines.append(
                f"poison clients ({r['label']}): {r['poison_clients']}, answered 422: "
                f"{r['outcomes'].get('poison-422', 0)}"
            )
        if r["chat_clients"]:
            lines.append(f"correct answers per second by route ({r['label']}): {r['throughput_by_route_rps']}")
        if r["server_rss_mib"]:
            rss = r["server_rss_mib"]
            lines.append(f"server RSS MiB ({r['label']}): idle {rss['idle']}, peak {rss['peak']}, end {rss['end']}")
    lines.append("")
    for r in results:
        hist = ", ".join(f"<={le}: {n}" for le, n in r["batch_size_histogram"].items())
        lines.append(f"batches per size bucket, from /metrics ({r['label']}): {hist}")
        exact = ", ".join(f"{b}: {n:g}" for b, n in r["batches_by_size"].items())
        lines.append(f"batches by exact size, from the answers ({r['label']}): {exact}")
        lines.append(f"server status counts ({r['label']}): {r['server_status_counts']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="target a running server instead of starting one")
    parser.add_argument("--model", help="checkpoint for the started server and the expected answers")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per run")
    parser.add_argument("--task", action="append", help="task token (repeatable; default <OD>)")
    parser.add_argument("--max-batch-size", type=int, default=8, help="for the started server")
    parser.add_argument("--max-wait-ms", type=float, default=None, help="for the started server (default: its own)")
    parser.add_argument("--max-queue", type=int, default=64, help="for the started server")
    parser.add_argument("--compare", action="store_true", help="run with batching on, then off (batch size 1)")
    parser.add_argument("--rounds", type=int, default=1, help="repeat the runs, alternating the modes")
    parser.add_argument("--api-key", default=os.environ.get("FLORENCE2_API_KEY"))
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--image", action="append", type=Path, help="post these images (repeatable; default examples)")
    parser.add_argument("--max-decodes", type=int, default=2, help="for the started server")
    parser.add_argument("--poison-clients", type=int, default=0, help="clients sending text that is not Unicode")
    parser.add_argument("--poison-compare", action="store_true", help="run without the poison clients, then with them")
    parser.add_argument(
        "--mix",
        action="store_true",
        help="run with every client on /v1/predict, every client on /v1/chat/completions, then half of each",
    )
    parser.add_argument(
        "--poison-interval",
        type=float,
        default=0.4,
        help="seconds a poison client waits after each answer (0: a flood; default about a clean client's pace)",
    )
    args = parser.parse_args(argv)
    args.task = args.task or ["<OD>"]

    paths = args.image or sorted(EXAMPLES.glob("*.png"))
    images = {path.name: path.read_bytes() for path in paths}
    expected = expected_answers(images, args.task, args.model)
    results = []
    if args.url:
        results.append(
            run_load(
                args,
                args.url.rstrip("/"),
                "given server",
                expected,
                images,
                poisoned=args.poison_clients,
                chat_clients=args.clients // 2 if args.mix else 0,
            )
        )
    else:
        # (label, max batch size, poison clients, chat clients)
        modes = [("batching on", args.max_batch_size, args.poison_clients, 0)]
        if args.compare:
            modes.append(("batching off", 1, args.poison_clients, 0))
        if args.poison_compare:
            modes = [("clean", args.max_batch_size, 0, 0), ("poisoned", args.max_batch_size, args.poison_clients, 0)]
        if args.mix:
            modes = [
                ("predict", args.max_batch_size, 0, 0),
                ("chat", args.max_batch_size, 0, args.clients),
                ("mixed", args.max_batch_size, 0, args.clients // 2),
            ]
        for round_index in range(args.rounds):
            for label, size, poisoned, chatting in modes:
                name = f"{label} (max batch {size})" + (f", round {round_index + 1}" if args.rounds > 1 else "")
                with ServerProcess(args, size) as server:
                    print(f"{name}: {' '.join(server.command[1:])}", file=sys.stderr, flush=True)
                    results.append(
                        run_load(
                            args,
                            server.url,
                            name,
                            expected,
                            images,
                            server.process.pid,
                            poisoned=poisoned,
                            chat_clients=chatting,
                        )
                    )
    print(report(results))
    if args.rounds > 1:
        print()
        for label, *_ in modes:
            runs = [r for r in results if r["label"].startswith(f"{label} (")]
            print(
                f"median over {len(runs)} rounds, {label}: "
                f"{statistics.median(r['throughput_rps'] for r in runs):.2f} req/s, "
                f"p50 {statistics.median(r['latency_ms']['p50'] for r in runs):.1f} ms"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    bad = [r for r in results if r["lost"] or set(r["outcomes"]) - {"ok", "503", "poison-422"}]
    for r in bad:
        print(f"{r['label']}: problems: {r['problems']}", file=sys.stderr)
    mismatched = []
    for r in results:
        answered = r["outcomes"].get("ok", 0) + r["outcomes"].get("wrong", 0)
        clients = {
            k: v
            for k, v in (
                ("200", answered),
                ("503", r["outcomes"].get("503", 0)),
                ("422", r["outcomes"].get("poison-422", 0)),
            )
            if v
        }
        if r["server_status_counts"] != clients:
            mismatched.append(r)
            print(
                f"{r['label']}: the server counted {r['server_status_counts']}, the clients {clients}", file=sys.stderr
            )
    return 1 if bad or mismatched else 0


if __name__ == "__main__":
    sys.exit(main())
