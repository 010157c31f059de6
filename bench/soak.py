"""``python -m bench.soak``: many items through a fleet that keeps being hurt; nothing may be lost,
doubled or wrongly failed.

Not part of CI (minutes to hours). It starts its own stack: a PostgreSQL database created and
dropped on the local server (or a SQLite file), a redis-server without persistence on a free
port, its own queue name, the real supervisor (``sluice worker --gpus none --workers N``) whose
children and the reconciler (``sluice reconcile --every 2``) reach PostgreSQL through
``tests.faults.proxy.CuttableProxy`` (in a process of its own); the producer and the final
checks connect directly. While the items run:

* a random worker child is SIGKILLed every ``--kill-every`` seconds (the supervisor restarts it
  with its back-off: 1 s, 2 s, ... reset after a minute up);
* redis-server is killed and started again, empty, once a third of the items have ended;
* the database link is cut for ``--db-down`` (30) seconds once two thirds have ended.

The items are a mix of bulk jobs (``--bulk-jobs`` x 90% of the items) and single-item jobs (the
other 10%), submitted interleaved from one ``Client``. The report (a table, and JSON in
``bench/results/soak-<stamp>.json``) gives items lost, duplicated and wrongly failed (all must be
0) from the item rows, time to drain, each worker process's memory, kills, restarts and the
recovery time after each fault. ``--model tiny`` (default) is the tests' 2-layer BERT classifier
(``tests/models/common.py``), so 100,000 items take minutes on 2 cores; ``--model minilm`` is
the bundled all-MiniLM-L6-v2 (~70 items/s on 2 cores).

Everything it started is stopped, and its database dropped, on the way out (Ctrl-C included).
Logs stay in ``var/soak/<stamp>/``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import soak_report
from bench.soak_faults import Conductor
from bench.soak_stack import (
    ProxyProcess,
    RedisServer,
    postgres_database,
    registry,
    start_reconciler,
    start_supervisor,
    stop_fleet,
    stop_process,
)
from producer.client import Client
from sluice import migrate
from sluice.celery_app import create_app
from sluice.corpus import stdlib_documents
from sluice.process import wait_for_worker
from sluice.settings import Settings

log = logging.getLogger("bench.soak")
RESULTS = Path(__file__).with_name("results")
MODEL_NOTES = {
    "tiny": "tests/models/common.py build_text_classifier: 2-layer BERT, hidden 32, seeded random weights",
    "minilm": "bundled all-MiniLM-L6-v2, feature extraction",
}
RECONCILE_EVERY = 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--kill-every", type=float, default=60.0, metavar="S", help="SIGKILL a random worker every S s")
    p.add_argument("--model", choices=["tiny", "minilm"], default="tiny")
    p.add_argument("--database", choices=["postgresql", "sqlite"], default="postgresql")
    p.add_argument("--bulk-jobs", type=int, default=10, help="bulk jobs sharing 90%% of the items")
    p.add_argument("--redis-down", type=float, default=3.0, metavar="S", help="seconds redis-server stays down")
    p.add_argument("--db-down", type=float, default=30.0, metavar="S", help="seconds the database link stays cut")
    p.add_argument("--stall-timeout", type=float, default=300.0, metavar="S",
                   help="stop waiting when no item has ended for S s (the rest count as lost)")  # fmt: skip
    p.add_argument("--drain-timeout", type=float, default=3 * 3600.0, metavar="S", help="stop waiting after S s")
    p.add_argument("--seed", type=int, default=None, help="seed of the victim choice")
    return p.parse_args(argv)


def texts(n: int) -> list[str]:
    """n real documents (standard-library docstrings, cut at 500 characters) of mixed lengths."""
    docs = [d[:500] for d in stdlib_documents(limit=3000)]
    return [docs[(i * 7919) % len(docs)] for i in range(n)]


def submit_all(client: Client, model: str, docs: list[str], bulk_jobs: int, bulk_size: int) -> dict[str, Any]:
    """Bulk job k, then the k-th share of the single-item jobs, for each k: one producer, interleaved."""
    singles = docs[bulk_jobs * bulk_size :]
    share = -(-len(singles) // bulk_jobs) if bulk_jobs else len(singles)
    out: dict[str, Any] = {"bulk_submit_s": 0.0, "single_submit_s": 0.0, "single_submit_cpu_s": 0.0,
                           "submit_errors": 0, "errors": [], "jobs": 0}  # fmt: skip

    def one(items: list[str], key: str) -> None:
        start, cpu = time.perf_counter(), time.thread_time()
        try:
            client.submit(model, items)
            out["jobs"] += 1
        except Exception as exc:  # noted, never retried: a retry could store the job twice
            out["submit_errors"] += 1
            if len(out["errors"]) < 10:
                out["errors"].append(f"{type(exc).__name__}: {exc}")
        out[key] += time.perf_counter() - start
        if key == "single_submit_s":
            out["single_submit_cpu_s"] += time.thread_time() - cpu

    for k in range(max(bulk_jobs, 1)):
        if k < bulk_jobs:
            one(docs[k * bulk_size : (k + 1) * bulk_size], "bulk_submit_s")
        for doc in singles[k * share : (k + 1) * share]:
            one([doc], "single_submit_s")
        log.info("submitted bulk job %d/%d and %d single-item jobs so far", k + 1, bulk_jobs,
                 min(len(singles), (k + 1) * share))  # fmt: skip
    return out


def wait_drained(conductor: Conductor, planned: int, stall_timeout: float, drain_timeout: float) -> str:
    """Until every item ended and both one-off faults are over; or no progress for ``stall_timeout``."""
    last, changed, start, said = -1, time.monotonic(), time.monotonic(), 0.0
    while True:
        ended = conductor.ended
        if ended >= planned and conductor.faults_over:
            return "drained"
        if ended != last:
            last, changed = ended, time.monotonic()
        elif time.monotonic() - changed > stall_timeout:
            return f"stalled: no item ended for {stall_timeout:.0f}s"
        if time.monotonic() - start > drain_timeout:
            return f"drain timeout {drain_timeout:.0f}s"
        if time.monotonic() - said >= 15:
            said = time.monotonic()
            line = conductor.timeline
            back = next((p for p in reversed(line) if p[0] <= line[-1][0] - 15), line[0]) if line else (0, 0)
            rate = (ended - back[1]) / max(line[-1][0] - back[0], 1e-9) if line else 0.0
            log.info("%.0fs: %d/%d items ended (%.0f items/s over 15 s)", conductor.now(), ended, planned, rate)
        time.sleep(1.0)


def log_counts(path: Path) -> dict[str, int]:
    text = path.read_text(errors="replace") if path.exists() else ""
    marks = {"database outage began": "unreachable; retrying with back-off", "database back": "reachable again after",
             "chunk failed and requeued": "failed; requeued", "lost run split": "split into chunks",
             "chunks of a gone worker re-enqueued": "now gone; re-enqueued", "tracebacks": "Traceback",
             "reconcile resent everything (broker lost data)": "the broker lost its messages"}  # fmt: skip
    return {k: text.count(v) for k, v in marks.items()}


def run(args: argparse.Namespace) -> int:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    run_id = uuid.uuid4().hex[:6]
    var = Path("var/soak").resolve() / f"{stamp}-{run_id}"
    var.mkdir(parents=True, exist_ok=True)
    host, queue = f"soak-{run_id}", f"soak-{run_id}"
    bulk_size = (args.items * 9 // 10) // args.bulk_jobs if args.bulk_jobs else 0
    planned = args.items
    log.info("soak %s: %d items, %d workers, kill every %.0fs, model %s, %s; logs in %s", run_id, planned,
             args.workers, args.kill_every, args.model, args.database, var)  # fmt: skip
    docs = texts(planned)
    models_file = registry(Path("var/soak").resolve(), args.model)
    redis_server = RedisServer(var)
    proxy: ProxyProcess | None = None
    supervisor = reconciler = None
    conductor: Conductor | None = None
    with contextlib.ExitStack() as stack:
        try:
            redis_server.start()
            if args.database == "postgresql":
                url = stack.enter_context(postgres_database(f"sluice_soak_{run_id}"))
                proxy = ProxyProcess(url)
                worker_url = proxy.url
            else:
                url = worker_url = f"sqlite:///{var / 'soak.db'}"
            settings = Settings(database_url=url, broker_url=redis_server.url, models_file=models_file,
                                var_dir=var, queue=queue)  # fmt: skip
            migrate.upgrade(settings)
            env = {"SLUICE_DATABASE_URL": worker_url, "SLUICE_BROKER_URL": redis_server.url,
                   "SLUICE_MODELS_FILE": str(models_file), "SLUICE_QUEUE": queue, "SLUICE_VAR_DIR": str(var),
                   "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
            supervisor = start_supervisor(env, args.model, args.workers, host, var / "workers.log")
            reconciler = start_reconciler(env, RECONCILE_EVERY, var / "reconcile.log")
            app = create_app(settings)
            for k in range(args.workers):
                wait_for_worker(app, f"cpu{k}@{host}", supervisor, timeout=300)
            epoch = redis_server.client()
            deadline = time.monotonic() + 60
            while not epoch.exists(f"{queue}:epoch") and time.monotonic() < deadline:
                time.sleep(0.2)
            log.info("%d workers ready, reconciler running", args.workers)
            conductor = Conductor(
                url, planned, supervisor, {"supervisor": supervisor.pid, "reconciler": reconciler.pid},
                redis_server, proxy, kill_every=args.kill_every, redis_down=args.redis_down, db_down=args.db_down,
                seed=args.seed,
            )  # fmt: skip
            conductor.start()
            client = Client(settings)
            submit_start = conductor.now()
            submitted = submit_all(client, args.model, docs, args.bulk_jobs, bulk_size)
            submit_end = conductor.now()
            log.info("submitted %d jobs in %.1fs", submitted["jobs"], submit_end - submit_start)
            outcome = wait_drained(conductor, planned, args.stall_timeout, args.drain_timeout)
            conductor.stop()
            log.info("%s at %.0fs; checking the rows", outcome, conductor.now())
            report = build_report(args, stamp, conductor, submitted, submit_start, submit_end, outcome, url,
                                  redis_server.url, var, bulk_size, len(client.unsent))  # fmt: skip
        finally:
            steps: list[tuple[str, Any]] = []
            if conductor is not None:
                steps += [("conductor", conductor.stop), ("heal", conductor.heal)]
            if proxy is not None:
                steps.append(("proxy restore", proxy.restore))
            known = conductor.known_pids if conductor is not None else set()
            steps += [("workers", lambda: stop_fleet(supervisor, known, host)),
                      ("reconciler", lambda: stop_process(reconciler, 10))]  # fmt: skip
            if proxy is not None:
                steps.append(("proxy", proxy.close))
            steps.append(("redis-server", redis_server.stop))
            for what, step in steps:  # each step runs whatever the others did; the database is dropped last
                try:
                    step()
                except Exception as exc:
                    log.error("cleanup of %s failed: %s", what, exc)
    table = soak_report.render(report)
    print("\n" + table + "\n")
    if RESULTS.is_dir():
        out = RESULTS / f"soak-{stamp}.json"
        out.write_text(json.dumps({**report, "table": table}, indent=2, default=str) + "\n")
        print(f"written to {out}")
    c = report["checks"]
    return 0 if outcome == "drained" and not (c["lost"] or c["duplicated"] or c["wrongly_failed"]) else 1


def build_report(
    args: argparse.Namespace, stamp: str, conductor: Conductor, submitted: dict[str, Any], submit_start: float,
    submit_end: float, outcome: str, url: str, redis_url: str, var: Path, bulk_size: int, unsent: int,
) -> dict[str, Any]:  # fmt: skip
    checks = soak_report.database_checks(url)
    drained_at = next((t for t, n in conductor.timeline if n >= args.items), None)
    singles = args.items - args.bulk_jobs * bulk_size
    workers_log = (var / "workers.log").read_text(errors="replace") if (var / "workers.log").exists() else ""
    total = round(drained_at - submit_start, 1) if drained_at is not None else None
    run_info = {
        "stamp": stamp, "items": args.items, "workers": args.workers, "kill_every": args.kill_every,
        "model": args.model, "model_note": MODEL_NOTES[args.model], "database": args.database,
        "reconcile_every": RECONCILE_EVERY, "bulk_jobs": args.bulk_jobs, "bulk_size": bulk_size,
        "single_jobs": singles, "outcome": outcome, "logs": str(var),
        "submit_s": submit_end - submit_start, "bulk_submit_s": submitted["bulk_submit_s"],
        "bulk_items_per_s": args.bulk_jobs * bulk_size / max(submitted["bulk_submit_s"], 1e-9),
        "single_submit_s": submitted["single_submit_s"],
        "single_ms_per_job": 1000 * submitted["single_submit_s"] / max(singles, 1),
        "single_cpu_ms_per_job": 1000 * submitted["single_submit_cpu_s"] / max(singles, 1),
        "submit_errors": submitted["submit_errors"], "submit_error_samples": submitted["errors"], "unsent": unsent,
        "drain_s": f"{drained_at - submit_end:.1f} s" if drained_at is not None else f"not drained ({outcome})",
        "total_s": total, "overall_rate": f"{args.items / total:.0f}" if total else "n/a",
        "cpus": os.cpu_count(), "load_avg_end": os.getloadavg(),
    }  # fmt: skip
    faults = [{"kind": f.kind, "at": round(f.at, 1), "end": round(f.end, 1) if f.end is not None else None,
               "detail": f.detail, "recovery": conductor.recovery(f.at)} for f in conductor.faults]  # fmt: skip
    for f in conductor.faults:
        if f.end is not None and f.end - f.at > 5:  # also from when the link came back
            faults.append({"kind": f"{f.kind}: counted from the heal", "at": round(f.end, 1), "end": None,
                           "detail": "", "recovery": conductor.recovery(f.end, before=f.at)})  # fmt: skip
    kills = [dict(k, recovery=conductor.recovery(k["at"])) for k in conductor.kills]
    recovered = [k["recovery"]["recovered_s"] for k in kills if isinstance(k["recovery"]["recovered_s"], float | int)]
    if kills:
        faults.insert(0, {"kind": f"worker SIGKILL x{len(kills)} (max; median)", "at": "", "end": None, "detail": "",
                          "recovery": {"pre_rate": "", "recovered_s": f"{max(recovered, default=0)} s; "
                                       f"{sorted(recovered)[len(recovered) // 2] if recovered else 0} s"}})  # fmt: skip
    return {
        "run": run_info, "checks": checks, "faults": faults, "kills": kills,
        "restarts": soak_report.supervisor_restarts(workers_log), "memory": soak_report.memory_rows(conductor.memory),
        "log_counts": {"workers": log_counts(var / "workers.log"), "reconciler": log_counts(var / "reconcile.log")},
        "redis_at_end": soak_report.redis_state(redis_url), "conductor_errors": conductor.errors,
        "timeline": conductor.timeline[:: max(1, len(conductor.timeline) // 600)],
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level="INFO", format="%(asctime)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    def interrupted(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, interrupted)
    try:
        return run(parse_args(argv))
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
