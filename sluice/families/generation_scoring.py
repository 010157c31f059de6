"""Scoring and stopping pieces of batched generation: :class:`TokenScorer`, :class:`StopRecorder`,
the sampling warpers, and :class:`Generated`, one generated sequence.

How they combine is told in :mod:`sluice.families.generation`. Nothing here imports torch or
transformers at module level.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple


class Generated(NamedTuple):
    """One generated sequence: its new token ids, their log-probabilities, and the count of new
    tokens at which a stop string ended it (None when none did)."""

    ids: list[int]
    logprobs: list[float]
    stopped_at: int | None = None


def eos_ids(value: Any) -> list[int]:
    """A generation config's ``eos_token_id`` (one id, a list or None) as a list."""
    if value is None:
        return []
    return [int(v) for v in (value if isinstance(value, list | tuple) else [value])]


class TokenScorer:
    """A logits processor that records the chosen tokens' log-probabilities (and samples, per item).

    ``mode`` is ``greedy``, ``sample`` (then ``seeds`` gives one seed per item, whose ``per``
    consecutive rows draw together) or ``beam`` (then ``keep`` is how many candidates per row beam
    search considers). It must run after every other processor: ``generate`` puts the processors
    it is given after its own ones.
    """

    def __init__(self, mode: str, device: Any = "cpu", seeds: list[int] | None = None, keep: int = 0,
                 per: int = 1) -> None:  # fmt: skip
        import torch

        self.mode = mode
        self.keep = keep
        self.per = per
        self.steps: list[tuple[Any, Any]] = []
        self.generators = [torch.Generator(device=device).manual_seed(s) for s in seeds or []]

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        if self.mode == "beam":
            self.steps.append(scores.topk(min(self.keep, scores.shape[-1]), dim=-1))
            return scores
        if self.mode == "sample":
            # generate()'s own sampling, one item (its `per` rows) at a time with that item's generator.
            probs = torch.nn.functional.softmax(scores, dim=-1)
            n = self.per
            tokens = torch.cat([torch.multinomial(probs[i * n : (i + 1) * n], 1, generator=g)[:, 0]
                                for i, g in enumerate(self.generators)])  # fmt: skip
        else:
            tokens = torch.argmax(scores, dim=-1)
        logp = torch.nn.functional.log_softmax(scores, dim=-1).gather(1, tokens[:, None])[:, 0]
        self.steps.append((logp, None))
        if self.mode == "sample":
            scores = torch.full_like(scores, -math.inf).scatter_(1, tokens[:, None], 0.0)
        return scores

    def transition_logprobs(self, new_tokens: Any, beam_indices: Any = None) -> Any:
        """Log-probability of each new token, shape ``(rows, steps)``, like ``compute_transition_scores``."""
        import torch

        steps = min(new_tokens.shape[1], len(self.steps))
        if self.mode != "beam":
            return torch.stack([lp for lp, _ in self.steps[:steps]], dim=1)
        values = torch.stack([v for v, _ in self.steps[:steps]])  # steps, beam rows, keep
        indices = torch.stack([i for _, i in self.steps[:steps]])
        rows = beam_indices[:, :steps].long().clamp(min=0)  # -1 past a finished beam's end
        at = torch.arange(steps, device=rows.device)[None, :]
        hit = indices[at, rows] == new_tokens[:, :steps, None]
        found = torch.where(hit, values[at, rows], torch.zeros_like(values[at, rows])).sum(-1)
        return torch.where(hit.any(-1), found, torch.full_like(found, math.nan))


class StopRecorder:
    """A stopping criterion around ``StopStringCriteria`` that keeps each step's hits, so that the
    step a row first stopped at is known afterwards (read once, after generation: no GPU sync per step)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.hits: list[Any] = []

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        hits = self.inner(input_ids, scores, **kwargs)
        self.hits.append(hits)
        return hits

    def stopped_at(self) -> list[int | None]:
        """Per row, how many new tokens it had when a stop string first ended it (None: never)."""
        import torch

        if not self.hits:
            return []
        table = torch.stack(self.hits).cpu()  # steps, rows
        first = table.int().argmax(0)
        return [int(step) + 1 if table[:, row].any() else None for row, step in enumerate(first.tolist())]


def sampling_warpers(config: dict[str, Any], device: Any) -> list[Any]:
    """The warpers ``generate(do_sample=True)`` would add for ``config``, in its order."""
    from transformers.generation import logits_process as lp

    out: list[Any] = []
    if config["temperature"] != 1.0:
        out.append(lp.TemperatureLogitsWarper(config["temperature"]))
    if config.get("top_h") is not None:
        out.append(lp.TopHLogitsWarper(top_h=config["top_h"]))
    if config["top_k"]:
        out.append(lp.TopKLogitsWarper(top_k=config["top_k"]))
    if config["top_p"] < 1.0:
        out.append(lp.TopPLogitsWarper(top_p=config["top_p"]))
    if config.get("min_p") is not None:
        out.append(lp.MinPLogitsWarper(min_p=config["min_p"]))
    if config["typical_p"] < 1.0:
        out.append(lp.TypicalLogitsWarper(mass=config["typical_p"]))
    if 0.0 < config["epsilon_cutoff"] < 1.0:
        out.append(lp.EpsilonLogitsWarper(epsilon=config["epsilon_cutoff"]))
    if 0.0 < config["eta_cutoff"] < 1.0:
        out.append(lp.EtaLogitsWarper(epsilon=config["eta_cutoff"], device=device))
    return out
