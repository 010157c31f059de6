"""``python -m bench.api``: the HTTP API's cost, against the CLI path, with a real worker and API process.

1. **OpenAI batch vs CLI**: the MiniLM corpus (``sluice.corpus.stdlib_documents``) as an OpenAI
   batch file through the ``openai`` SDK (upload -> create -> poll until completed -> output
   downloaded) against ``sluice submit --wait`` + ``sluice results -o`` (the CLI path, as
   processes); docs/s of each and their ratio, medians of ``--runs``.
2. **Single-document jobs over HTTP** from 8 concurrent clients: jobs accepted/s with clients
   posting back to back (open loop), the API process's CPU per POST (psutil), and POST-to-result
   latency p50/p99 with each client waiting for its job's result before the next (closed loop).

Writes a Markdown table to ``bench/results/api-<stamp>.md``. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.stack import HEARTBEAT_S, databases, find_broker, sluice_worker
from sluice.api.auth import key_hash, new_key
from sluice.corpus import stdlib_documents
from sluice.ledger import Ledger
from sluice.process import spawn, stop_worker
from sluice.registry import BUNDLED_REGISTRY
from sluice.settings import Settings

RESULTS = Path(__file__).with_name("results")
CLIENTS = 8


def stack_env(settings: Settings, threads: int) -> dict[str, str]:
    """The environment of the API and CLI processes (the same settings as the bench worker's)."""
    return {"SLUICE_DATABASE_URL": settings.resolved_database_url, "SLUICE_BROKER_URL": settings.broker_url or "",
            "SLUICE_MODELS_FILE": str(settings.models_file), "SLUICE_QUEUE": settings.queue,
            "SLUICE_VAR_DIR": str(settings.var_dir),
            "SLUICE_CHUNK_SIZE": str(settings.chunk_size), "SLUICE_TORCH_THREADS": str(threads),
            "SLUICE_HEARTBEAT_SECONDS": str(HEARTBEAT_S)}  # fmt: skip


@contextmanager
def api_process(settings: Settings, env: dict[str, str], port: int = 8765) -> Any:
    """``sluice api`` with a fresh submit/read key; yields (base URL, key, psutil process)."""
    key = new_key()
    name = f"bench-{int(time.time())}"
    Ledger.for_settings(settings).create_key(name, "bench", key_hash(key), key[:14], ["read", "submit"])
    cmd = [sys.executable, "-m", "sluice.cli", "api", "--port", str(port), "--log-level", "warning"]
    proc = spawn(cmd, env, settings.var_dir / "bench-api.log")
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.1)
    try:
        yield url, key, psutil.Process(proc.pid)
    finally:
        stop_worker(proc)


def openai_batch(url: str, key: str, docs: list[str], out: Path) -> float:
    """Seconds from upload to the output file downloaded, through the openai SDK."""
    from openai import OpenAI

    client = OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=600)
    bodies = [{"model": "minilm", "input": d} for d in docs]
    requests = [
        {"custom_id": f"d{n}", "method": "POST", "url": "/v1/embeddings", "body": b} for n, b in enumerate(bodies)
    ]
    lines = "".join(json.dumps(r) + "\n" for r in requests)
    start = time.perf_counter()
    uploaded = client.files.create(file=("docs.jsonl", lines.encode()), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h")
    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        time.sleep(0.1)
        batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed" and batch.output_file_id, batch
    client.files.content(batch.output_file_id).write_to_file(out)
    return time.perf_counter() - start


def cli_path(env: dict[str, str], docs: list[str], var: Path) -> float:
    """Seconds for ``sluice submit --wait`` then ``sluice results -o`` (the CLI path)."""
    source = var / "bench-docs.jsonl"
    source.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    run = [sys.executable, "-m", "sluice.cli"]
    full_env = {**os.environ, **env}
    start = time.perf_counter()
    submitted = subprocess.run([*run, "submit", str(source), "--model", "minilm", "--wait"], env=full_env,
                               capture_output=True, text=True, check=True)  # fmt: skip
    job = submitted.stdout.strip().splitlines()[0]
    subprocess.run([*run, "results", job, "-o", str(var / "bench-results.jsonl")], env=full_env, check=True)
    return time.perf_counter() - start


def open_loop(url: str, key: str, docs: list[str], api: psutil.Process) -> tuple[float, float]:
    """(jobs accepted/s, API CPU ms per POST) with 8 clients posting one-document jobs back to back."""
    before = api.cpu_times()
    start = time.perf_counter()

    def post(chunk: list[str]) -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as http:
            for doc in chunk:
                assert http.post("/jobs", json={"model": "minilm", "items": [doc]}).status_code == 201

    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(post, [docs[i::CLIENTS] for i in range(CLIENTS)]))
    elapsed = time.perf_counter() - start
    after = api.cpu_times()
    cpu = (after.user + after.system) - (before.user + before.system)
    return len(docs) / elapsed, 1000 * cpu / len(docs)


