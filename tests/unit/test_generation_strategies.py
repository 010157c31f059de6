"""Generation strategies: submit-time checks, assistants, custom generation code, mixed batches.

Each strategy's outputs are checked against ``model.generate`` by the oracle cases
(``tests/models/generation_strategies.py``); this module checks what those cannot: what is refused
at submit time, where assistants and custom code come from, and that items with different
strategies share a batch without changing each other.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from producer.validate import check_item
from sluice.families import family_for
from sluice.families.generation import GenerationFamily
from sluice.families.generation_options import assistant_problem
from sluice.families.text_generation import TextGeneration
from sluice.registry import ModelSpec, Registry
from sluice.remote_code import ModelCodeError, code_sha256
from sluice.settings import Settings
from tests.models import registry_toml
from tests.models.generation_strategies import CUSTOM_GENERATE, EMPTY_CODE_SHA, build_draft, custom_generate_dir
from tests.models.text_generation import build_gpt2
from tests.unit.test_family_text_generation import assert_same, prompts, run_items

TASK = "text-generation"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry with a tiny GPT-2, its draft (same tokenizer), a classifier and a custom-code entry."""
    root = tmp_path_factory.mktemp("models")
    build_gpt2(root / "main", seed=3)
    build_draft(root / "draft")
    other = root / "other-vocab"  # a draft whose vocabulary differs: config and tokenizer only, no weights
    other.mkdir()
    config = json.loads((root / "draft" / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "vocab_size": config["vocab_size"] + 8}))
    entries = {
        "main": {"task": TASK, "path": str(root / "main")},
        "draft": {"task": TASK, "path": str(root / "draft")},
        "other-vocab": {"task": TASK, "path": str(other)},
        "classifier": {"task": "text-classification", "path": str(root / "main")},
        "custom": {"task": TASK, "path": str(root / "main"), "trust_remote_code": True, "code_sha256": EMPTY_CODE_SHA,
                   "custom_generate": str(custom_generate_dir()),
                   "custom_generate_sha256": code_sha256(custom_generate_dir())},
    }  # fmt: skip
    (root / "models.toml").write_text(registry_toml(entries))
    return root


def family(root: Path, name: str = "main") -> GenerationFamily:
    registry = Registry.load(root / "models.toml")
    out = family_for(TASK)(registry.get(name), "cpu", Settings(models_file=root / "models.toml"))
    out.setup()
    return out  # type: ignore[return-value]


def problem(fields: dict[str, Any], spec: ModelSpec | None = None, settings: Settings | None = None) -> str | None:
    spec = spec or ModelSpec(name="gen", task=TASK, path="/nowhere")
    return check_item(TextGeneration, spec, {}, {"text": "x", **fields}, 3, settings or Settings())


# submit time -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"min_new_tokens": -1}, "'min_new_tokens' must be in [0, 2048]"),
        ({"min_new_tokens": 9, "max_new_tokens": 4}, "'min_new_tokens' (9) is above 'max_new_tokens' (4)"),
        ({"typical_p": 0}, "'typical_p' must be in (0, 1]"),
        ({"epsilon_cutoff": 1.5}, "'epsilon_cutoff' must be in [0, 1]"),
        ({"bad_words": "word"}, "'bad_words' must be a list of 1 to 64 non-empty strings"),
        ({"bad_words": ["ok", ""]}, "'bad_words' must be a list of 1 to 64 non-empty strings"),
        ({"suppress_tokens": [1, -2]}, "'suppress_tokens' must be a list of 1 to 1024 token ids"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "'stop' must be a non-empty string or a list of 1 to 4"),
        ({"num_return_sequences": 17}, "'num_return_sequences' must be in [1, 16]"),
        ({"num_return_sequences": 2}, "'num_return_sequences' (2) needs do_sample, or num_beams of at least 2"),
        ({"num_return_sequences": 3, "num_beams": 2}, "needs do_sample, or num_beams of at least 3"),
        ({"prompt_lookup_num_tokens": 0}, "'prompt_lookup_num_tokens' must be in [1, 64]"),
        ({"prompt_lookup_num_tokens": 3, "num_beams": 2}, "'prompt_lookup_num_tokens' (assisted decoding) runs"),
        ({"prompt_lookup_num_tokens": 3, "assistant_model": "d"}, "give 'assistant_model' or 'prompt_lookup"),
        ({"penalty_alpha": 0.6, "top_k": 4}, "'penalty_alpha' selects a decoding strategy transformers 5 moved"),
        ({"dola_layers": "middle"}, '\'dola_layers\' must be "low", "high" or a list of layer ids'),
    ],
)
def test_bad_strategy_options_are_refused_at_submit(fields: dict[str, Any], says: str) -> None:
    message = problem(fields)
    assert message is not None and message.startswith("item 3: ") and says in message, message


