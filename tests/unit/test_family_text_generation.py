"""``text-generation``: submit-time checks, left padding, batch invariance, seeded sampling, token budget."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from producer.validate import check_item
from sluice.errors import ValidationError
from sluice.families import family_for
from sluice.families.generation import GENERATE_DEFAULTS, GenerationFamily, TokenScorer, item_seed
from sluice.families.text_generation import TextGeneration
from sluice.registry import ModelSpec
from sluice.settings import Settings
from tests.models.common import mixed_texts
from tests.models.text_generation import build_gpt2, build_llama, pipeline_rows
from worker.batching import plan_batches
from worker.engine import Engine

TASK = "text-generation"


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_gpt2(tmp_path_factory.mktemp("models") / "tiny-gpt2")


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_llama(tmp_path_factory.mktemp("models") / "tiny-llama")


def loaded(path: Path, task: str = TASK, **spec: Any) -> GenerationFamily:
    family = family_for(task)(ModelSpec(name="tiny", task=task, path=str(path), **spec), "cpu")
    family.setup()
    return family  # type: ignore[return-value]


def run_items(family: GenerationFamily, items: list[tuple[int, dict[str, Any]]], max_tokens: int = 4096,
              max_size: int = 16) -> dict[int, dict[str, Any]]:  # fmt: skip
    """Items (with their own indices) through the engine: item → ``{score, output, error}``."""
    rows = {}
    for results, _ in Engine(family, max_tokens, max_size).run(items):
        for r in results:
            rows[r.item] = {"score": r.score, "output": r.output, "error": r.error, "n_tokens": r.n_tokens}
    return rows


def prompts(n: int, seed: int = 11) -> list[dict[str, Any]]:
    return [{"text": t[:80]} for t in mixed_texts(n, seed=seed)]


def assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["error"] is None and b["error"] is None, (a["error"], b["error"])
    assert a["output"] == b["output"]
    assert a["score"] == pytest.approx(b["score"], abs=1e-5)


def problem(fields: Any, params: dict[str, Any] | None = None, item: int = 3, **spec: Any) -> str | None:
    spec_ = ModelSpec(name="gen", task=TASK, path="/nowhere", **spec)  # submit time never loads the model
    return check_item(TextGeneration, spec_, params or {}, fields, item, Settings(max_item_chars=10_000))


def test_registered_under_its_task() -> None:
    assert family_for(TASK) is TextGeneration


def test_generate_defaults_are_transformers_own() -> None:
    from transformers import GenerationConfig

    defaults = GenerationConfig._get_default_generation_params()
    assert {k: defaults[k] for k in GENERATE_DEFAULTS} == GENERATE_DEFAULTS


# submit time -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "bad", "says"),
    [
        ("max_new_tokens", 0, "must be in [1, 2048]"),
        ("max_new_tokens", 2049, "must be in [1, 2048]"),
        ("max_new_tokens", "12", "must be an integer"),
        ("max_new_tokens", 3.0, "must be an integer"),
        ("max_new_tokens", True, "must be an integer"),
        ("num_beams", 0, "must be in [1, 32]"),
        ("temperature", 0, "must be in (0, 100]"),
        ("top_p", 1.5, "must be in (0, 1]"),
        ("top_p", 0.0, "must be in (0, 1]"),
        ("top_k", -1, "must be in [0, 1000000]"),
        ("repetition_penalty", 0.0, "must be in (0, 100]"),
        ("no_repeat_ngram_size", -2, "must be in [0, 64]"),
        ("do_sample", "yes", "must be true or false"),
        ("seed", -1, "must be in [0, 4294967295]"),
    ],
)
def test_bad_option_names_the_item_and_the_field(field: str, bad: Any, says: str) -> None:
    message = problem({"text": "x", field: bad})
    assert message is not None and message.startswith(f"item 3: {field!r} {says}, got "), message
    with pytest.raises(ValidationError, match=f"job params: {field!r}"):
        TextGeneration.validate_params({field: bad}, ModelSpec(name="gen", task=TASK, path="/nowhere"))


def test_nan_is_refused_at_submit_before_the_family_and_by_the_family_itself() -> None:
    """check_item refuses NaN for every family (JSON cannot store it); the family's own rule too."""
    message = problem({"text": "x", "temperature": float("nan")})
    assert message == "item 3: field 'temperature' is nan; JSON has no NaN or Infinity (use null or a number)"
    with pytest.raises(ValidationError, match="job params: 'temperature' must be a number"):
        TextGeneration.validate_params({"temperature": float("nan")}, ModelSpec(name="gen", task=TASK, path="/nowhere"))


