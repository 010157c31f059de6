"""Oracle cases for ``visual-question-answering``: a tiny ViLT classifier and a tiny generative BLIP against
the 4.x ``VisualQuestionAnsweringPipeline``, restated (transformers 5 removed it), one item at a time.

ViLT: the question tokenised with the tokenizer's defaults (cut to ViLT's 40 text positions, the
pipeline's ``truncation=True``), the image processor's pixels and mask, ``model(...)``, a sigmoid
and ``topk``. BLIP: ``model.generate`` on the tokenised question and the pixels; the pipeline's
answer is the decoded sequence, stripped, and the score comes from ``compute_transition_scores``.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import pytest

from tests.models import OracleCase
from tests.models.common import build_wordpiece, mixed_texts, save
from tests.models.image_to_text import build_blip, generate_alone
from tests.models.images import TOL, image_inputs

ANSWERS = ("yes", "no", "red", "blue", "two", "three", "cat", "dog")
QUESTIONS = ("what colour is it?", "how many?", "is there a cat in the picture or is it a dog?", "what?",
             "which animal is shown here")  # fmt: skip


def build_vilt(path: Path, seed: int = 0) -> Path:
    """ViLT: 2 layers over 8x8 patches of images whose shortest edge is 64 px (shapes vary with the aspect ratio).

    Default init (std 0.02) scores every answer near 0.5 for every image; a wider init and answer
    head spread the scores.
    """
    import torch
    from transformers import ViltConfig, ViltForQuestionAnswering, ViltImageProcessorPil, ViltProcessor

    tokenizer = build_wordpiece()
    torch.manual_seed(seed)
    config = ViltConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=2, image_size=32, patch_size=8, max_position_embeddings=40,
                        initializer_range=0.2, num_labels=len(ANSWERS), id2label=dict(enumerate(ANSWERS)),
                        label2id={a: i for i, a in enumerate(ANSWERS)})  # fmt: skip
    model = ViltForQuestionAnswering(config).eval()
    torch.nn.init.normal_(model.classifier[3].weight, std=1.0)
    save(model, tokenizer, path)
    ViltProcessor(ViltImageProcessorPil(size={"shortest_edge": 64}, size_divisor=8), tokenizer).save_pretrained(path)
    return path


@cache
def load(path: Path) -> tuple[Any, Any]:
    import transformers

    model = transformers.AutoModelForVisualQuestionAnswering.from_pretrained(path).eval()
    return transformers.AutoProcessor.from_pretrained(path), model


def pipeline_rows(path: Path, inputs: list[dict[str, Any]], params: dict[str, Any]) -> list[Any]:
    """The 4.x pipeline on each item alone: answers (classifier) or an answer row (generator)."""
    import torch
    from transformers.image_utils import load_image

    processor, model = load(path)
    tokenizer = processor.tokenizer
    rows: list[Any] = []
    for x in inputs:
        item = {**params, **x}
        limit = model.config.get_text_config().max_position_embeddings
        inputs_ = dict(tokenizer(item["question"], return_tensors="pt", truncation=True, max_length=limit))
        inputs_.update(processor.image_processor(images=load_image(item["image"]), return_tensors="pt"))
        if model.can_generate():
            inputs_ = {k: v for k, v in inputs_.items() if k in ("input_ids", "attention_mask", "pixel_values")}
            options = {k: v for k, v in params.items() if k != "seed"}
            row = generate_alone(model, inputs_, options, None, 1, model.config.text_config.sep_token_id)
            answer = tokenizer.decode(row.pop("sequence"), skip_special_tokens=True).strip()  # the pipeline's
            row["generated_text"] = tokenizer.decode(row.pop("tokens"), skip_special_tokens=True)
            assert row["generated_text"].strip() == answer
            rows.append(row)
            continue
        with torch.no_grad():
            probs = model(**inputs_).logits.sigmoid()[0]
        scores, ids = probs.topk(min(item.get("top_k", 5), model.config.num_labels))
        rows.append(
            [
                {"score": s, "answer": model.config.id2label[i]}
                for s, i in zip(scores.tolist(), ids.tolist(), strict=True)
            ]
        )
    return rows


def check_answers(expected: list[dict[str, Any]], actual: dict[str, Any]) -> None:
    assert actual["error"] is None, actual["error"]
    got = actual["output"]["answers"]
    assert [a["answer"] for a in got] == [a["answer"] for a in expected]
    assert [a["score"] for a in got] == pytest.approx([a["score"] for a in expected], abs=TOL)
    assert actual["label"] == expected[0]["answer"]
    assert actual["score"] == pytest.approx(expected[0]["score"], abs=TOL)


def check_generated(expected: dict[str, Any], actual: dict[str, Any]) -> None:
    assert actual["error"] is None, actual["error"]
    assert actual["label"] == actual["output"]["answer"] == expected["generated_text"].strip()
    assert actual["output"]["generated_text"] == expected["generated_text"]
    assert actual["output"]["n_new_tokens"] == expected["n_new_tokens"]
    assert actual["output"]["finish_reason"] == expected["finish_reason"]
    assert actual["score"] == pytest.approx(expected["score"], abs=TOL)


def questions(n: int, own_top_k: bool = False) -> list[dict[str, Any]]:
    """The test images with questions of several lengths, one far past ViLT's 40 text positions;
    with ``own_top_k`` some items set their own ``top_k`` (1, and 20: more than there are answers)."""
    long = " ".join(mixed_texts(2)[1].split()[:80]) + "?"
    out = []
    for i, x in enumerate(image_inputs()[:n]):
        item = {**x, "question": long if i == 7 else QUESTIONS[i % len(QUESTIONS)]}
        if own_top_k and i % 3:
            item["top_k"] = 1 if i % 3 == 1 else 20
        out.append(item)
    return out


CASES = [
    OracleCase("tiny-vilt-vqa", "visual-question-answering", build_vilt, lambda: questions(24, own_top_k=True),
               pipeline_rows, check_answers, params={"top_k": 3}),
    OracleCase("tiny-blip-vqa", "visual-question-answering", lambda p: build_blip(p, "BlipForQuestionAnswering",
                                                                                    seed=1, boost=1.6),
               lambda: questions(20), pipeline_rows, check_generated, params={"max_new_tokens": 8}),
]  # fmt: skip
