"""``python -m bench.engine_tuning grid|pipeline``: the Engine in-process (no Redis), bundled MiniLM.

``compile``: the bundled MiniLM eager against the same model under ``torch.compile(dynamic=True)``
(a measurement only; workers do not compile): seconds to compile, largest embedding difference,
docs/s compute only.
``grid``: docs/s over ``max_batch_tokens`` x ``max_batch_size`` x chunk size (the sorting
window), compute only.
``pipeline``: docs/s with every batch's results committed to a database, serially (the old loop:
forward, write, cancellation check, one after the other) against writes on the writer thread
during the next forward; also the seconds spent outside forward passes.

Documents are ``sluice.corpus.stdlib_documents``, run in chunks of ``--chunk`` items as a worker
would; configurations run interleaved and the median of ``--runs`` is printed, because the
machine is shared.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.store_writes import new_job, scratch_databases
from sluice.corpus import stdlib_documents
from sluice.families import family_for
from sluice.families.base import TaskFamily
from sluice.ledger import Ledger
from sluice.registry import BUNDLED_REGISTRY, load_registry
from sluice.settings import Settings
from worker.engine import BatchStats, Engine
from worker.hooks import Hooks
from worker.writer import ResultWriter

DEFAULTS = Settings()  # batch settings as configured (SLUICE_MAX_BATCH_TOKENS, SLUICE_MAX_BATCH_SIZE)


def load_minilm() -> TaskFamily:
    spec = load_registry(BUNDLED_REGISTRY).get("minilm")
    family = family_for(spec.task)(spec, "cpu")
    family.setup()
    return family


def chunks(docs: list[str], size: int) -> list[list[tuple[int, dict[str, str]]]]:
    items = [(i, {"text": d}) for i, d in enumerate(docs)]
    return [items[i : i + size] for i in range(0, len(items), size)]


class ForwardClock:
    """Wraps ``family.forward`` to sum the seconds spent inside forward passes."""

    def __init__(self, family: TaskFamily) -> None:
        self.inner = family.forward
        self.seconds = 0.0
        family.forward = self  # type: ignore[method-assign]

    def __call__(self, batch: dict[str, Any]) -> Any:
        start = time.perf_counter()
        try:
            return self.inner(batch)
        finally:
            self.seconds += time.perf_counter() - start


def compute_only(
    family: TaskFamily, docs: list[str], chunk: int, tokens: int, size: int, totals: BatchStats | None = None
) -> tuple[float, float]:
    """(seconds, 0.0) to run ``docs`` in chunks; the batches' statistics are added to ``totals``."""
    start = time.perf_counter()
    for part in chunks(docs, chunk):
        for _, stats in Engine(family, tokens, size).run(part):
            if totals is not None:
                totals.add(stats)
    return time.perf_counter() - start, 0.0


def with_writes(
    family: TaskFamily, clock: ForwardClock, docs: list[str], chunk: int, url: str, writer: bool
) -> tuple[float, float]:
    """(seconds to run and commit every document, of which outside forward passes); ``writer``
    puts the writes on the writer thread."""
    store = Ledger(url, max_attempts=3)
    job = new_job(url, len(docs))
    clock.seconds = 0.0
    start = time.perf_counter()
    for part in chunks(docs, chunk):
        run = Engine(family, DEFAULTS.batch_tokens("cpu"), DEFAULTS.max_batch_size).run(part)
        if writer:
            with ResultWriter(store, "bench", job, Hooks(Settings()), "bench") as w:
                for results, _ in run:
                    w.put({job: results})
        else:
            for results, _ in run:
                store.write_results({job: results}, "bench")
                store.is_cancelled(job)
    wall = time.perf_counter() - start
    return wall, wall - clock.seconds


