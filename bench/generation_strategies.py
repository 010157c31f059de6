"""``python -m bench.generation_strategies``: items/s of assisted and prompt-lookup decoding on CPU.

The Engine in-process (no Redis, no database) on tiny GPT-2 models built offline, as a worker
runs a chunk: greedy decoding batched (the normal path), greedy one item per pass (what assisted
decoding costs before any help), with an ``assistant_model`` and with ``prompt_lookup_num_tokens``.
Two drafts: a *good* one (the main model's first layer, embeddings and head; the main model's
other layers are damped so that the draft's guesses are mostly right, as for a distilled draft of
the same family) and a *poor* one (random weights of the same shape: its guesses are mostly
wrong). Prompts: ``--items`` standard-library docstrings, and the same prompts repeated in the
text (``copy``: what prompt lookup is for, summaries and extractions that quote their input).

Configurations run interleaved, ``--runs`` times; the table shows the median items/s and the
ratio to plain batched greedy decoding measured in the same process, and the share of draft
tokens accepted where a draft runs. Results land in ``bench/results/generation-strategies-*.md``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from sluice.corpus import stdlib_documents
from sluice.families import family_for
from sluice.families.generation import GenerationFamily
from sluice.registry import Registry
from sluice.settings import Settings
from tests.models import registry_toml
from tests.models.common import save
from tests.models.text_generation import _bpe
from worker.engine import Engine


def build_pair(root: Path, layers: int, width: int, damp: float) -> None:
    """``main`` (``layers`` layers) and ``good-draft`` (its first layer), plus ``poor-draft``."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = _bpe(None, None)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=width, n_layer=layers, n_head=4, n_positions=256,
                        bos_token_id=0, eos_token_id=0, initializer_range=0.2)  # fmt: skip
    main = GPT2LMHeadModel(config).eval()  # type: ignore[no-untyped-call]
    with torch.no_grad():  # later layers add little: the first layer decides most tokens
        for block in main.transformer.h[1:]:
            block.attn.c_proj.weight.mul_(damp)
            block.mlp.c_proj.weight.mul_(damp)
    save(main, tokenizer, root / "main")
    draft = GPT2LMHeadModel(GPT2Config(**{**config.to_dict(), "n_layer": 1})).eval()  # type: ignore[no-untyped-call]
    state = {k: v for k, v in main.state_dict().items() if not k.startswith("transformer.h.") or ".h.0." in k}
    draft.load_state_dict(state)
    save(draft, tokenizer, root / "good-draft")
    torch.manual_seed(1)
    poor = GPT2LMHeadModel(GPT2Config(**{**config.to_dict(), "n_layer": 1})).eval()  # type: ignore[no-untyped-call]
    save(poor, tokenizer, root / "poor-draft")
    entries = {name: {"task": "text-generation", "path": str(root / name)} for name in ("main", "good-draft",
                                                                                        "poor-draft")}  # fmt: skip
    (root / "models.toml").write_text(registry_toml(entries))


def load(root: Path) -> GenerationFamily:
    registry = Registry.load(root / "models.toml")
    family = family_for("text-generation")(registry.get("main"), "cpu", Settings(models_file=root / "models.toml"))
    family.setup()
    return family  # type: ignore[return-value]


def prompts(n: int, copy: bool) -> list[str]:
    docs = [d[:200] for d in stdlib_documents(limit=n * 3) if len(d) > 80][:n]
    return [f"{d}\nAgain: {d[: len(d) // 2]}" if copy else d for d in docs]


def items_per_s(family: GenerationFamily, texts: list[str], options: dict[str, Any], max_size: int) -> float:
    items = [(i, {"text": t, **options}) for i, t in enumerate(texts)]
    started = time.perf_counter()
    for results, _ in Engine(family, 1 << 16, max_size).run(items):
        for r in results:
            assert r.error is None, r.error
    return len(texts) / (time.perf_counter() - started)


def acceptance(family: GenerationFamily, texts: list[str], draft: str, new_tokens: int) -> float:
    """Share of the draft's guessed tokens the main model kept (transformers' own counters)."""
    from transformers.generation import candidate_generator as cg

    kept = guessed = 0
    original = cg.AssistedCandidateGenerator.update_candidate_strategy

    def count(self: Any, input_ids: Any, scores: Any, num_matches: int) -> None:
        nonlocal kept, guessed
        kept += int(num_matches)
        guessed += int(scores.shape[1] - 1)
        original(self, input_ids, scores, num_matches)

    cg.AssistedCandidateGenerator.update_candidate_strategy = count  # type: ignore[method-assign]
    try:
        items_per_s(family, texts[:4], {"max_new_tokens": new_tokens, "assistant_model": draft}, 1)
    finally:
        cg.AssistedCandidateGenerator.update_candidate_strategy = original  # type: ignore[method-assign]
    return kept / guessed if guessed else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--damp", type=float, default=0.05)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="sluice-bench-gen-"))
    build_pair(root, args.layers, args.width, args.damp)
    family = load(root)
    base = {"max_new_tokens": args.new_tokens}
    configs: dict[str, Callable[[list[str]], float]] = {
        "greedy, batched": lambda t: items_per_s(family, t, base, 16),
        "greedy, one per pass": lambda t: items_per_s(family, t, base, 1),
        "assistant: good draft": lambda t: items_per_s(family, t, {**base, "assistant_model": "good-draft"}, 16),
        "assistant: poor draft": lambda t: items_per_s(family, t, {**base, "assistant_model": "poor-draft"}, 16),
        "prompt lookup, 3 tokens": lambda t: items_per_s(family, t, {**base, "prompt_lookup_num_tokens": 3}, 16),
        "prompt lookup, 10 tokens": lambda t: items_per_s(family, t, {**base, "prompt_lookup_num_tokens": 10}, 16),
    }
    lines = [f"# Generation strategies, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC", "",
             f"`python -m bench.generation_strategies --items {args.items} --new-tokens {args.new_tokens} --runs "
             f"{args.runs} --layers {args.layers} --width {args.width} --damp {args.damp}`; CPU, "
             f"{torch.get_num_threads()} threads; main model {args.layers} layers x {args.width}, drafts 1 layer.",
             ""]  # fmt: skip
    for copy in (False, True):
        texts = prompts(args.items, copy)
        for measure in configs.values():  # warm-up: first loads (the drafts) and allocations
            measure(texts[:2])
        runs: dict[str, list[float]] = {name: [] for name in configs}
        for _ in range(args.runs):
            for name, measure in configs.items():
                runs[name].append(measure(texts))
        plain = statistics.median(runs["greedy, batched"])
        lines += [f"## prompts: {'copy (the text repeated)' if copy else 'plain'}", "",
                  "| configuration | items/s (median) | vs batched greedy | draft tokens accepted |",
                  "|---|---|---|---|"]  # fmt: skip
        for name, values in runs.items():
            draft = name.split(": ")[1].replace(" ", "-") if name.startswith("assistant") else None
            accepted = f"{acceptance(family, texts, draft, args.new_tokens):.0%}" if draft else ""
            median = statistics.median(values)
            lines.append(f"| {name} | {median:.2f} | {median / plain:.2f}x | {accepted} |")
        lines.append("")
    report = "\n".join(lines)
    print(report)
    out = Path(__file__).parent / "results" / f"generation-strategies-{datetime.now(UTC):%Y%m%d-%H%M%S}.md"
    out.write_text(report + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
