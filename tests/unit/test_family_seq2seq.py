"""``summarization`` / ``translation`` / ``text2text-generation``: checks, prefixes, batch invariance."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from producer.validate import check_item
from sluice.errors import ValidationError
from sluice.families import family_for
from sluice.families.seq2seq import Seq2SeqGeneration, Summarization, Text2TextGeneration, Translation
from sluice.registry import ModelSpec
from sluice.settings import Settings
from tests.models.common import mixed_texts
from tests.models.seq2seq import EN_DE, build_bart, build_t5, generate_rows
from tests.unit.test_family_text_generation import assert_same, loaded, run_items

TASKS = {"summarization": Summarization, "translation": Translation, "text2text-generation": Text2TextGeneration}


@pytest.fixture(scope="module")
def bart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_bart(tmp_path_factory.mktemp("models") / "tiny-bart")


@pytest.fixture(scope="module")
def t5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_t5(tmp_path_factory.mktemp("models") / "tiny-t5")


def documents(n: int, seed: int = 8) -> list[dict[str, Any]]:
    return [{"text": t[:200]} for t in mixed_texts(n, seed=seed)]


def problem(task: str, fields: Any, params: dict[str, Any] | None = None, item: int = 3) -> str | None:
    spec = ModelSpec(name="s2s", task=task, path="/nowhere")
    return check_item(TASKS[task], spec, params or {}, fields, item, Settings(max_item_chars=10_000))


@pytest.mark.parametrize("task", TASKS)
def test_registered_under_its_task(task: str) -> None:
    assert family_for(task) is TASKS[task]
    assert issubclass(TASKS[task], Seq2SeqGeneration)


# submit time -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "bad", "says"),
    [
        ("max_length", 0, "must be in [1, 4096]"),
        ("min_length", -1, "must be in [0, 4096]"),
        ("max_new_tokens", 5000, "must be in [1, 2048]"),
        ("num_beams", 1.5, "must be an integer"),
        ("length_penalty", "long", "must be a number"),
        ("no_repeat_ngram_size", 100, "must be in [0, 64]"),
        ("early_stopping", "sometimes", 'must be true, false or "never"'),
        ("prefix", 3, "must be a string"),
    ],
)
@pytest.mark.parametrize("task", TASKS)
def test_bad_option_names_the_item_and_the_field(task: str, field: str, bad: Any, says: str) -> None:
    message = problem(task, {"text": "x", field: bad})
    assert message is not None and message.startswith(f"item 3: {field!r} {says}, got "), message
    with pytest.raises(ValidationError, match=f"job params: {field!r}"):
        TASKS[task].validate_params({field: bad}, ModelSpec(name="s2s", task=task, path="/nowhere"))


def test_cross_field_and_task_specific_checks() -> None:
    message = problem("summarization", {"text": "x", "min_length": 9, "max_length": 5})
    assert message == "item 3: 'min_length' (9) is above 'max_length' (5)"
    assert problem("summarization", {"text": "x", "min_length": 5, "max_length": 5, "early_stopping": "never"}) is None
    assert problem("translation", {"text": "x", "src_lang": "en", "tgt_lang": "de"}) is None
    assert problem("translation", {"text": "x", "tgt_lang": 7}) is not None
    spec = ModelSpec(name="s2s", task="summarization", path="/nowhere")
    with pytest.raises(ValidationError, match=r"unknown option.*'tgt_lang'"):
        Summarization.validate_params({"tgt_lang": "de"}, spec)


# run time --------------------------------------------------------------------------------------


def test_each_task_names_its_text_like_its_4x_pipeline(bart: Path) -> None:
    names = {"summarization": "summary_text", "translation": "translation_text"}
    for task in TASKS:
        row = run_items(loaded(bart, task), [(0, {"text": "a document", "max_new_tokens": 4})])[0]
        assert row["error"] is None
        keys = {"generated_text", "n_new_tokens", "finish_reason"} | ({names[task]} if task in names else set())
        assert set(row["output"]) == keys
        if task in names:
            assert row["output"][names[task]] == row["output"]["generated_text"]


@pytest.mark.parametrize(
    "params",
    [{"max_new_tokens": 10}, {"num_beams": 3, "max_length": 9, "length_penalty": 0.5, "no_repeat_ngram_size": 2}],
)
def test_results_do_not_depend_on_the_batch(bart: Path, params: dict[str, Any]) -> None:
    family = loaded(bart, "summarization")
    items = [(i, {**params, **x}) for i, x in enumerate(documents(12))]
    together = run_items(family, items)
    small = run_items(family, list(reversed(items)), max_tokens=250, max_size=3)
    for i, _ in items:
        assert_same(together[i], small[i])
    assert {r["output"]["finish_reason"] for r in together.values()} == {"eos", "length"}


def test_items_with_their_own_options_share_a_batch(bart: Path) -> None:
    family = loaded(bart, "text2text-generation")
    texts = documents(5, seed=2)
    options = [{"max_new_tokens": 3}, {"num_beams": 2, "max_length": 8}, {"min_length": 6, "max_new_tokens": 7},
               {"prefix": "q: "}, {"do_sample": True, "seed": 2, "max_new_tokens": 6}]  # fmt: skip
    items = [(i, {**texts[i], **o}) for i, o in enumerate(options)]
    mixed = run_items(family, items)
    for item in items:
        assert_same(mixed[item[0]], run_items(family, [item])[item[0]])
    assert mixed[2]["output"]["n_new_tokens"] >= 5  # min_length counts the decoder start token


def test_sampling_matches_generate_seeded_per_item(t5: Path) -> None:
    inputs = documents(8, seed=5)
    params = {"do_sample": True, "seed": 11, "max_new_tokens": 8, "top_p": 0.9}
    expected = generate_rows(t5, inputs, params)
    rows = run_items(loaded(t5, "text2text-generation"), [(i, {**params, **x}) for i, x in enumerate(inputs)])
    for i, exp in enumerate(expected):
        assert rows[i]["output"]["generated_text"] == exp["generated_text"]
        assert rows[i]["score"] == pytest.approx(exp["score"], abs=1e-4)


def test_prefix_comes_from_the_job_else_the_task_specific_params(t5: Path) -> None:
    family = loaded(t5, "translation")
    text = "the quick brown fox"
    (with_task,) = family.preprocess(0, {"text": text, "src_lang": "en", "tgt_lang": "de"})
    assert with_task.ids["input_ids"] == family.tokenizer(EN_DE["prefix"] + text)["input_ids"]
    assert with_task.meta["options"] == {"num_beams": 3, "max_length": 10}
    (own,) = family.preprocess(0, {"text": text, "src_lang": "en", "tgt_lang": "de", "prefix": "", "max_new_tokens": 4,
                                   "num_beams": 1})  # fmt: skip
    assert own.ids["input_ids"] == family.tokenizer(text)["input_ids"]
    assert own.meta["options"] == {"num_beams": 1, "max_new_tokens": 4}
    (unknown,) = family.preprocess(0, {"text": text, "src_lang": "en", "tgt_lang": "fr"})
    assert unknown.ids["input_ids"] == family.tokenizer(text)["input_ids"] and unknown.meta["options"] == {}


def test_multilingual_tokenizers_force_the_target_language_code(bart: Path) -> None:
    family = loaded(bart, "translation")
    family.tokenizer.src_lang = None  # what mBART/NLLB/M2M100 tokenizers have; any vocabulary token stands in
    code = "the"
    rows = run_items(family, [(0, {"text": "some text", "tgt_lang": code, "max_new_tokens": 5}),
                              (1, {"text": "some text", "tgt_lang": "xx_XX", "max_new_tokens": 5})])  # fmt: skip
    assert rows[0]["output"]["generated_text"].startswith(code)
    assert rows[1]["error"] == "tgt_lang 'xx_XX' is not a language code this model's tokenizer knows"


def test_long_inputs_are_truncated_to_the_encoder_limit(bart: Path) -> None:
    family = loaded(bart, "summarization")
    (feature,) = family.preprocess(0, {"text": " ".join(mixed_texts(40)), "max_new_tokens": 6})
    assert len(feature.ids["input_ids"]) == 128
    assert feature.length == 128 + 6