def test_good_options_pass() -> None:
    good = {"max_new_tokens": 2048, "do_sample": True, "seed": 5, "temperature": 0.3, "top_p": 1, "top_k": 0,
            "repetition_penalty": 1.1, "no_repeat_ngram_size": 3}  # fmt: skip
    assert problem({"text": "x", **good}) is None
    assert problem({"text": "", "num_beams": 4}) is None
    TextGeneration.validate_params(good, ModelSpec(name="gen", task=TASK, path="/nowhere"))


def test_beam_sampling_and_unknown_params_are_refused() -> None:
    message = problem({"text": "x", "do_sample": True, "num_beams": 2})
    assert message is not None and message.startswith("item 3: 'do_sample' with 'num_beams' > 1")
    spec = ModelSpec(name="gen", task=TASK, path="/nowhere")
    with pytest.raises(ValidationError, match=r"unknown option.*'max_tokens'.*accepted: max_new_tokens"):
        TextGeneration.validate_params({"max_tokens": 5}, spec)
    assert problem({"text": 3}) == "item 3: field 'text' must be a string, got int"


def test_max_new_tokens_must_leave_room_for_a_prompt_under_the_registry_limit() -> None:
    assert problem({"text": "x", "max_new_tokens": 64}, max_length=64) is not None
    assert problem({"text": "x"}, max_length=32) is not None  # the default of 32 new tokens
    assert problem({"text": "x", "max_new_tokens": 63}, max_length=64) is None


# run time --------------------------------------------------------------------------------------


def test_feature_length_counts_prompt_new_tokens_and_beams(gpt2: Path) -> None:
    family = loaded(gpt2)
    (feature,) = family.preprocess(0, {"text": "hello world", "max_new_tokens": 7})
    prompt = len(feature.ids["input_ids"])
    assert feature.length == prompt + 7
    (beams,) = family.preprocess(0, {"text": "hello world", "max_new_tokens": 7, "num_beams": 3})
    assert beams.length == 3 * (prompt + 7)
    (default,) = family.preprocess(0, {"text": "hello world"})
    assert default.length == prompt + 32
    # The budget bounds prompt + generated tokens of a whole batch.
    lengths = [f.length for i in range(10) for f in family.preprocess(i, {"text": "a b c " * i, "max_new_tokens": 12})]
    for batch in plan_batches(lengths, 100, 64):
        assert len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= 100


def test_batches_are_left_padded_with_the_eos_fallback(gpt2: Path) -> None:
    family = loaded(gpt2)
    assert family.tokenizer.pad_token_id is None and family.pad_id == 0  # GPT-2 style: pad with eos
    short = family.preprocess(0, {"text": "ok"})[0]
    long = family.preprocess(1, {"text": "a much longer prompt than that"})[0]
    batch = family.collate([long, short])
    width = len(long.ids["input_ids"])
    pad = width - len(short.ids["input_ids"])
    assert batch["input_ids"][1, :pad].tolist() == [0] * pad
    assert batch["attention_mask"][1].tolist() == [0] * pad + [1] * (width - pad)


def test_greedy_and_beam_results_do_not_depend_on_the_batch(llama: Path) -> None:
    family = loaded(llama)
    for params in ({"max_new_tokens": 9}, {"max_new_tokens": 8, "num_beams": 3, "repetition_penalty": 1.3}):
        items = [(i, {**params, **x}) for i, x in enumerate(prompts(12))]
        together = run_items(family, items)
        small = run_items(family, list(reversed(items)), max_tokens=200, max_size=3)
        for i, _ in items:
            assert_same(together[i], small[i])
        for i in (0, 5):
            assert_same(together[i], run_items(family, [items[i]])[i])


def test_sampling_is_seeded_per_item_whatever_the_batch(gpt2: Path) -> None:
    family = loaded(gpt2)
    params = {"max_new_tokens": 10, "do_sample": True, "seed": 3, "top_k": 0, "temperature": 1.5}
    items = [(i, {**params, **x}) for i, x in enumerate(prompts(12))]
    together = run_items(family, items)
    again = run_items(family, items[6:] + items[:6], max_tokens=200, max_size=4)
    for i, _ in items:
        assert_same(together[i], again[i])
    # The same prompt sampled as two items gives two samples; another job seed gives others.
    twice = run_items(family, [(0, items[4][1]), (1, items[4][1])])
    assert twice[0]["output"] != twice[1]["output"]
    reseeded = run_items(family, [(i, {**f, "seed": 4}) for i, f in items])
    assert sum(reseeded[i]["output"] != together[i]["output"] for i, _ in items) > len(items) // 2
    assert item_seed(3, 5) == 8


