"""Oracle cases for ``question-answering``: the 4.x pipeline's span scoring, one window at a time.

transformers 5 has no question-answering pipeline, so the oracle is :func:`reference_answers`, a
plain, unbatched restatement of what ``pipeline("question-answering")`` computed in 4.x: the
question and the context as a pair with ``truncation="only_second"``, overflowing windows of
``doc_stride`` tokens overlap, and per window a softmax of the start and end logits over the
context tokens and ``[CLS]``; a span scores ``p_start * p_end`` (``start <= end``, at most
``max_answer_len`` tokens), widened to whole words; the best ``top_k`` over all windows win, and
with ``handle_impossible_answer`` the empty answer scores the lowest ``p_start[CLS] * p_end[CLS]``.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.models import OracleCase
from tests.models.common import bert_config, build_wordpiece, mixed_texts, save

TOL = 1e-4


def build_qa_model(path: Path, seed: int = 0) -> Path:
    """A 2-layer BERT span-prediction model with random (seeded) weights."""
    import torch
    from transformers import BertForQuestionAnswering

    torch.manual_seed(seed)
    model = BertForQuestionAnswering(bert_config(num_labels=2)).eval()
    # Default init (std 0.02) makes start/end logits nearly flat, so the best span would be decided
    # by float noise; a wider head spreads them and makes span equality a meaningful check.
    torch.nn.init.normal_(model.qa_outputs.weight, std=1.0)
    return save(model, build_wordpiece(), path)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def _word_chars(window: Any, token: int) -> tuple[int, int]:
    """Characters of the whole word (within this window) that ``token`` belongs to."""
    seq, words, offsets = window.sequence_ids, window.word_ids, window.offsets
    same = [i for i in range(len(words)) if seq[i] == 1 and words[i] == words[token]]
    return offsets[min(same)][0], offsets[max(same)][1]


def reference_answers(
    model: Any, tokenizer: Any, question: str, context: str, top_k: int = 1, doc_stride: int | None = None,
    max_answer_len: int = 15, max_question_len: int = 64, handle_impossible_answer: bool = False,
) -> list[dict[str, Any]]:  # fmt: skip
    """The answers the 4.x question-answering pipeline gives for one question and context."""
    import torch

    max_len = min(tokenizer.model_max_length, model.config.max_position_embeddings)
    if doc_stride is None:
        doc_stride = min(128, max_len // 4)
    q = tokenizer(question, add_special_tokens=False, return_offsets_mapping=True)
    if len(q["input_ids"]) > max_question_len:
        question = question[: q["offset_mapping"][max_question_len - 1][1]]
    enc = tokenizer(question, context, truncation="only_second", max_length=max_len, stride=doc_stride,
                    return_overflowing_tokens=True, return_offsets_mapping=True)  # fmt: skip
    answers: list[dict[str, Any]] = []
    null_score = 1_000_000.0
    for w, window in enumerate(enc.encodings):
        inputs = {k: torch.tensor([enc[k][w]]) for k in tokenizer.model_input_names if k in enc}
        with torch.no_grad():
            out = model(**inputs)
        seq = window.sequence_ids
        allowed = np.array([s == 1 or t == tokenizer.cls_token_id for s, t in zip(seq, window.ids, strict=True)])
        p_start = _softmax(np.where(allowed, out.start_logits[0].float().numpy(), -10000.0))
        p_end = _softmax(np.where(allowed, out.end_logits[0].float().numpy(), -10000.0))
        null_score = min(null_score, float(p_start[0] * p_end[0]))
        p_start[0] = p_end[0] = 0.0
        context_tokens = [i for i, s in enumerate(seq) if s == 1]
        candidates = [(float(p_start[s] * p_end[e]), s, e) for s in context_tokens for e in context_tokens
                      if s <= e < s + max_answer_len]  # fmt: skip
        candidates.sort(key=lambda c: -c[0])
        for score, s, e in candidates[:top_k]:
            start, end = _word_chars(window, s)[0], _word_chars(window, e)[1]
            answers.append({"answer": context[start:end], "score": score, "start": start, "end": end})
    if handle_impossible_answer:
        answers.append({"answer": "", "score": null_score, "start": 0, "end": 0})
    return sorted(answers, key=lambda a: a["score"], reverse=True)[:top_k]


def _reference_rows(path: Path, inputs: list[dict[str, Any]], params: dict[str, Any]) -> list[Any]:
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForQuestionAnswering.from_pretrained(str(path)).eval()
    names = ("top_k", "doc_stride", "max_answer_len", "max_question_len", "handle_impossible_answer")
    rows = []
    for x in inputs:
        fields = {**params, **x}
        options = {k: fields[k] for k in names if k in fields}
        rows.append(reference_answers(model, tokenizer, fields["question"], fields["context"], **options))
    return rows


def check(expected: list[dict[str, Any]], actual: dict[str, Any]) -> None:
    assert actual["error"] is None, actual["error"]
    got = actual["output"]["answers"]
    assert [(a["answer"], a["start"], a["end"]) for a in got] == [(a["answer"], a["start"], a["end"]) for a in expected]
    for a, b in zip(got, expected, strict=True):
        assert a["score"] == pytest.approx(b["score"], abs=TOL)
    assert actual["label"] == expected[0]["answer"]
    assert actual["score"] == pytest.approx(expected[0]["score"], abs=TOL)


def qa_inputs(n: int, seed: int = 5) -> list[dict[str, Any]]:
    """Questions over contexts of mixed lengths: a word, a sentence, several windows, far past one."""
    rng = random.Random(seed)
    contexts = mixed_texts(n, seed=seed)
    rows = []
    for context in contexts:
        words = rng.choice(contexts).split()
        start = rng.randrange(len(words))
        rows.append({"question": "what is " + " ".join(words[start : start + rng.randint(1, 4)]), "context": context})
    # A question far over max_question_len tokens: cut, the context still gets its windows.
    rows[2]["question"] = " ".join(contexts[1].split()[:120]) + "?"
    return rows


CASES = [
    OracleCase("tiny-qa", "question-answering", lambda p: build_qa_model(p), lambda: qa_inputs(120),
               _reference_rows, check),
    OracleCase("tiny-qa-top3", "question-answering", lambda p: build_qa_model(p, seed=1),
               lambda: qa_inputs(80, seed=6), _reference_rows, check,
               params={"top_k": 3, "handle_impossible_answer": True, "max_answer_len": 6, "doc_stride": 16}),
]  # fmt: skip