def closed_loop(url: str, key: str, docs: list[str], api: psutil.Process) -> dict[str, float]:
    """POST-to-result latency with 8 clients each waiting for its job's result before the next."""
    latencies: list[float] = []
    requests = 0
    before = api.cpu_times()

    def client(chunk: list[str]) -> None:
        nonlocal requests
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as http:
            for doc in chunk:
                start = time.perf_counter()
                job = http.post("/jobs", json={"model": "minilm", "items": [doc]}).json()["id"]
                while http.get(f"/jobs/{job}").json()["status"] not in ("completed", "failed"):
                    requests += 1
                    time.sleep(0.01)
                assert http.get(f"/jobs/{job}/results").status_code == 200
                latencies.append(time.perf_counter() - start)
                requests += 3

    start = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(client, [docs[i::CLIENTS] for i in range(CLIENTS)]))
    elapsed = time.perf_counter() - start
    after = api.cpu_times()
    cpu = (after.user + after.system) - (before.user + before.system)
    cuts = statistics.quantiles(latencies, n=100)
    return {
        "jobs/s": len(docs) / elapsed,
        "p50": cuts[49],
        "p99": cuts[98],
        "cpu_ms_per_request": 1000 * cpu / requests,
    }


def row(*cells: object) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def measure(args: argparse.Namespace, db: str, url_db: str, var: Path, broker: str) -> list[str]:
    settings = Settings(database_url=url_db, broker_url=broker, var_dir=var, queue="sluice-bench-api",
                        models_file=BUNDLED_REGISTRY)  # fmt: skip
    docs = stdlib_documents(limit=args.docs)
    singles = stdlib_documents(limit=args.single_jobs)
    env = stack_env(settings, args.threads)
    rows = []
    with sluice_worker(settings, ["minilm"], args.threads), api_process(settings, env) as (url, key, api):
        cli_path(env, docs[:64], var)  # warm-up
        batch_s = [openai_batch(url, key, docs, var / "bench-out.jsonl") for _ in range(args.runs)]
        cli_s = [cli_path(env, docs, var) for _ in range(args.runs)]
        n = len(docs)
        batch_rate, cli_rate = n / statistics.median(batch_s), n / statistics.median(cli_s)
        runs = [", ".join(f"{n / s:.1f}" for s in times) for times in (batch_s, cli_s)]
        rows.append(row(db, "OpenAI batch (upload → completed → output downloaded)", n, f"{batch_rate:.1f} docs/s",
                        runs[0], f"{batch_rate / cli_rate:.2f}x the CLI path"))  # fmt: skip
        rows.append(row(db, "`sluice submit --wait` + `sluice results -o`", n, f"{cli_rate:.1f} docs/s", runs[1], ""))
        accepted, cpu_post = open_loop(url, key, singles, api)
        rows.append(row(db, f"one-document jobs, {CLIENTS} clients posting back to back", len(singles),
                        f"{accepted:.1f} jobs accepted/s", "", f"API CPU {cpu_post:.2f} ms per POST"))  # fmt: skip
        loop = closed_loop(url, key, singles, api)
        note = (f"POST-to-result p50 {1000 * loop['p50']:.0f} ms, p99 {1000 * loop['p99']:.0f} ms; "
                f"API CPU {loop['cpu_ms_per_request']:.2f} ms per request")  # fmt: skip
        rows.append(row(db, f"one-document jobs, {CLIENTS} clients each waiting for its result", len(singles),
                        f"{loop['jobs/s']:.1f} jobs/s", "", note))  # fmt: skip
    for line in rows:
        print(line, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.api")
    parser.add_argument("--docs", type=int, default=4000)
    parser.add_argument("--single-jobs", type=int, default=400)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--databases", default="sqlite,postgresql")
    args = parser.parse_args()
    var = Path("var/bench").resolve()
    var.mkdir(parents=True, exist_ok=True)
    broker = find_broker(var)
    found = databases(var)
    rows: list[str] = []
    for db in args.databases.split(","):
        if db in found:
            rows += measure(args, db, found[db], var, broker)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    report = (f"# Sluice HTTP API benchmark {stamp}\n\nMiniLM, {args.threads} threads, one worker, one API process; "
              f"medians of {args.runs} run(s).\n\n| database | path | docs | rate | runs | note |\n"
              "|---|---|---:|---:|---|---|\n" + "\n".join(rows) + "\n")  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"api-{stamp}.md"
    out.write_text(report)
    print("\n" + report + f"\nwritten to {out}")


if __name__ == "__main__":
    main()
