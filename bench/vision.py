"""``python -m bench.vision``: image families batched against one image per forward pass, in-process.

For every oracle case (:func:`tests.models.all_cases`) whose items carry an ``image``, its tiny
model is built, its mixed-size test images are repeated to about ``--items`` items, and the Engine
runs them (preprocessing, forward passes, post-processing; no Redis, no database) batched as a
worker would (``max_batch_tokens`` for the device, ``max_batch_size``) and one at a time
(``max_batch_size=1``), with the worker's thread settings (``SLUICE_TORCH_THREADS``, passive
OpenMP waits). Runs alternate, and the median of ``--runs`` is printed as items/s with the ratio.
New image families join by adding oracle cases. The models are tiny, so this measures what
batching saves around a small forward pass (per-operator overhead, Python, collation) rather
than a real model's arithmetic.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from sluice.families import family_for
from sluice.families.base import TaskFamily
from sluice.registry import Registry
from sluice.settings import Settings
from tests.models import OracleCase, all_cases, registry_toml
from worker.engine import Engine
from worker.runtime import configure_threads


def vision_cases(names: list[str] | None = None) -> list[OracleCase]:
    """The oracle cases whose items are images (optionally only the named models)."""
    chosen = [case for case in all_cases() if "image" in (case.inputs() or [{}])[0]]
    return [case for case in chosen if not names or case.model in names]


def load(case: OracleCase, root: Path, device: str) -> TaskFamily:
    """The case's model built under ``root`` and loaded through a registry file, as a worker reads it."""
    path = case.build(root / case.model)
    registry = root / f"{case.model}.toml"
    registry.write_text(registry_toml({case.model: {"task": case.task, "path": str(path), **case.registry}}))
    spec = Registry.load(registry).get(case.model)
    family = family_for(spec.task)(spec, device)
    family.setup()
    return family


def items_of(case: OracleCase, count: int) -> list[tuple[int, dict[str, Any]]]:
    """The case's inputs (job params merged in) repeated to ``count`` items."""
    inputs = case.inputs()
    return [(i, {**case.params, **inputs[i % len(inputs)]}) for i in range(count)]


def items_per_s(family: TaskFamily, items: list[tuple[int, dict[str, Any]]], tokens: int, size: int) -> float:
    """Items/s of one run of ``items`` through an Engine with this budget and batch size."""
    engine = Engine(family, tokens, size)
    start = time.perf_counter()
    done = sum(len(results) for results, _ in engine.run(items))
    assert done == len(items), f"{done} of {len(items)} items came back"
    return len(items) / (time.perf_counter() - start)


def measure(case: OracleCase, root: Path, args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    family = load(case, root, args.device)
    items = items_of(case, args.items)
    tokens = args.max_batch_tokens or settings.batch_tokens(args.device)
    items_per_s(family, items[:4], tokens, settings.max_batch_size)  # warm-up: first-call costs out of the runs
    batched: list[float] = []
    alone: list[float] = []
    for _ in range(args.runs):  # alternated, so a busy moment of the shared machine hits both
        batched.append(items_per_s(family, items, tokens, settings.max_batch_size))
        alone.append(items_per_s(family, items, tokens, 1))
    family.release()
    b, a = statistics.median(batched), statistics.median(alone)
    return {"model": case.model, "task": case.task, "items": len(items), "tokens": tokens, "batched": b, "alone": a}


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | task | items | max_batch_tokens | batched items/s | one at a time items/s | batched / one |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['task']} | {r['items']} | {r['tokens']} | {r['batched']:.1f} "
                     f"| {r['alone']:.1f} | {r['batched'] / r['alone']:.2f}x |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.vision", description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=64, help="items per run (the case's images repeated)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each mode; the median is printed")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-batch-tokens", type=int, help="default: SLUICE_MAX_BATCH_TOKENS or the device's")
    parser.add_argument("--models", nargs="*", help="only these oracle models")
    args = parser.parse_args(argv)
    settings = Settings()
    configure_threads(settings)  # as a worker: SLUICE_TORCH_THREADS, sleeping OpenMP threads (before torch loads)
    import torch

    rows = []
    with tempfile.TemporaryDirectory(prefix="sluice-bench-vision-") as tmp:
        for case in vision_cases(args.models):
            rows.append(measure(case, Path(tmp), args, settings))
            print(f"{case.model}: {rows[-1]['batched']:.1f} vs {rows[-1]['alone']:.1f} items/s", flush=True)
    print()
    print(f"threads {torch.get_num_threads()}, device {args.device}, median of {args.runs} runs\n")
    print(table(rows))


if __name__ == "__main__":
    main()
