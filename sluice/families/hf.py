"""Shared plumbing for families built on a transformers tokenizer and an ``AutoModelForXXX`` class.

Not a family itself: it holds the base classes text families subclass (:class:`HFTextFamily`,
:class:`SequenceClassifier`, :class:`Embedder`), so that no family subclasses another family.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from sluice.errors import ItemError
from sluice.families.base import Feature, ItemResult, TaskFamily
from sluice.families.common import model_labels, score_function
from sluice.registry import ModelSpec

log = logging.getLogger("sluice.worker")

#: what :meth:`HFTextFamily.batched` runs on: an item number and what its features are made from
Entry = TypeVar("Entry", bound=tuple[int, Any])
Prepared = list[list[Feature] | ItemResult]

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
    except (ValueError, ImportError) as exc:
        # Architectures without an SDPA kernel fall back to their default attention.
        log.info("model %s: no SDPA attention (%s: %s); loading with its default attention",
                 spec.name, type(exc).__name__, exc)  # fmt: skip
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

        transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        remote = self.spec.trust_remote_code
        self.tokenizer = AutoTokenizer.from_pretrained(self.spec.path, trust_remote_code=remote)
        self.model = load_model(self.spec, self.model_class(), self.device)
        self.max_length = self._resolve_max_length()

    def model_class(self) -> str:
        """The ``transformers`` auto class :meth:`setup` loads: :attr:`auto_class` unless a family
        chooses by the checkpoint."""
        return self.auto_class

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
        """One item through :meth:`preprocess_many`; its failure is raised as :class:`ItemError`."""
        (entry,) = self.preprocess_many([(item, fields)])
        if isinstance(entry, ItemResult):
            raise ItemError(entry.error or "preprocessing failed")
        return entry

    def preprocess_many(self, items: list[tuple[int, dict[str, Any]]]) -> Prepared:
        """Tokenise a whole window of items at once; an item that cannot be tokenised fails alone."""
        pairs = [fields.get("text_pair") for _, fields in items]
        if any(p is not None for p in pairs) and not all(p is not None for p in pairs):
            # The tokenizer takes pairs for all or none; split the window instead.
            return [entry for x in items for entry in self.preprocess_many([x])]
        return self.batched(items, self._text_features)

    def _text_features(self, items: list[tuple[int, dict[str, Any]]]) -> Prepared:
        """One feature per item (``text``, with ``text_pair`` when every item has one), one tokenizer call."""
        texts = [str(fields.get("text", "")) for _, fields in items]
        pairs = [fields.get("text_pair") for _, fields in items]
        enc = self.encode(texts, [str(p) for p in pairs] if pairs and pairs[0] is not None else None)
        out: Prepared = []
        for row, (item, _) in enumerate(items):
            ids = {name: values[row] for name, values in enc.items()}
            out.append([Feature(item=item, ids=ids, length=len(ids["input_ids"]))])
        return out

    def batched(self, entries: list[Entry], run: Callable[[list[Entry]], Prepared]) -> Prepared:
        """``run`` on all ``entries`` in one go; when it raises, on each entry alone, so a bad item fails alone.

        An entry is ``(item, anything)``; ``run`` returns one features list or failed result per
        entry. An entry that raises on its own fails with ``"tokenisation failed: ..."`` (an
        :class:`ItemError` with its own message).
        """
        try:
            return run(entries)
        except Exception as exc:
            if len(entries) == 1:
                return [_failed(entries[0][0], exc)]
            log.warning(
                "model %s (%s): tokenising %d items together failed (%s: %s); tokenising them one at a time",
                self.spec.name, self.task, len(entries), type(exc).__name__, exc,
            )  # fmt: skip
        return [self._alone(entry, run) for entry in entries]

    @staticmethod
    def _alone(entry: Entry, run: Callable[[list[Entry]], Prepared]) -> list[Feature] | ItemResult:
        try:
            (prepared,) = run([entry])
        except Exception as exc:
            return _failed(entry[0], exc)
        return prepared

    def model_inputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in batch.items() if k in self.tokenizer.model_input_names}

    def release(self) -> None:
        self.model = None
        self.tokenizer = None


def _failed(item: int, exc: Exception) -> ItemResult:
    """The stored failure of an item that could not be tokenised."""
    message = str(exc) if isinstance(exc, ItemError) else f"tokenisation failed: {exc}"
    return ItemResult(item=item, error=message)


class SequenceClassifier(HFTextFamily):
    """``AutoModelForSequenceClassification`` with its labels and the pipeline's score function.

    ``forward`` returns float32 logits per row; subclasses turn them into results.
    """

    auto_class = "AutoModelForSequenceClassification"

    labels: list[str]
    function: str

    def setup(self) -> None:
        super().setup()
        self.labels = model_labels(self.spec, self.model.config)
        self.function = score_function(self.model.config.problem_type, self.model.config.num_labels)

    def forward(self, batch: dict[str, Any]) -> Any:
        return self.model(**self.model_inputs(batch)).logits.float().cpu().numpy()


class Embedder(HFTextFamily):
    """``AutoModel`` pooled into one embedding per row, as sentence-transformers computes it.

    Mean pooling averages token states under the attention mask; ``cls`` takes the first token;
    ``normalize`` L2-normalises, which is what all-MiniLM-L6-v2's ``Normalize`` module does.
    """

    auto_class = "AutoModel"

    def model_class(self) -> str:
        """``AutoModel``, or ``AutoModelForTextEncoding`` (the encoder alone) for an encoder-decoder
        checkpoint such as T5, whose ``AutoModel`` is the whole model and wants decoder inputs."""
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(self.spec.path, trust_remote_code=self.spec.trust_remote_code)
        return "AutoModelForTextEncoding" if getattr(config, "is_encoder_decoder", False) else self.auto_class

    def embed(self, batch: dict[str, Any]) -> Any:
        """Pooled (and optionally normalised) float32 embeddings for a collated batch, on the device."""
        import torch

        hidden = self.model(**self.model_inputs(batch)).last_hidden_state.float()
        if self.spec.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        if self.spec.normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return pooled

    def forward(self, batch: dict[str, Any]) -> Any:
        """Embeddings as a float32 array, one row per feature."""
        return self.embed(batch).cpu().numpy()
