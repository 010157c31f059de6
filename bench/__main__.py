"""``python -m bench [--quick]``: docs/s of Sluice and of the baselines, median of several runs.

Per model (the bundled MiniLM for embeddings; a DistilBERT-sized classifier built from its config
with random weights), in one run with the same thread count: a per-document loop, ``pipeline``
with batch_size 32, sentence-transformers ``encode`` (embeddings), a naive one-task-per-document
Celery worker, and Sluice end to end (submit to last commit) on SQLite and PostgreSQL, plus 1,000
single-document jobs. Prints ratios to Sluice and the compute floor; writes a Markdown table to
``bench/results/``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import torch
from sqlalchemy import func, select

from bench import baselines as bl
from bench.stack import databases, find_broker, naive_worker, run_naive, sluice_worker, token_totals
from producer.client import Client
from sluice.corpus import stdlib_documents
from sluice.db import Item, Job
from sluice.registry import BUNDLED_REGISTRY, load_registry
from sluice.settings import Settings

RESULTS = Path(__file__).with_name("results")
#: Progress polling interval: often enough to time a 10 s run to 1%, rarely enough that the
#: measuring process does not take a noticeable share of the 2 cores from the worker.
POLL_S = 0.1


def build_classifier(path: Path, tokenizer_path: str) -> str:
    """DistilBERT-base sized (66M parameters) sequence classifier, random weights, BERT vocabulary."""
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertForSequenceClassification

    if not (path / "config.json").exists():
        torch.manual_seed(0)
        model = DistilBertForSequenceClassification(DistilBertConfig(num_labels=3))
        model.save_pretrained(path)
        AutoTokenizer.from_pretrained(tokenizer_path).save_pretrained(path)
    return str(path)


def median_rate(n_docs: int, runs: int, fn: Callable[[], float]) -> tuple[float, list[float]]:
    rates = [n_docs / fn() for _ in range(runs)]
    return statistics.median(rates), rates


def forward_share(client: Client, jobs: list[str], elapsed: float) -> float:
    """Fraction of ``elapsed`` spent outside the workers' forward passes for ``jobs``."""
    with client.engine.connect() as conn:
        compute_ms = conn.execute(select(func.sum(Item.compute_ms)).where(Item.job_id.in_(jobs))).scalar_one()
    return 1 - compute_ms / 1000 / elapsed


def sluice_bulk(client: Client, model: str, docs: list[str]) -> tuple[float, float]:
    """(seconds submit → last commit, fraction of that time spent outside forward passes)."""
    start = time.perf_counter()
    job = client.submit(model, docs)
    client.wait(job, poll_s=POLL_S)
    elapsed = time.perf_counter() - start
    return elapsed, forward_share(client, [job], elapsed)


def sluice_single_jobs(client: Client, model: str, docs: list[str]) -> tuple[float, float]:
    """(seconds to submit one job per document from 8 producer threads and finish them all,
    fraction of that time outside forward passes)."""
    start = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda d: client.submit(model, [d]), docs))
    while True:
        with client.engine.connect() as conn:
            left = conn.execute(select(func.count()).where(Job.id.in_(ids), Job.finished_at.is_(None))).scalar_one()
        if not left:
            elapsed = time.perf_counter() - start
            return elapsed, forward_share(client, ids, elapsed)
        time.sleep(POLL_S)


def measure_model(name: str, kind: str, path: str, docs: list[str], args: argparse.Namespace, env: dict) -> list[tuple]:
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    rows: list[tuple] = []
    few = docs[: args.baseline_docs]
    tok = AutoTokenizer.from_pretrained(path)
    model = (AutoModel if kind == "embed" else AutoModelForSequenceClassification).from_pretrained(path).eval()

    def add(label: str, n: int, fn: Callable[[], float], note: str = "") -> None:
        rate, rates = median_rate(n, args.runs, fn)
        rows.append((label, n, rate, rates, note))
        print(f"  {label:<44} {rate:8.1f} docs/s  runs={[round(r, 1) for r in rates]} {note}", flush=True)

    print(f"\n== {name} ({len(docs)} documents, {args.threads} threads)")
    add("per-document loop (AutoModel)", len(few), lambda: bl.timed(lambda: bl.per_document_loop(model, tok, few, 256)))
    task = "feature-extraction" if kind == "embed" else "text-classification"
    add("pipeline(batch_size=32)", len(few), lambda: bl.timed(lambda: bl.hf_pipeline(task, path, few, 256)))
    if kind == "embed":
        add(
            "sentence-transformers encode(batch_size=32)", len(docs), lambda: bl.timed(lambda: bl.st_encode(path, docs))
        )
    with naive_worker(env["broker"], env["dbs"]["sqlite"], path, kind, args.threads, env["var"]) as queue:
        add("naive Celery: task per document (SQLite)", len(few), lambda: run_naive(queue, env["dbs"]["sqlite"], few))
    for db, url in env["dbs"].items():
        settings = env["settings"].model_copy(update={"database_url": url})
        with sluice_worker(settings, [name], args.threads) as client:
            sluice_bulk(client, name, docs[:64])  # warm-up
            singles = docs[: args.single_jobs]
            add_sluice(add, rows, f"Sluice end to end ({db})", docs, client, name, sluice_bulk)
            one_job = add_sluice(add, rows, f"Sluice one {len(singles)}-document job ({db})", singles, client, name,
                                 sluice_bulk)  # fmt: skip
            many = add_sluice(add, rows, f"Sluice {len(singles)} single-document jobs ({db})", singles, client, name,
                              sluice_single_jobs)  # fmt: skip
            rows[-1] = (*rows[-1][:4], f"{rows[-1][4]}; {many / one_job:.2f}x the one-job rate")
    lengths = [len(x) for x in tok(docs, truncation=True, max_length=256)["input_ids"]]
    floor = len(docs) / (bl.encoder_flops(model.config, lengths) / env["flops"])
    rows.append(("compute floor (FLOPs / measured matmul FLOP/s)", len(docs), floor, [floor], ""))
    return rows


