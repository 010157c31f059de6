from __future__ import annotations

from pathlib import Path

import pytest

from sluice.errors import ConfigError, UnknownModelError
from sluice.registry import Registry


def test_bundled_registry_resolves_packaged_minilm() -> None:
    registry = Registry.load()
    spec = registry.get("minilm")
    assert spec.task == "feature-extraction" and spec.normalize and spec.max_length == 256
    assert (Path(spec.path) / "model.safetensors").exists()
    assert registry.get("minilm-topics").options["temperature"] == 0.05
    assert not spec.trust_remote_code


def test_unknown_model_message_lists_registered_ones() -> None:
    with pytest.raises(UnknownModelError, match=r"'nope' is not registered.*minilm, minilm-topics"):
        Registry.load().get("nope")


def test_relative_paths_and_options(tmp_path: Path) -> None:
    (tmp_path / "weights").mkdir()
    (tmp_path / "models.toml").write_text(
        '[models.m]\ntask = "text-classification"\npath = "weights"\nlabels = ["a", "b"]\nfoo = 1\n'
    )
    spec = Registry.load(tmp_path / "models.toml").get("m")
    assert spec.path == str(tmp_path / "weights") and spec.labels == ("a", "b") and spec.options == {"foo": 1}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('[models.m]\npath = "x"\n', "has no 'task'"),
        ('[models.m]\ntask = "t"\n', "has no 'path'"),
        ("[models.m\n", "not valid TOML"),
    ],
)
def test_bad_registry_says_what_to_fix(tmp_path: Path, body: str, message: str) -> None:
    (tmp_path / "models.toml").write_text(body)
    with pytest.raises(ConfigError, match=message):
        Registry.load(tmp_path / "models.toml")
