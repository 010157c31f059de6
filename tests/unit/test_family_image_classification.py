"""``image-classification``: submit-time checks, image sources, per-item failures and batching by cost."""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from producer.validate import check_item
from sluice.families import families, family_for
from sluice.families.image_classification import ImageClassification
from sluice.registry import ModelSpec
from sluice.settings import Settings, get_settings
from tests.models.image_classification import build_image_classifier, pipeline_rows
from tests.models.images import check_ranked, image_paths
from tests.unit.test_oracles import run_engine
from worker.engine import Engine

TASK = "image-classification"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_image_classifier(tmp_path_factory.mktemp("models") / "tiny-vit")


@pytest.fixture
def spec(model_dir: Path) -> ModelSpec:
    return ModelSpec(name="tiny-vit", task=TASK, path=str(model_dir))


@pytest.fixture
def url_prefixes(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Set SLUICE_IMAGE_URL_PREFIXES for the test; settings are re-read around it."""

    def allow(*prefixes: str) -> None:
        monkeypatch.setenv("SLUICE_IMAGE_URL_PREFIXES", json.dumps(list(prefixes)))
        get_settings.cache_clear()

    monkeypatch.delenv("SLUICE_IMAGE_URL_PREFIXES", raising=False)
    get_settings.cache_clear()
    yield allow
    monkeypatch.delenv("SLUICE_IMAGE_URL_PREFIXES", raising=False)
    get_settings.cache_clear()


@pytest.fixture(scope="module")
def image_server() -> Iterator[str]:
    """The test images over HTTP on loopback; yields the base URL (ending in '/')."""
    directory = str(Path(image_paths()[0]).parent)
    handler = functools.partial(_QuietHandler, directory=directory)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def _error(fields: dict[str, Any], spec: ModelSpec, params: dict[str, Any] | None = None) -> str | None:
    return check_item(ImageClassification, spec, params or {}, fields, 7, Settings(max_item_chars=1000))


def test_family_is_discovered_and_helpers_are_not() -> None:
    assert family_for(TASK) is ImageClassification
    assert all(cls.__module__ != "sluice.families.images" for cls in families().values())


def test_settings_read_url_prefixes_from_env_as_json(url_prefixes: Any) -> None:
    assert Settings().image_url_prefixes == []
    url_prefixes("https://a.example/img/", "http://b.example/")
    assert Settings().image_url_prefixes == ["https://a.example/img/", "http://b.example/"]


def test_submit_accepts_every_test_image(spec: ModelSpec) -> None:
    for path in image_paths():
        assert _error({"image": path}, spec) is None


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, "missing required field 'image'"),
        ({"image": 3}, "field 'image' must be a string"),
        ({"image": "/nonexistent/cat.png"}, "does not exist"),
        ({"image": "https://images.example.com/cat.png"}, "not under an allowed prefix (allowed: none)"),
    ],
)
def test_submit_rejects_bad_sources_naming_item_and_field(spec: ModelSpec, fields: dict[str, Any], expected: str,
                                                          url_prefixes: Any) -> None:  # fmt: skip
    error = _error(fields, spec)
    assert error is not None and error.startswith("item 7: ")
    assert "'image'" in error and expected in error


def test_submit_rejects_directories_and_files_that_are_not_images(spec: ModelSpec, tmp_path: Path) -> None:
    text = tmp_path / "notes.png"
    text.write_text("not an image at all")
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(Path(image_paths()[3]).read_bytes()[:200])
    assert "is not a file" in (_error({"image": str(tmp_path)}, spec) or "")
    for path in (text, truncated):
        error = _error({"image": str(path)}, spec)
        assert error is not None and error.startswith("item 7: field 'image'") and "not a readable image" in error


def test_submit_allows_urls_only_under_a_configured_prefix(spec: ModelSpec, url_prefixes: Any) -> None:
    url_prefixes("https://images.example.com/")
    assert _error({"image": "https://images.example.com/cat.png"}, spec) is None  # not fetched at submit
    error = _error({"image": "https://elsewhere.example.com/cat.png"}, spec)
    assert error is not None and "'https://images.example.com/'" in error


@pytest.mark.parametrize("top_k", [0, -1, "3", True, 2.5])
def test_top_k_must_be_a_positive_integer(spec: ModelSpec, top_k: Any) -> None:
    error = _error({"image": image_paths()[0], "top_k": top_k}, spec)
    assert error is not None and error.startswith("item 7: field 'top_k'")
    with pytest.raises(Exception, match="job params: field 'top_k' must be an integer >= 1"):
        ImageClassification.validate_params({"top_k": top_k}, spec)


def test_unreadable_images_fail_alone(spec: ModelSpec, model_dir: Path, tmp_path: Path, url_prefixes: Any) -> None:
    good = image_paths()[:6]
    corrupt = tmp_path / "corrupt.jpeg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    deleted = tmp_path / "gone.png"
    shutil.copy(good[0], deleted)
    deleted.unlink()  # valid at submit, gone by the time a worker gets to it
    sources = [good[0], str(corrupt), *good[1:3], str(deleted), "http://127.0.0.1:9/x.png", *good[3:]]
    inputs = [{"image": source} for source in sources]
    rows = run_engine(spec, inputs, {})
    bad = {1: "cannot read image", 4: "does not exist", 5: "not under an allowed prefix"}
    for i, needle in bad.items():
        assert rows[i]["label"] is None
        assert rows[i]["error"].startswith(f"item {i}: field 'image'") and needle in rows[i]["error"]
    ok = [i for i in range(len(inputs)) if i not in bad]
    expected = pipeline_rows(model_dir, [inputs[i] for i in ok], {})
    for i, exp in zip(ok, expected, strict=True):
        check_ranked(exp, rows[i])


def test_allowed_urls_are_fetched_and_match_local_files(spec: ModelSpec, model_dir: Path, image_server: str,
                                                        url_prefixes: Any) -> None:  # fmt: skip
    url_prefixes(image_server)
    paths = image_paths()[:5]
    urls = [{"image": image_server + Path(p).name} for p in paths]
    assert all(_error(x, spec) is None for x in urls)
    rows = run_engine(spec, [*urls, {"image": image_server + "missing.png"}], {})
    expected = pipeline_rows(model_dir, [{"image": p} for p in paths], {})
    for i, exp in enumerate(expected):
        check_ranked(exp, rows[i])
    assert rows[5]["error"].startswith("item 5: field 'image': cannot read image")


def test_token_budget_bounds_images_per_batch(spec: ModelSpec) -> None:
    family = family_for(TASK)(spec, "cpu")
    family.setup()
    items = [(i, {"image": p}) for i, p in enumerate(image_paths())]
    patches = (32 // 8) ** 2  # every image costs its patch count, whatever its size on disk
    features = [f for _, fields in items[:4] for f in family.preprocess(0, fields)]
    assert [f.length for f in features] == [patches] * 4
    sizes = [stats.features for _, stats in Engine(family, 4 * patches, 64).run(items)]
    assert max(sizes) == 4 and sum(sizes) == len(items)