def interleaved(runs: int, configs: dict[str, Callable[[], tuple[float, float]]], n_docs: int) -> None:
    """Each config ``runs`` times, rotating the order; prints docs/s and the seconds outside forward passes."""
    seconds: dict[str, list[tuple[float, float]]] = {name: [] for name in configs}
    for rep in range(runs):
        names = list(configs)
        names = names[rep % len(names) :] + names[: rep % len(names)]  # rotate: no config always runs first
        for name in names:
            seconds[name].append(configs[name]())
            print(f"  run {rep} {name}: {n_docs / seconds[name][-1][0]:.1f} docs/s", flush=True)
    for name, runs_s in seconds.items():
        rates = [n_docs / wall for wall, _ in runs_s]
        outside = statistics.median(o for _, o in runs_s)
        extra = f"outside forward {outside:6.3f}s  " if outside else ""
        print(f"{name:34} median {statistics.median(rates):7.1f} docs/s  {extra}"
              f"runs {' '.join(f'{r:.1f}' for r in rates)}", flush=True)  # fmt: skip


def compare_compiled(eager: TaskFamily, docs: list[str], args: argparse.Namespace) -> None:
    compiled = load_minilm()
    compiled.model = torch.compile(compiled.model, dynamic=True)  # type: ignore[attr-defined]
    tokens, size = DEFAULTS.batch_tokens("cpu"), DEFAULTS.max_batch_size
    start = time.perf_counter()
    compute_only(compiled, docs[:1], 1, tokens, size)  # dynamo specialises a batch of one: its own graph
    compute_only(compiled, docs[:64], 64, tokens, size)  # and one graph for every larger batch
    print(f"compile: {time.perf_counter() - start:.1f}s")
    sample = [(i, {"text": d}) for i, d in enumerate(docs[:256])]
    outputs = [
        {r.item: r.embedding for results, _ in Engine(f, tokens, size).run(sample) for r in results}
        for f in (eager, compiled)
    ]
    diff = max(float(abs(outputs[0][i] - outputs[1][i]).max()) for i in outputs[0])
    print(f"largest embedding difference over {len(sample)} documents: {diff:.2e}")
    configs = {
        name: (lambda f=f: compute_only(f, docs, args.chunk[0], tokens, size))
        for name, f in (("eager", eager), ("torch.compile", compiled))
    }
    interleaved(args.runs, configs, len(docs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["grid", "pipeline", "compile"])
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--chunk", type=int, nargs="+", default=[DEFAULTS.chunk_size])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, nargs="+", default=[4096, 8192, 16384])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"])
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(args.threads)
    docs = stdlib_documents(limit=args.docs)
    family = load_minilm()
    compute_only(family, docs[:64], 64, 8192, 64)  # warm-up
    print(f"{len(docs)} documents, chunks of {args.chunk}, {args.threads} torch threads, {args.runs} runs")
    if args.mode == "compile":
        compare_compiled(family, docs, args)
        return
    if args.mode == "grid":
        grid = list(itertools.product(args.tokens, args.sizes, args.chunk))
        totals = {key: BatchStats() for key in grid}
        configs = {
            f"tokens {t:5} size {s:3} chunk {c:5}": (
                lambda t=t, s=s, c=c: compute_only(family, docs, c, t, s, totals[(t, s, c)])
            )
            for t, s, c in grid
        }
        interleaved(args.runs, configs, len(docs))
        for (t, s, c), stats in totals.items():  # the same batches every run
            print(f"tokens {t:5} size {s:3} chunk {c:5}  padding efficiency {stats.padding_efficiency:.3f}")
        return
    with tempfile.TemporaryDirectory() as tmp, scratch_databases(Path(tmp)) as urls:
        clock = ForwardClock(family)
        configs = {}
        for backend in args.backends:
            for label, writer in [("serial", False), ("writer thread", True)]:
                configs[f"{backend} {label}"] = lambda u=urls[backend], w=writer: with_writes(
                    family, clock, docs, args.chunk[0], u, w
                )
        interleaved(args.runs, configs, len(docs))


if __name__ == "__main__":
    main()
