"""Shared pieces of the tiny transformers models built offline, for oracle tests against ``transformers.pipeline()``.

Nothing here downloads: a WordPiece tokenizer is trained on a few hundred standard-library
docstrings, a small config gets seeded random weights, and both are written with
``save_pretrained`` so Sluice loads them through the same ``from_pretrained`` path as a user's
model. Every builder caches its directory per process.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from sluice.corpus import stdlib_documents

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@cache
def training_texts() -> list[str]:
    return stdlib_documents(limit=600)


@cache
def _documents() -> tuple[str, ...]:
    """The corpus test inputs are drawn from (parsing the standard library takes seconds: once per process)."""
    return tuple(stdlib_documents(limit=4000))


def build_wordpiece(vocab_size: int = 600) -> Any:
    """A BERT-style fast tokenizer (lower-casing WordPiece with [CLS]/[SEP]) trained in memory."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIALS)
    tok.train_from_iterator(training_texts(), trainer)
    # The trainer picks the same tokens every run but numbers them in hash order, which differs
    # per process; renumber (specials first, then sorted) so a tiny model is the same every run.
    learnt = sorted(set(tok.get_vocab()) - set(SPECIALS))
    vocab = {token: i for i, token in enumerate(SPECIALS + learnt)}
    tok.model = models.WordPiece(vocab=vocab, unk_token="[UNK]", continuing_subword_prefix="##")
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    tok.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=128,
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


def bert_config(**overrides: Any) -> Any:
    from transformers import BertConfig

    base = dict(
        vocab_size=600,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    return BertConfig(**{**base, **overrides})


def save(model: Any, tokenizer: Any, path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_text_classifier(path: Path, labels: tuple[str, ...] = ("negative", "neutral", "positive"),
                          problem_type: str | None = None, seed: int = 0, **overrides: Any) -> Path:  # fmt: skip
    """A 2-layer BERT sequence classifier with random (seeded) weights; ``overrides`` go to the config."""
    import torch
    from transformers import BertForSequenceClassification

    torch.manual_seed(seed)
    config = bert_config(
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        problem_type=problem_type,
        **overrides,
    )
    model = BertForSequenceClassification(config).eval()
    # Default init (std 0.02) gives near-uniform scores where label order is decided by noise;
    # a wider head spreads them so label equality is a meaningful check.
    torch.nn.init.normal_(model.classifier.weight, std=1.0)
    return save(model, build_wordpiece(), path)


def mixed_texts(n: int, seed: int = 1) -> list[str]:
    """n real documents of mixed lengths (a few words to past the model's max length)."""
    import random

    docs = _documents()
    rng = random.Random(seed)
    out = [rng.choice(docs) for _ in range(n)]
    out[0] = "ok"
    out[1] = " ".join(docs[:40])  # far past max length: must be truncated the same way
    return out
