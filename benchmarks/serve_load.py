"""Load on ``jrtc serve`` over loopback, next to the same load through one in-process ``Session``.

    python benchmarks/serve_load.py [--clients 1,16,64] [--tokens 64] [--requests 64] [--rounds 3]
                                    [--max-batch 64] [--out PATH] [--quiet]

The built-in example is exported with ``--max-batch`` slots into a temporary directory and served by
``jrtc serve`` in a subprocess on 127.0.0.1. At each level, that many clients stream concurrently, and
a round is ``--requests`` greedy completions of ``--tokens`` tokens split evenly over them, each client
sending its share one after another (JRT-Prompts of the example's recall task, a different one per
request); one warm-up round, then ``--rounds`` measured rounds. Every request must
complete with the tokens of the sequential greedy run (one ``Session`` of one slot), and the server's
RSS is sampled after every round. The baseline runs the same requests through one in-process
``Session`` of the same size (submit, step; a client's next request is submitted when its previous one
finishes), without HTTP. Reported per level: requests/s, tokens/s and p50/p99 time to first token
(from sending the request, or from submitting it, to its first token), as the median over rounds.
Results go to ``benchmarks/results/serve_load.json`` with the machine and its load average.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx
import psutil

from jrtc.example import CHECKPOINT
from jrtc.example.recall_task import eval_rows, load_task
from jrtc.runtime import Engine, SamplingParams, build_prompt
from jrtc.runtime.eval import item_from_row

RESULTS = Path(__file__).resolve().parent / "results" / "serve_load.json"
REQUEST_TIMEOUT_S = 120.0  # one request; the whole run is bounded by levels x rounds x requests of these
START_TIMEOUT_S = 60.0
# The server's RSS may grow from one level to the next (bigger batches, more connections), but not from
# one round to the next of the same load by more than this (its Python heap stays within a few KiB over
# 1,280 requests, measured with tracemalloc; the rest is allocator and socket-buffer peaks).
RSS_TOLERANCE_MIB = 8.0


def log(quiet: bool, *args: object) -> None:
    if not quiet:
        print(*args, file=sys.stderr, flush=True)


def contexts(count: int) -> list[tuple[str, str]]:
    """``count`` (context, question) pairs of the example's recall task (``jrtc eval --task recall``'s rows)."""
    items = [item_from_row(row) for row in eval_rows(load_task(), count, seed=0)]
    return [(item.context, item.question) for item in items]


@dataclass
class Round:
    wall_s: float
    ttft_s: list[float]
    tokens: int
    requests: int

    def summary(self) -> dict[str, float]:
        ttft = sorted(self.ttft_s)
        return {
            "requests_per_s": self.requests / self.wall_s,
            "tokens_per_s": self.tokens / self.wall_s,
            "ttft_p50_ms": 1e3 * percentile(ttft, 50),
            "ttft_p99_ms": 1e3 * percentile(ttft, 99),
        }


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    rank = max(1, -(-len(sorted_values) * q // 100))
    return sorted_values[int(rank) - 1]


def median_of(rounds: list[Round]) -> dict[str, float]:
    summaries = [r.summary() for r in rounds]
    return {key: statistics.median(s[key] for s in summaries) for key in summaries[0]}


# ---- the server --------------------------------------------------------------------------------------


async def stream_one(http: httpx.AsyncClient, url: str, body: dict[str, Any]) -> tuple[float, list[int]]:
    """One streamed completion: seconds to its first token, and its token ids."""
    start = time.perf_counter()
    ttft, ids = None, []
    async with http.stream("POST", f"{url}/v1/completions", json=body, timeout=REQUEST_TIMEOUT_S) as response:
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {(await response.aread()).decode()}")
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(chunk["error"]["message"])
            if ttft is None:
                ttft = time.perf_counter() - start
            ids += chunk["choices"][0]["token_ids"]
    assert ttft is not None, "no tokens"
    return ttft, ids


async def server_round(url: str, jobs: list[list[tuple[dict[str, Any], list[int]]]]) -> tuple[Round, int]:
    """Each client runs its (request, expected ids) jobs in order; all clients at once. -> round, mismatches"""
    ttfts: list[float] = []
    mismatches = 0
    # A connection per request: a reused one can race uvicorn's keep-alive timeout when the clients,
    # on the same cores, fall seconds behind the server (the next request then meets a closed socket).
    limits = httpx.Limits(max_connections=len(jobs), max_keepalive_connections=0)

    async def client(mine: list[tuple[dict[str, Any], list[int]]], http: httpx.AsyncClient) -> None:
        nonlocal mismatches
        for body, expected in mine:
            ttft, ids = await stream_one(http, url, body)
            ttfts.append(ttft)
            mismatches += ids != expected

    async with httpx.AsyncClient(limits=limits) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(mine, http) for mine in jobs))
        wall = time.perf_counter() - start
    tokens = sum(len(expected) for mine in jobs for _, expected in mine)
    return Round(wall, ttfts, tokens, sum(map(len, jobs))), mismatches


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(engine_dir: Path, max_batch: int, max_queue: int, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "jrtc.cli", "serve", str(engine_dir), "--port", str(port)]
    command += ["--max-batch", str(max_batch), "--max-queue", str(max_queue), "--quiet"]
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"serve_load: the server exited: {log.read_text()}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    sys.exit("serve_load: the server did not start")


# ---- the in-process baseline ----------------------------------------------------------------------


def session_round(
    engine: Engine, max_batch: int, params: SamplingParams, jobs: list[list[tuple[Any, list[int]]]]
) -> tuple[Round, int]:
    """The same load through one Session: clients' first requests submitted at once, each next one when
    its client's previous request finishes."""
    session = engine.session(max_batch)
    queues = [list(mine) for mine in jobs]
    owner, submitted, ids, expected_ids = {}, {}, {}, {}
    ttfts: list[float] = []
    mismatches = 0

    def submit(client: int) -> None:
        prompt, expected = queues[client].pop(0)
        request = session.request(prompt, params)
        owner[request], ids[request], expected_ids[request] = client, [], expected
        submitted[request] = time.perf_counter()
        session.submit(request)

    start = time.perf_counter()
    for client in range(len(jobs)):
        submit(client)
    while session.busy:
        for token in session.step():
            request = token.request
            if not ids[request]:
                ttfts.append(time.perf_counter() - submitted[request])
            ids[request].append(token.id)
            if token.finish_reason is not None:
                mismatches += ids.pop(request) != expected_ids.pop(request)
                client = owner.pop(request)
                if queues[client]:
                    submit(client)
    wall = time.perf_counter() - start
    tokens = sum(len(expected) for mine in jobs for _, expected in mine)
    return Round(wall, ttfts, tokens, sum(map(len, jobs))), mismatches


def cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or "unknown"
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown")


def environment() -> dict[str, Any]:
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {cpu_model()}",
        "note": "the load generator, the server and the baseline share these cores (and other jobs do)",
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {p: version(p) for p in ("onnxruntime", "fastapi", "uvicorn", "httpx", "numpy")},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def export_example(engine_dir: Path, max_batch: int) -> None:
    """``jrtc export`` in a subprocess: torch (which export needs) stays out of this process, where the
    in-process baseline runs."""
    command = [sys.executable, "-m", "jrtc.cli", "export", str(CHECKPOINT), "--target", "cpu", "--quiet"]
    command += ["--tokenizer", "bytes", "--max-batch", str(max_batch), "-o", str(engine_dir)]
    subprocess.run(command, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", default="1,16,64", help="concurrent clients per level")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per request")
    parser.add_argument(
        "--requests",
        type=int,
        default=64,
        help="requests per round, split evenly over the clients (at least 1 each)",
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="measured rounds per level, after one warm-up round"
    )
    parser.add_argument("--max-batch", type=int, default=64, help="the engine's slots (the server's too)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    levels = [int(n) for n in args.clients.split(",")]
    per_client = {n: max(1, args.requests // n) for n in levels}
    greedy = SamplingParams(temperature=0.0, max_new_tokens=args.tokens, stop_on_eos=False)
    load_before = os.getloadavg()

    with tempfile.TemporaryDirectory() as tmp:
        engine_dir = Path(tmp) / "recall"
        log(args.quiet, f"exporting {CHECKPOINT.name} with {args.max_batch} slots")
        export_example(engine_dir, args.max_batch)
        engine = Engine.load(engine_dir)

        tasks = contexts(max(n * per_client[n] for n in levels))
        prompts = [build_prompt(context, question) for context, question in tasks]
        log(args.quiet, f"sequential greedy run of {len(prompts)} prompts (the expected tokens)")
        alone = engine.session(max_batch=1)
        expected = [[t.id for t in alone.generate(p, greedy)] for p in prompts]

        server_log = Path(tmp) / "server.log"
        process, url = start_server(engine_dir, args.max_batch, max(levels) * 2, server_log)
        server = psutil.Process(process.pid)
        results, failures = [], 0
        try:
            for n in levels:
                # Client c sends prompts c, c + n, c + 2n, ...: every request of a round differs.
                picks = [[c + n * r for r in range(per_client[n])] for c in range(n)]
                request = {
                    "max_tokens": args.tokens,
                    "temperature": 0,
                    "stream": True,
                    "return_token_ids": True,
                }
                bodies = [
                    [({"prompt": tasks[i][0], "question": tasks[i][1]} | request, expected[i]) for i in mine]
                    for mine in picks
                ]
                baseline_jobs = [[(prompts[i], expected[i]) for i in mine] for mine in picks]
                server_rounds, session_rounds, rss = [], [], []
                for r in range(-1, args.rounds):  # round -1 warms up (checked, not reported)
                    measured, wrong = asyncio.run(server_round(url, bodies))
                    baseline, wrong_baseline = session_round(engine, args.max_batch, greedy, baseline_jobs)
                    failures += wrong + wrong_baseline
                    if r >= 0:
                        server_rounds.append(measured)
                        session_rounds.append(baseline)
                        rss.append(server.memory_info().rss / 2**20)
                    log(
                        args.quiet,
                        f"{n:>3} clients, {'warm-up' if r < 0 else f'round {r}'}: "
                        f"server {measured.summary()['tokens_per_s']:.0f} tok/s, "
                        f"session {baseline.summary()['tokens_per_s']:.0f} tok/s, "
                        f"RSS {server.memory_info().rss / 2**20:.1f} MiB, {wrong + wrong_baseline} mismatched",
                    )
                results.append(
                    {
                        "clients": n,
                        "requests_per_round": n * per_client[n],
                        "server": median_of(server_rounds),
                        "session": median_of(session_rounds),
                        "server_rounds": [x.summary() for x in server_rounds],
                        "session_rounds": [x.summary() for x in session_rounds],
                        "server_rss_mib_after_each_round": rss,
                        "server_rss_growth_mib": rss[-1] - rss[0],
                    }
                )
        finally:
            process.send_signal(signal.SIGTERM)
            exit_code = process.wait(timeout=60)
            if server_log.read_text().strip():
                log(args.quiet, f"server log:\n{server_log.read_text()}")

    rss_flat = all(abs(row["server_rss_growth_mib"]) <= RSS_TOLERANCE_MIB for row in results)
    payload = {
        "benchmark": "serve_load",
        "env": environment() | {"load_average_before": load_before, "load_average_after": os.getloadavg()},
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "quiet")},
        "all_requests_complete_with_expected_tokens": failures == 0,
        "server_exit_code_after_sigterm": exit_code,
        "server_rss_flat_across_rounds": rss_flat,
        "server_rss_tolerance_mib": RSS_TOLERANCE_MIB,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_suffix(".tmp")
    tmp_out.write_text(json.dumps(payload, indent=1) + "\n")
    tmp_out.replace(args.out)

    print(
        "| clients | server req/s | server tok/s | server TTFT p50 / p99 ms | session req/s | session tok/s | session TTFT p50 / p99 ms |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in results:
        s, b = row["server"], row["session"]
        print(
            f"| {row['clients']} | {s['requests_per_s']:.1f} | {s['tokens_per_s']:.0f} | "
            f"{s['ttft_p50_ms']:.1f} / {s['ttft_p99_ms']:.1f} | {b['requests_per_s']:.1f} | "
            f"{b['tokens_per_s']:.0f} | {b['ttft_p50_ms']:.1f} / {b['ttft_p99_ms']:.1f} |"
        )
    for row in results:
        rounds = ", ".join(f"{v:.1f}" for v in row["server_rss_mib_after_each_round"])
        print(f"server RSS after each round at {row['clients']} clients (MiB): {rounds}")
    if failures or exit_code != 0 or not rss_flat:
        sys.exit(
            f"serve_load: {failures} requests did not match the sequential run; server exit {exit_code}; "
            f"RSS flat across rounds: {rss_flat}"
        )
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
