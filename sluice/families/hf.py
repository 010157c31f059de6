"""Shared plumbing for families built on a transformers tokenizer and an ``AutoModelForXXX`` class."""

from __future__ import annotations

from typing import Any, ClassVar

from sluice.errors import ItemError
from sluice.registry import ModelSpec
from sluice.families.base import Feature, ItemResult, TaskFamily

# Tokenizers report "no limit" as a huge sentinel; anything above this is not a real model limit.
_NO_LIMIT = 1_000_000


def torch_dtype(name: str) -> Any:
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def load_model(spec: ModelSpec, auto_class: str, device: str) -> Any:
    """``transformers.<auto_class>.from_pretrained`` in the spec's dtype (float32 off GPU), eval mode, on ``device``."""
    import transformers

    remote = spec.trust_remote_code
    dtype = torch_dtype(spec.dtype) if device.startswith("cuda") else torch_dtype("float32")
    cls = getattr(transformers, auto_class)
    try:
        model = cls.from_pretrained(spec.path, dtype=dtype, attn_implementation="sdpa", trust_remote_code=remote)
    except (ValueError, ImportError):
        # Architectures without an SDPA kernel fall back to their default attention.
        model = cls.from_pretrained(spec.path, dtype=dtype, trust_remote_code=remote)
    return model.to(device).eval()


class HFTextFamily(TaskFamily):
    """A family whose items are text (``text`` and optionally ``text_pair``) fed to one model."""

    auto_class: ClassVar[str] = "AutoModel"

    tokenizer: Any
    model: Any
    max_length: int

    def setup(self) -> None:
        import transformers
        from transformers import AutoTokenizer

        transformers.utils.logging.disable_progress_bar()
        remote = self.spec.trust_remote_code
        self.tokenizer = AutoTokenizer.from_pretrained(self.spec.path, trust_remote_code=remote)
        self.model = load_model(self.spec, self.auto_class, self.device)
        self.max_length = self._resolve_max_length()

    def _resolve_max_length(self) -> int:
        limits = [self.spec.max_length, getattr(self.model.config, "max_position_embeddings", None)]
        tok_limit = getattr(self.tokenizer, "model_max_length", None)
        if tok_limit and tok_limit < _NO_LIMIT:
            limits.append(tok_limit)
        # A given spec.max_length wins over the model's own limit, except it can never exceed it.
        explicit = self.spec.max_length
        bounded = min(x for x in limits if x)
        return min(explicit, bounded) if explicit else bounded

    def pad_values(self) -> dict[str, int]:
        return {"input_ids": self.tokenizer.pad_token_id or 0, "attention_mask": 0, "token_type_ids": 0}

    def encode(self, texts: list[str], pairs: list[str] | None = None) -> dict[str, list[list[int]]]:
        """Tokenise many texts in one call (far faster than one call per text)."""
        enc = self.tokenizer(texts, pairs, truncation=True, max_length=self.max_length, return_attention_mask=True)
        return {name: enc[name] for name in self.tokenizer.model_input_names if name in enc}

    def preprocess(self, item: int, fields: dict[str, Any]) -> list[Feature]:
        return self.preprocess_many([(item, fields)])[0]  # type: ignore[return-value]

    def preprocess_many(self, items: list[tuple[int, dict[str, Any]]]) -> list[list[Feature] | ItemResult]:
        """Tokenise a whole window of items at once; an item that cannot be tokenised fails alone."""
        texts = [str(fields.get("text", "")) for _, fields in items]
        pairs = [fields.get("text_pair") for _, fields in items]
        has_pairs = any(p is not None for p in pairs)
        if has_pairs and not all(p is not None for p in pairs):
            # The tokenizer takes pairs for all or none; split the window instead.
            return [self.preprocess_many([x])[0] for x in items]
        try:
            enc = self.encode(texts, pairs if has_pairs else None)  # type: ignore[arg-type]
        except Exception:
            if len(items) == 1:
                raise
            return [self._preprocess_alone(x) for x in items]
        out: list[list[Feature] | ItemResult] = []
        for row, (item, _) in enumerate(items):
            ids = {name: values[row] for name, values in enc.items()}
            out.append([Feature(item=item, ids=ids, length=len(ids["input_ids"]))])
        return out

    def _preprocess_alone(self, entry: tuple[int, dict[str, Any]]) -> list[Feature] | ItemResult:
        try:
            return self.preprocess_many([entry])[0]
        except Exception as exc:
            return ItemResult(item=entry[0], error=f"tokenisation failed: {exc}")

    def model_inputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in batch.items() if k in self.tokenizer.model_input_names}

    def release(self) -> None:
        self.model = None
        self.tokenizer = None


__all__ = ["HFTextFamily", "ItemError", "load_model", "torch_dtype"]