def test_good_strategy_options_pass() -> None:
    assert problem({"num_return_sequences": 3, "do_sample": True, "typical_p": 0.9, "epsilon_cutoff": 3e-4}) is None
    assert problem({"num_return_sequences": 2, "num_beams": 2, "stop": ["\n", "###"], "min_new_tokens": 2}) is None
    assert problem({"bad_words": [" hello", "world"], "suppress_tokens": [0, 7], "prompt_lookup_num_tokens": 4}) is None
    TextGeneration.validate_params({"num_return_sequences": 2, "do_sample": True, "stop": "x"},
                                   ModelSpec(name="gen", task=TASK, path="/nowhere"))  # fmt: skip


def test_assistants_are_registered_models_of_the_same_kind_and_vocabulary(models: Path) -> None:
    registry = Registry.load(models / "models.toml")
    settings = Settings(models_file=models / "models.toml")
    main = registry.get("main")
    assert problem({"assistant_model": "draft"}, main, settings) is None
    message = problem({"assistant_model": "nope"}, main, settings)
    assert message is not None and "'assistant_model' model 'nope' is not registered" in message
    message = problem({"assistant_model": "classifier"}, main, settings)
    assert message is not None and "is a text-classification model" in message
    message = problem({"assistant_model": "other-vocab"}, main, settings)
    assert message is not None and "has a vocabulary of 608 tokens, the model 600" in message
    assert assistant_problem.cache_info().hits + assistant_problem.cache_info().misses >= 4  # cached per job


def test_custom_generate_entries_need_trust_and_a_pin(models: Path) -> None:
    registry = Registry.load(models / "models.toml")
    custom = registry.get("custom")
    assert custom.options["custom_generate"] == str(custom_generate_dir())
    assert problem({"penalty_alpha": 0.6, "top_k": 4}, custom) is None  # passed on to the custom code
    assert problem({"assistant_model": "draft"}, custom) is not None
    unpinned = ModelSpec(name="c", task=TASK, path="/m", trust_remote_code=True, code_sha256=EMPTY_CODE_SHA,
                         options={"custom_generate": "/code"})  # fmt: skip
    assert "without custom_generate_sha256" in (problem({}, unpinned) or "")
    untrusted = ModelSpec(name="c", task=TASK, path="/m", options={"custom_generate": "/code",
                                                                     "custom_generate_sha256": "0" * 64})  # fmt: skip
    assert "without trust_remote_code = true" in (problem({}, untrusted) or "")


def test_custom_generate_resolves_like_path(tmp_path: Path) -> None:
    (tmp_path / "code").mkdir()
    (tmp_path / "models.toml").write_text(
        '[models.x]\ntask = "text-generation"\npath = "/m"\ncustom_generate = "code"\n'
    )
    assert Registry.load(tmp_path / "models.toml").get("x").options["custom_generate"] == str(tmp_path / "code")


# run time --------------------------------------------------------------------------------------


