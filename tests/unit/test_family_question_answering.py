"""question-answering: submit-time validation, batching, ``top_k``, impossible answers, long questions."""

from __future__ import annotations

import re
from typing import Any

import pytest

from producer.validate import check_item
from sluice.errors import ValidationError
from sluice.families.question_answering import QuestionAnswering
from sluice.registry import ModelSpec
from sluice.settings import Settings
from tests.models.question_answering import build_qa_model, check, qa_inputs, reference_answers
from tests.unit.test_oracles import run_engine

SPEC = ModelSpec(name="qa", task="question-answering", path="unused", max_length=128)
OK = {"question": "what?", "context": "Paris is in France."}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"context": "c"}, "item 3: missing required field 'question'"),
        ({"question": "q"}, "item 3: missing required field 'context'"),
        ({"question": "q", "context": " \n"}, "item 3: field 'context' is empty"),
        ({"question": "", "context": "c"}, "item 3: field 'question' is empty"),
        ({"question": ["q"], "context": "c"}, "item 3: field 'question' must be a string"),
        ({**OK, "top_k": 0}, "item 3: field 'top_k' must be an integer >= 1, got 0"),
        ({**OK, "top_k": "2"}, "item 3: field 'top_k' must be an integer >= 1, got '2'"),
        ({**OK, "top_k": True}, "item 3: field 'top_k' must be an integer >= 1, got True"),
        ({**OK, "max_answer_len": 0}, "item 3: field 'max_answer_len' must be an integer >= 1"),
        ({**OK, "max_question_len": 1.5}, "item 3: field 'max_question_len' must be an integer >= 1"),
        ({**OK, "doc_stride": -1}, "item 3: field 'doc_stride' must be an integer >= 0"),
        ({**OK, "doc_stride": 128}, "item 3: field 'doc_stride' (128) must be smaller than the model's max length"),
        ({**OK, "handle_impossible_answer": "yes"}, "item 3: field 'handle_impossible_answer' must be true or false"),
    ],
)
def test_validation_names_item_and_field(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        QuestionAnswering.validate_item(fields, 3, SPEC, Settings())


def test_validation_of_job_params_and_good_items() -> None:
    QuestionAnswering.validate_item(
        {**OK, "top_k": 3, "doc_stride": 0, "handle_impossible_answer": True}, 0, SPEC, Settings()
    )
    # Job params are merged under each item at submit time, so a bad one is reported per item.
    error = check_item(QuestionAnswering, SPEC, {"top_k": -1}, dict(OK), 7, Settings(max_item_chars=10_000))
    assert error is not None and error.startswith("item 7: field 'top_k'")
    error = check_item(QuestionAnswering, SPEC, {}, {**OK, "context": "x" * 20}, 8, Settings(max_item_chars=10))
    assert error is not None and error.startswith("item 8: field 'context' has 20 characters")


@pytest.fixture(scope="module")
def qa(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelSpec, Any, Any]:
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    path = build_qa_model(tmp_path_factory.mktemp("qa") / "tiny-qa", seed=1)
    spec = ModelSpec(name="tiny-qa", task="question-answering", path=str(path))
    model = AutoModelForQuestionAnswering.from_pretrained(str(path)).eval()
    return spec, model, AutoTokenizer.from_pretrained(str(path))


def _reference(qa: tuple[ModelSpec, Any, Any], fields: dict[str, Any]) -> list[dict[str, Any]]:
    _, model, tokenizer = qa
    options = {k: v for k, v in fields.items() if k not in ("question", "context")}
    return reference_answers(model, tokenizer, fields["question"], fields["context"], **options)


def test_batched_equals_unbatched_with_mixed_options(qa: tuple[ModelSpec, Any, Any]) -> None:
    """Items with different strides, top_k and answer lengths share batches; nothing changes."""
    inputs = qa_inputs(36, seed=8)
    for i, x in enumerate(inputs):
        x.update(top_k=1 + i % 4, max_answer_len=(3, 15, 30)[i % 3])
        if i % 2:
            x["doc_stride"] = (0, 10, 50)[i % 3]
    batched = run_engine(qa[0], inputs, {}, max_tokens=4096, max_size=64)
    alone = run_engine(qa[0], inputs, {}, max_tokens=1, max_size=1)
    for i, x in enumerate(inputs):
        expected = _reference(qa, x)
        check(expected, batched[i])
        check(expected, alone[i])


def test_top_k(qa: tuple[ModelSpec, Any, Any]) -> None:
    inputs = qa_inputs(30, seed=9)
    best = run_engine(qa[0], inputs, {})
    many = run_engine(qa[0], inputs, {"top_k": 5})
    for i, x in enumerate(inputs):
        answers = many[i]["output"]["answers"]
        assert len(answers) == (5 if i else len(answers))
        assert [a["score"] for a in answers] == sorted((a["score"] for a in answers), reverse=True)
        assert all(x["context"][a["start"] : a["end"]] == a["answer"] != "" for a in answers)
        assert answers[0] == best[i]["output"]["answers"][0]
        assert (many[i]["label"], many[i]["score"]) == (answers[0]["answer"], answers[0]["score"])
    # "ok" has at most three token spans, all widened to the one word: fewer than top_k come back.
    short = many[0]["output"]["answers"]
    assert 1 <= len(short) <= 3 and {(a["answer"], a["start"], a["end"]) for a in short} == {("ok", 0, 2)}


def test_impossible_answer(qa: tuple[ModelSpec, Any, Any]) -> None:
    """The empty answer competes with its lowest [CLS] score over windows, only when asked for."""
    inputs = qa_inputs(40, seed=10)
    params = {"handle_impossible_answer": True, "top_k": 2}
    rows = run_engine(qa[0], inputs, params)
    labels = []
    for i, x in enumerate(inputs):
        check(_reference(qa, {**params, **x}), rows[i])
        labels.append(rows[i]["label"])
    assert "" in labels and any(labels), "the cases should include both a winning null and a winning span"
    plain = run_engine(qa[0], inputs, {"top_k": 2})
    assert all(a["answer"] for row in plain.values() for a in row["output"]["answers"])


def test_stride_too_large_for_a_long_question_fails_that_item_alone(qa: tuple[ModelSpec, Any, Any]) -> None:
    long_question = " ".join(["where is the parameter"] * 40)
    inputs = [dict(OK), {**OK, "question": long_question, "doc_stride": 90}, {**OK, "doc_stride": 90}]
    rows = run_engine(qa[0], inputs, {})
    assert rows[0]["error"] is None and rows[2]["error"] is None
    assert "lower 'doc_stride' or 'max_question_len'" in rows[1]["error"]
    # A smaller max_question_len leaves room for the same stride.
    rows = run_engine(qa[0], [{**inputs[1], "max_question_len": 8}], {})
    assert rows[0]["error"] is None, rows[0]["error"]


def test_long_contexts_are_answered_across_windows(qa: tuple[ModelSpec, Any, Any]) -> None:
    context = " ".join(qa_inputs(3)[1]["context"].split()[:600])
    _, _, tokenizer = qa
    assert len(tokenizer(context)["input_ids"]) > 4 * 128
    fields = {"question": "which value is returned?", "context": context, "top_k": 10}
    rows = run_engine(qa[0], [fields], {})
    expected = _reference(qa, fields)
    check(expected, rows[0])
    # Answers come from several windows, so offsets spread far past the first window's text.
    assert max(a["start"] for a in rows[0]["output"]["answers"]) > 600
