"""Worker hooks: registered from settings by dotted path; a hook that raises is logged, never fatal."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from sluice.errors import ConfigError
from sluice.settings import Settings
from worker.hooks import Hooks, load_hooks

EVENTS: list[tuple[str, Any]] = []


class Recording(Hooks):
    def job_finished(self, job_ids: list[str]) -> None:
        EVENTS.append(("job_finished", job_ids))

    def model_loaded(self, model: str, info: dict[str, Any]) -> None:
        EVENTS.append(("model_loaded", model))


class Broken(Hooks):
    def job_finished(self, job_ids: list[str]) -> None:
        raise RuntimeError("metrics backend down")


def test_hooks_load_from_settings_and_a_raising_hook_does_not_stop_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    EVENTS.clear()
    settings = Settings(hooks=f"{__name__}:Broken,{__name__}.Recording")  # type: ignore[arg-type]
    chain = load_hooks(settings)
    with caplog.at_level(logging.ERROR, logger="sluice.worker"):
        chain.job_finished(["j1"])
        chain.model_loaded("m", {})
        chain.chunk_claimed([])  # nobody overrides it: a no-op
    assert EVENTS == [("job_finished", ["j1"]), ("model_loaded", "m")]
    assert "hook Broken.job_finished failed" in caplog.text


@pytest.mark.parametrize(
    ("path", "message"),
    [("nodots", "should be"), ("no.such.module:X", "cannot be imported"), (f"{__name__}:EVENTS", "not a subclass")],
)
def test_a_bad_hook_path_is_a_config_error_naming_it(path: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_hooks(Settings(hooks=[path]))