def add_sluice(
    add: Callable[..., None], rows: list[tuple], label: str, docs: list[str], client: Client, model: str,
    run: Callable[[Client, str, list[str]], tuple[float, float]],
) -> float:  # fmt: skip
    """One Sluice row, noting the median share of time outside forward passes and the padding
    efficiency of its forward passes (from the worker's token totals); returns its docs/s."""
    outside: list[float] = []
    real, padded = 0, 0

    def timed() -> float:
        nonlocal real, padded
        before = token_totals(client, model)
        elapsed, share = run(client, model, docs)
        after = token_totals(client, model)
        outside.append(share)
        real, padded = real + after[0] - before[0], padded + after[1] - before[1]
        return elapsed

    add(label, len(docs), timed)
    efficiency = f"; padding efficiency {real / padded:.3f}" if padded else ""
    rows[-1] = (*rows[-1][:4], f"outside forward: {100 * statistics.median(outside):.1f}%{efficiency}")
    return float(rows[-1][2])


def table(name: str, rows: list[tuple]) -> str:
    ref = next(r[2] for r in rows if r[0].startswith("Sluice end to end"))
    out = [
        f"### {name}",
        "",
        "| method | docs | docs/s (median) | Sluice / method | runs | note |",
        "|---|---:|---:|---:|---|---|",
    ]
    for label, n, rate, rates, note in rows:
        out.append(
            f"| {label} | {n} | {rate:.1f} | {ref / rate:.2f}x | {', '.join(f'{r:.1f}' for r in rates)} | {note} |"
        )
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="a few minutes: fewer documents and runs")
    parser.add_argument("--docs", type=int)
    parser.add_argument("--baseline-docs", type=int, help="documents for the slow baselines")
    parser.add_argument("--single-jobs", type=int)
    parser.add_argument("--runs", type=int)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", default="minilm,classifier")
    args = parser.parse_args()
    quick = args.quick
    args.docs = args.docs or (600 if quick else 4000)
    args.baseline_docs = args.baseline_docs or (200 if quick else 1000)
    args.single_jobs = args.single_jobs or (200 if quick else 1000)
    args.runs = args.runs or (1 if quick else 3)
    torch.set_num_threads(args.threads)

    var = Path("var/bench").resolve()
    var.mkdir(parents=True, exist_ok=True)
    docs = stdlib_documents(limit=args.docs)
    minilm = load_registry(None).get("minilm").path
    clf = build_classifier(var / "distilbert-clf", minilm)
    registry = var / "models.toml"
    registry.write_text(
        BUNDLED_REGISTRY.read_text()
        + f'\n[models.classifier]\ntask = "text-classification"\npath = {json.dumps(clf)}\nmax_length = 256\n'
    )
    broker = find_broker(var)
    env = {"broker": broker, "dbs": databases(var), "var": var, "flops": bl.matmul_flops()}
    env["settings"] = Settings(broker_url=broker, models_file=registry, var_dir=var, queue="sluice-bench")
    print(f"matmul: {env['flops'] / 1e9:.1f} GFLOP/s with {args.threads} threads; broker {broker}")
    sections = []
    for name in args.models.split(","):
        kind, path = ("embed", minilm) if name == "minilm" else ("classify", clf)
        sections.append(table(name, measure_model(name, kind, path, docs, args, env)))
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    header = (
        f"# Sluice benchmark {stamp}{' (quick)' if quick else ''}\n\n"
        f"{len(docs)} documents, {args.threads} threads, median of {args.runs} run(s); "
        f"slow baselines on the first {args.baseline_docs} documents. "
        f"Matmul {env['flops'] / 1e9:.1f} GFLOP/s.\n"
    )
    report = header + "\n\n".join(sections) + "\n"
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"bench-{stamp}{'-quick' if quick else ''}.md"
    out.write_text(report)
    print("\n" + report + f"\nwritten to {out}")


if __name__ == "__main__":
    main()