def test_items_with_their_own_options_share_a_batch(gpt2: Path) -> None:
    family = loaded(gpt2)
    texts = prompts(6, seed=3)
    options = [{"max_new_tokens": 3}, {"max_new_tokens": 11}, {"num_beams": 2, "max_new_tokens": 5},
               {"do_sample": True, "seed": 1, "max_new_tokens": 6}, {"no_repeat_ngram_size": 2, "max_new_tokens": 8},
               {}]  # fmt: skip
    items = [(i, {**texts[i], **o}) for i, o in enumerate(options)]
    mixed = run_items(family, items)
    for item in items:
        assert_same(mixed[item[0]], run_items(family, [item])[item[0]])
    assert mixed[0]["output"]["n_new_tokens"] <= 3
    assert mixed[5]["output"]["n_new_tokens"] <= 32


def test_finish_reason_and_counts(gpt2: Path) -> None:
    family = loaded(gpt2)
    rows = run_items(family, [(i, {**x, "max_new_tokens": 12}) for i, x in enumerate(prompts(20))])
    reasons = {r["output"]["finish_reason"] for r in rows.values()}
    assert reasons == {"eos", "length"}  # the fixture stops some prompts early
    for r in rows.values():
        n = r["output"]["n_new_tokens"]
        assert (n == 12) if r["output"]["finish_reason"] == "length" else (1 <= n <= 12)
        assert r["score"] <= 0.0


def test_token_scorer_matches_compute_transition_scores(llama: Path) -> None:
    import torch

    family = loaded(llama)
    model, tokenizer = family.model, family.tokenizer
    tokenizer.padding_side = "left"
    enc = tokenizer([x["text"] for x in prompts(5)], return_tensors="pt", padding=True)
    for options, mode in (({}, "greedy"), ({"num_beams": 3}, "beam"), ({"repetition_penalty": 1.5}, "greedy")):
        scorer = TokenScorer(mode, keep=2 * 3)
        out = model.generate(**enc, **options, max_new_tokens=7, do_sample=False, output_scores=True,
                             return_dict_in_generate=True, logits_processor=[scorer])  # fmt: skip
        beam_indices = getattr(out, "beam_indices", None)
        expected = model.compute_transition_scores(out.sequences, out.scores, beam_indices,
                                                   normalize_logits=mode == "greedy")  # fmt: skip
        new = out.sequences[:, enc["input_ids"].shape[1] :]
        got = scorer.transition_logprobs(new, beam_indices)
        # Up to and including each row's eos: what the score averages (after it there is only padding).
        eos = (new == model.generation_config.eos_token_id).int()
        live = (eos.cumsum(1) - eos) == 0
        assert live.sum() > 20 and (~live).sum() > 0
        assert torch.allclose(got[live], expected[live], atol=1e-5)


def test_long_prompts_keep_their_tail_and_impossible_lengths_fail_alone(gpt2: Path) -> None:
    family = loaded(gpt2)
    long = " ".join(mixed_texts(40))
    (feature,) = family.preprocess(0, {"text": long, "max_new_tokens": 12})
    assert len(feature.ids["input_ids"]) == 128 - 12
    assert feature.ids["input_ids"] == family.tokenizer(long)["input_ids"][-116:]
    items = [(0, {"text": "fine", "max_new_tokens": 4}), (1, {"text": "no room", "max_new_tokens": 128})]
    rows = run_items(family, items)
    assert rows[0]["error"] is None
    assert "leaves no room for a prompt within the model's 128-token limit" in rows[1]["error"]


def test_empty_prompt_starts_from_bos_like_the_pipeline(gpt2: Path) -> None:
    inputs = [{"text": ""}, {"text": "x"}]
    expected = pipeline_rows(gpt2, inputs, {"max_new_tokens": 6})
    rows = run_items(loaded(gpt2), [(i, {**x, "max_new_tokens": 6}) for i, x in enumerate(inputs)])
    for i, exp in enumerate(expected):
        assert rows[i]["output"]["generated_text"] == exp["generated_text"]
        assert rows[i]["score"] == pytest.approx(exp["score"], abs=1e-4)
