"""``document-question-answering``: submit-time checks of words and boxes, and the items that fail alone at run time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from producer.validate import check_item
from sluice.errors import ValidationError
from sluice.families import family_for
from sluice.registry import ModelSpec
from sluice.settings import Settings
from tests.models.document_question_answering import build_donut, build_layoutlm, layout_inputs
from tests.models.images import image_paths
from worker.engine import Engine

TASK = "document-question-answering"
WORDS = ["invoice", "number", "12345"]
BOXES = [[10, 10, 80, 30], [90, 10, 160, 30], [170, 10, 240, 30]]


def _check(fields: dict[str, Any]) -> str | None:
    spec = ModelSpec(name="doc", task=TASK, path="/nowhere")
    return check_item(family_for(TASK), spec, {}, fields, 0, Settings())


def test_words_and_boxes_without_an_image_are_enough() -> None:
    assert _check({"question": "what number?", "words": WORDS, "boxes": BOXES}) is None
    assert _check({"question": "what number?", "image": image_paths()[0]}) is None


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"question": "q", "words": WORDS}, "give 'words' and 'boxes' together"),
        ({"question": "q", "boxes": BOXES}, "give 'words' and 'boxes' together"),
        ({"question": "q", "words": WORDS, "boxes": BOXES[:2]}, "3 words, 2 boxes"),
        ({"question": "q", "words": [], "boxes": []}, "non-empty list of strings"),
        ({"question": "q", "words": ["a", 1, "c"], "boxes": BOXES}, "non-empty list of strings"),
        ({"question": "q", "words": WORDS, "boxes": "0 0 1 1"}, "one box per word"),
        ({"question": "q", "words": WORDS, "boxes": [*BOXES[:2], [1, 2, 3]]}, "boxes[2] must be [x0, y0, x1, y1]"),
        ({"question": "q", "words": WORDS, "boxes": [*BOXES[:2], [0, 0, 1001, 5]]}, "integers from 0 to 1000"),
        ({"question": "q", "words": WORDS, "boxes": [[0.5, 0, 10, 10], *BOXES[1:]]}, "boxes[0]"),
        ({"question": "q", "words": WORDS, "boxes": [[50, 0, 10, 10], *BOXES[1:]]}, "x0 <= x1"),
        ({"question": "q", "words": WORDS, "boxes": [[True, 0, 10, 10], *BOXES[1:]]}, "boxes[0]"),
        ({"question": "  ", "words": WORDS, "boxes": BOXES}, "field 'question' is empty"),
        ({"words": WORDS, "boxes": BOXES}, "missing required field 'question'"),
        ({"question": "q"}, "missing required field 'image'"),
        ({"question": "q", "image": "/no/such.png", "words": WORDS, "boxes": BOXES}, "does not exist"),
        ({"question": "q", "words": WORDS, "boxes": BOXES, "top_k": 0}, "'top_k' must be an integer >= 1"),
        ({"question": "q", "words": WORDS, "boxes": BOXES, "handle_impossible_answer": "yes"}, "true or false"),
    ],
)
def test_submit_rejects(fields: dict[str, Any], message: str) -> None:
    error = _check(fields)
    assert error is not None and message in error, error


def test_job_params_are_checked() -> None:
    spec = ModelSpec(name="doc", task=TASK, path="/nowhere")
    with pytest.raises(ValidationError, match="max_answer_len"):
        family_for(TASK).validate_params({"max_answer_len": -1}, spec)


def _run(path: Path, inputs: list[dict[str, Any]], **options: Any) -> dict[int, Any]:
    family = family_for(TASK)(ModelSpec(name=path.name, task=TASK, path=str(path), options=options), "cpu")
    family.setup()
    engine = Engine(family, max_batch_tokens=4096, max_batch_size=8)
    return {r.item: r for results, _ in engine.run(list(enumerate(inputs))) for r in results}


@pytest.fixture(scope="module")
def layoutlm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_layoutlm(tmp_path_factory.mktemp("models") / "tiny-layoutlm")


@pytest.mark.parametrize("ocr", [False, True])
def test_an_item_without_words_fails_alone(layoutlm_dir: Path, ocr: bool, caplog: pytest.LogCaptureFixture) -> None:
    """Without words and boxes, and without OCR (not enabled, or enabled where Tesseract is missing),
    the item fails with a message asking for them; its neighbours are answered."""
    import shutil

    if ocr and shutil.which("tesseract"):
        pytest.skip("tesseract is installed here: OCR would run")
    good = layout_inputs(4)
    rows = _run(layoutlm_dir, [good[0], {"question": "what?", "image": image_paths()[0]}, good[1]], ocr=ocr)
    assert rows[0].error is None and rows[2].error is None
    assert rows[1].error is not None
    assert "no 'words' and 'boxes' given" in rows[1].error and "ocr = true" in rows[1].error
    assert ("tesseract" in caplog.text) == ocr


def test_a_question_leaving_no_room_fails_alone(layoutlm_dir: Path) -> None:
    """A question so long that the window has no room beyond doc_stride fails with how to fix it."""
    good = layout_inputs(3)
    long = {**good[1], "question": " ".join(["what"] * 70)}
    rows = _run(layoutlm_dir, [good[0], long, good[2]])
    assert rows[0].error is None and rows[2].error is None
    assert "lower 'doc_stride' or shorten the question" in str(rows[1].error)


def test_donut_needs_an_image(tmp_path: Path) -> None:
    path = build_donut(tmp_path / "tiny-donut")
    rows = _run(path, [{"question": "what?", "words": WORDS, "boxes": BOXES},
                       {"question": "total?", "image": image_paths()[2], "max_new_tokens": 3}])  # fmt: skip
    assert "reads the document from its 'image'" in str(rows[0].error)
    assert rows[1].error is None and rows[1].output is not None and rows[1].output["n_new_tokens"] <= 3


def test_ocr_words_are_used_and_stored(layoutlm_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With OCR on, an item without words gets Tesseract's (stood in for here: the test machine has none),
    answers from them, and stores them in ``output.words``; given words are never replaced."""
    import transformers.pipelines.document_question_answering as pipeline_module

    read: list[Any] = []

    def fake_tesseract(image: Any, lang: str | None, tesseract_config: str) -> tuple[list[str], list[list[int]]]:
        read.append((image.size, lang))
        return WORDS, BOXES

    monkeypatch.setattr(pipeline_module, "apply_tesseract", fake_tesseract)
    family = family_for(TASK)(ModelSpec(name="doc", task=TASK, path=str(layoutlm_dir), options={"ocr": True}), "cpu")
    family.setup()
    family.layout.ocr = True  # as on a worker where pytesseract and tesseract are installed
    given = {"question": "what?", "words": ["a", "b"], "boxes": BOXES[:2], "image": image_paths()[1]}
    items = [(0, {"question": "what number?", "image": image_paths()[0]}), (1, given)]
    rows = {r.item: r for results, _ in Engine(family, 4096, 8).run(items) for r in results}
    assert len(read) == 1
    assert rows[0].error is None and rows[0].output is not None and rows[0].output["words"] == WORDS
    assert rows[0].output["answers"][0]["answer"] in " ".join(WORDS)
    assert rows[1].output is not None and "words" not in rows[1].output
