"""Models with their own code: the pin (``code_sha256``), its registry checks, and the load-time refusal.

The tiny custom-code model is ``tests/models/remote_code.py``'s (its own ``configuration_tiny.py``
and ``modeling_tiny.py``, named by ``auto_map``); loads go through ``worker.residency.load_family``
as in a worker. Remote code copied by transformers lands in this process's temporary modules cache.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sluice import cli, remote_code
from sluice.errors import ConfigError
from sluice.registry import ModelSpec, Registry
from sluice.remote_code import ModelCodeError, code_files, code_sha256, use_modules_cache
from sluice.settings import Settings
from tests.models.remote_code import CASES, CODE_FILES, CODE_SHA256, SOURCES, modules_cache
from worker.main import modules_cache as worker_modules_cache
from worker.residency import load_family

PINS = f'trust_remote_code = true\ncode_sha256 = "{CODE_SHA256}"\n'
FILE_PINS = "code_files = { " + ", ".join(f'"{k}" = "{v}"' for k, v in CODE_FILES.items()) + " }\n"


def registry(tmp_path: Path, path: Path, extra: str, task: str = "text-classification") -> Registry:
    (tmp_path / "models.toml").write_text(f'[models.m]\ntask = "{task}"\npath = "{path}"\n{extra}', encoding="utf-8")
    return Registry.load(tmp_path / "models.toml")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    modules_cache()
    return CASES[0].build(tmp_path_factory.mktemp("remote") / "tiny-remote")


def tampered(model_dir: Path, tmp_path: Path) -> Path:
    """A copy of the model whose modeling file also writes a marker when it runs; config file older."""
    copy = shutil.copytree(model_dir, tmp_path / "tiny-remote")
    os.utime(copy / "configuration_tiny.py", (1_000_000_000, 1_000_000_000))
    with (copy / "modeling_tiny.py").open("a", encoding="utf-8") as f:
        f.write(f"\nimport pathlib\npathlib.Path({str(tmp_path / 'ran')!r}).write_text('ran')\n")
    return copy


# the hash ------------------------------------------------------------------------------------


def test_code_sha256_is_sha256sum_of_the_sorted_python_files(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "modeling_x.py").write_text("x = 1\n")
    (tmp_path / "pkg" / "helpers.py").write_text("y = 2\n")
    (tmp_path / "config.json").write_text("{}")  # not code: not hashed
    (tmp_path / "alias.py").symlink_to(tmp_path / "pkg" / "helpers.py")  # followed, as Python would import it
    assert list(code_files(tmp_path)) == ["alias.py", "modeling_x.py", "pkg/helpers.py"]
    shell = ("find -L . -type f -name '*.py' | sed 's|^\\./||' | LC_ALL=C sort | xargs -d '\\n' sha256sum "
             "| sha256sum")  # fmt: skip
    out = subprocess.run(["bash", "-c", shell], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert out.split()[0] == code_sha256(tmp_path)
    (tmp_path / "config.json").write_text('{"changed": true}')
    assert out.split()[0] == code_sha256(tmp_path)
    (tmp_path / "pkg" / "helpers.py").write_text("y = 3\n")
    assert out.split()[0] != code_sha256(tmp_path)


def test_models_hash_prints_pins_the_registry_accepts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name, source in SOURCES.items():
        (tmp_path / name).write_text(source, encoding="utf-8")
    assert cli.main(["models", "hash", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert f'code_sha256 = "{CODE_SHA256}"' in printed
    spec = registry(tmp_path, tmp_path, printed).get("m")
    assert spec.trust_remote_code and spec.code_sha256 == CODE_SHA256 and dict(spec.code_files or ()) == CODE_FILES


# registry checks -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("trust_remote_code = true\n", r"trust_remote_code = true runs the Python files.*sluice models hash DIR"),
        ('trust_remote_code = true\ncode_sha256 = "abc"\n', "code_sha256 must be 64 hexadecimal digits"),
        (f'code_sha256 = "{CODE_SHA256}"\n', "only runs with trust_remote_code = true"),
        ('trust_remote_code = "yes"\n', "trust_remote_code must be true or false"),
        (PINS + 'code_files = { "modeling_tiny.py" = "' + "0" * 64 + '" }\n', "code_files do not hash to code_sha256"),
        ('register_module = "not a module"\n', "register_module must be a dotted module name"),
    ],
)
def test_registry_refuses_unpinned_or_malformed_code_keys(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        registry(tmp_path, tmp_path, extra)


def test_registry_never_imports_register_module(tmp_path: Path) -> None:
    spec = registry(tmp_path, tmp_path, 'register_module = "sluice_no_such_pkg.models"\n').get("m")
    assert spec.register_module == "sluice_no_such_pkg.models" and "sluice_no_such_pkg" not in sys.modules


# loading -------------------------------------------------------------------------------------


def test_pinned_model_loads_and_its_code_runs_from_the_modules_cache(model_dir: Path, tmp_path: Path) -> None:
    spec = registry(tmp_path, model_dir, PINS + FILE_PINS).get("m")
    family = load_family(spec, "cpu")
    model = family.model  # type: ignore[attr-defined]
    assert type(model).__name__ == "TinyRemoteForSequenceClassification"
    assert Path(sys.modules[type(model).__module__].__file__ or "").is_relative_to(modules_cache())


@pytest.mark.parametrize("with_files", [True, False], ids=["code_files", "hash-only"])
def test_tampered_code_is_refused_naming_the_file(model_dir: Path, tmp_path: Path, with_files: bool) -> None:
    spec = registry(tmp_path, tampered(model_dir, tmp_path), PINS + (FILE_PINS if with_files else "")).get("m")
    with pytest.raises(ModelCodeError) as refused:
        load_family(spec, "cpu")
    message = str(refused.value)
    assert "does not match the registry's code_sha256, so it will not be run" in message
    if with_files:
        assert f"modeling_tiny.py changed (sha256 {code_files(Path(spec.path))['modeling_tiny.py'][:12]}" in message
        assert "configuration_tiny.py" not in message
    else:  # one hash cannot say which file: the most recently modified is named, and every file listed
        assert "most recently modified: modeling_tiny.py;" in message and "configuration_tiny.py (sha256" in message
    assert not (tmp_path / "ran").exists()  # the tampered code never ran


def test_added_and_missing_files_are_named(model_dir: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(model_dir, tmp_path / "tiny-remote")
    (copy / "extra.py").write_text("import os\n")
    (copy / "configuration_tiny.py").unlink()
    spec = registry(tmp_path, copy, PINS + FILE_PINS).get("m")
    with pytest.raises(ModelCodeError, match=r"extra\.py is new; configuration_tiny\.py is missing"):
        remote_code.verify(spec)


def test_remote_code_needs_a_local_directory() -> None:
    spec = ModelSpec("m", "text-classification", "someone/some-model", trust_remote_code=True,
                     code_sha256=CODE_SHA256)  # fmt: skip
    with pytest.raises(ModelCodeError, match="needs a local model directory"):
        load_family(spec, "cpu")


def test_register_module_is_imported_before_loading(tmp_path: Path) -> None:
    import json

    from tests.models.text_classification import CASES as CLASSIFIERS

    path = shutil.copytree(CLASSIFIERS[0].build(tmp_path / "tiny-clf"), tmp_path / "registered")
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "model_type": "sluice-tiny-registered"}))
    if "tests.unit.registered_model" not in sys.modules:  # before the import, transformers cannot load it
        with pytest.raises(Exception, match="sluice-tiny-registered"):
            load_family(registry(tmp_path, path, "").get("m"), "cpu")
    missing = registry(tmp_path, path, 'register_module = "sluice_no_such_pkg.models"\n').get("m")
    with pytest.raises(ModelCodeError, match=r"register_module 'sluice_no_such_pkg\.models' cannot be imported"):
        load_family(missing, "cpu")
    family = load_family(registry(tmp_path, path, 'register_module = "tests.unit.registered_model"\n').get("m"), "cpu")
    assert type(family.model).__name__ == "TinyRegisteredForSequenceClassification"  # type: ignore[attr-defined]


# the worker's modules cache ------------------------------------------------------------------


def test_worker_keeps_remote_code_under_its_var_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers.dynamic_module_utils as dynamic
    import transformers.utils.hub as hub

    # Restored after the test: this process keeps using its own cache.
    for module in (dynamic, hub):
        monkeypatch.setattr(module, "HF_MODULES_CACHE", module.HF_MODULES_CACHE)
    monkeypatch.setenv("HF_MODULES_CACHE", os.environ.get("HF_MODULES_CACHE", ""))
    path = worker_modules_cache(Settings(var_dir=tmp_path / "var"), "gpu0@host/x")
    assert path == (tmp_path / "var" / "hf_modules" / "gpu0@host_x").resolve()
    # transformers was imported already: its module-level copies follow, and so does the environment.
    assert dynamic.HF_MODULES_CACHE == hub.HF_MODULES_CACHE == os.environ["HF_MODULES_CACHE"] == str(path)
    assert use_modules_cache(tmp_path / "other") == (tmp_path / "other").resolve()
