"""Oracle cases for ``zero-shot-image-classification``: a tiny CLIP against the pipeline.

The CLIP tokenizer is a byte-level BPE (lower-cased, ``</w>`` word ends) trained in memory on the
same docstrings as the WordPiece tokenizer, and handed to ``CLIPTokenizer`` as vocab and merges.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.models import OracleCase
from tests.models.common import training_texts
from tests.models.images import check_ranked, image_inputs

TEMPLATE = "This is a photo of {}."


def build_clip_tokenizer(vocab_size: int = 600) -> Any:
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    # The normaliser and pre-tokeniser CLIPTokenizer itself uses, so the learnt merges fit it.
    bpe = Tokenizer(models.BPE(continuing_subword_prefix="", end_of_word_suffix="</w>"))
    bpe.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    words = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(words), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|startoftext|>", "<|endoftext|>"],
        end_of_word_suffix="</w>",
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(training_texts(), trainer)
    merges = json.loads(bpe.to_str())["model"]["merges"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in merges]
    return CLIPTokenizer(vocab=bpe.get_vocab(), merges=merges, model_max_length=32)


def build_clip(path: Path, seed: int = 0) -> Path:
    """A 2-layer CLIP (text and 32x32 vision towers, projection 16) with its processor, seeded weights."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor

    torch.manual_seed(seed)
    tokenizer = build_clip_tokenizer()
    tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, projection_dim=16)
    text = dict(tower, vocab_size=len(tokenizer), max_position_embeddings=32, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    vision = dict(tower, image_size=32, patch_size=8)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)
    return path


def pipeline_rows(path: Path, inputs: list[dict[str, Any]], params: dict[str, Any]) -> list[Any]:
    from transformers import pipeline

    clf = pipeline("zero-shot-image-classification", model=str(path), device="cpu")
    rows = []
    for x in inputs:
        fields = {**params, **x}
        template = fields.get("hypothesis_template", TEMPLATE)
        rows.append(clf(x["image"], candidate_labels=fields["candidate_labels"], hypothesis_template=template))
    return rows


LABEL_SETS = [["cat", "dog", "car", "tree"], ["a red apple", "the sea"], ["boat", "house", "cup", "bird", "plane"]]


def _per_item_labels() -> list[dict[str, Any]]:
    """Items with their own label sets (several items share each), some keeping the job's."""
    out = []
    for i, x in enumerate(image_inputs()):
        own = LABEL_SETS[i % 4] if i % 4 < len(LABEL_SETS) else None
        out.append({**x, "candidate_labels": own} if own else x)
    return out


CASES = [
    OracleCase("tiny-clip", "zero-shot-image-classification", lambda p: build_clip(p), image_inputs,
               pipeline_rows, check_ranked, params={"candidate_labels": LABEL_SETS[0]}),
    OracleCase("tiny-clip-labels", "zero-shot-image-classification", lambda p: build_clip(p, seed=1),
               _per_item_labels, pipeline_rows, check_ranked,
               params={"candidate_labels": ["sun", "moon"], "hypothesis_template": "a picture of a {}"}),
]  # fmt: skip