def test_assisted_greedy_keeps_greedy_output_and_the_assistant_stays_loaded(models: Path) -> None:
    gen = family(models)
    items = [(i, {**x, "max_new_tokens": 10}) for i, x in enumerate(prompts(6))]
    plain = run_items(gen, items)
    assisted = run_items(gen, [(i, {**f, "assistant_model": "draft"}) for i, f in items])
    for i, _ in items:  # assisted decoding verifies every token with the main model: greedy text is unchanged
        assert assisted[i]["output"]["generated_text"] == plain[i]["output"]["generated_text"]
        assert assisted[i]["score"] == pytest.approx(plain[i]["score"], abs=1e-4)
    assert list(gen.assistants) == ["draft"]
    draft = gen.assistants["draft"][0]
    run_items(gen, items[:2])
    assert gen.assistants["draft"][0] is draft  # loaded once, kept for the process


def test_an_assistant_starts_each_item_from_its_own_generation_config(models: Path) -> None:
    """The heuristic schedule changes num_assistant_tokens as it runs; items must not see each other's."""
    gen = family(models)
    params = {"max_new_tokens": 12, "assistant_model": "draft", "do_sample": True, "seed": 2}
    items = [(i, {**params, **x}) for i, x in enumerate(prompts(6, seed=4))]
    run_items(gen, items[:1])
    gen.assistants["draft"][1].num_assistant_tokens_schedule = "heuristic"
    forwards = run_items(gen, items)
    backwards = run_items(gen, list(reversed(items)))
    for i, _ in items:
        assert_same(forwards[i], backwards[i])


def test_items_with_different_strategies_share_a_batch(models: Path) -> None:
    gen = family(models)
    texts = prompts(7, seed=5)
    options = [{"num_return_sequences": 2, "do_sample": True, "seed": 1}, {"num_beams": 3, "num_return_sequences": 3},
               {"stop": ["e", "a"]}, {"assistant_model": "draft", "stop": "t"}, {"prompt_lookup_num_tokens": 2},
               {"bad_words": ["the", "in"], "suppress_tokens": [4], "min_new_tokens": 5}, {}]  # fmt: skip
    items = [(i, {**texts[i], "max_new_tokens": 8, **o}) for i, o in enumerate(options)]
    mixed = run_items(gen, items)
    for item in items:
        assert_same(mixed[item[0]], run_items(gen, [item])[item[0]])
    assert len(mixed[0]["output"]["sequences"]) == 2 and len(mixed[1]["output"]["sequences"]) == 3
    scores = [s["score"] for s in mixed[1]["output"]["sequences"]]
    assert scores == sorted(scores, reverse=True) and mixed[1]["score"] == scores[0]
    assert mixed[5]["output"]["n_new_tokens"] >= 5


def test_tokens_that_are_not_the_models_fail_the_item_alone(models: Path) -> None:
    gen = family(models)
    rows = run_items(gen, [(0, {"text": "a", "suppress_tokens": [10**6]}), (1, {"text": "b", "max_new_tokens": 3})])
    assert "suppress_tokens [1000000] are not token ids of this model" in rows[0]["error"]
    assert rows[1]["error"] is None


def test_custom_generate_runs_a_checked_copy(models: Path, tmp_path: Path) -> None:
    gen = family(models, "custom")
    copy = gen.custom_generate
    assert copy is not None and (copy / "custom_generate" / "generate.py").read_text() == CUSTOM_GENERATE
    rows = run_items(gen, [(i, {**x, "max_new_tokens": 6}) for i, x in enumerate(prompts(3))])
    assert all(r["error"] is None for r in rows.values())
    gen.release()
    assert not copy.exists()
    # Code that differs from its pin never loads.
    changed = tmp_path / "changed"
    shutil.copytree(custom_generate_dir(), changed)
    (changed / "custom_generate" / "generate.py").write_text(CUSTOM_GENERATE + "\n# edited\n")
    spec = Registry.load(models / "models.toml").get("custom")
    tampered = ModelSpec(**{**spec.__dict__, "options": {**spec.options, "custom_generate": str(changed)}})
    with pytest.raises(ModelCodeError, match="does not match custom_generate_sha256"):
        family_for(TASK)(tampered, "cpu").setup()
