"""A real stack per database backend: migrated database, registry of tiny models, worker process.

``stack`` is the one worker per backend for the whole session: a test uses it unless it must
kill, restart or configure a worker of its own (``test_fleet``, ``test_routing``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from subprocess import Popen

import pytest

from producer.client import Client
from sluice import migrate
from sluice.registry import BUNDLED_REGISTRY
from sluice.settings import Settings
from tests.conftest import make_settings, settings_env
from tests.launch import start_ready_worker, stop_worker
from tests.models import all_cases, registry_toml
from tests.secrets import WEBHOOK_SECRET

#: The stack's job callbacks (test_webhooks): receivers on 127.0.0.1, quick retries, a pass a second.
WEBHOOKS = {"webhook_allowed_hosts": ["127.0.0.1"], "webhook_secret": WEBHOOK_SECRET, "webhook_backoff_s": 0.2,
            "webhook_poll_s": 1.0}  # fmt: skip


@dataclass
class Stack:
    settings: Settings
    client: Client
    worker: Popen[bytes]
    env: dict[str, str]
    model_dirs: ModelDirs


#: Case models that tests outside test_oracles_e2e submit to by name: built when the stack starts.
NAMED_MODELS = ("tiny-clf", "tiny-ner", "tiny-vit", "tiny-gpt2", "tiny-llama-beams", "tiny-remote")


class ModelDirs(dict[str, Path]):
    """Every oracle case's tiny model directory, built on first access (then reused).

    The registry names every directory up front, but a model is built only when a test asks for
    it, before it submits to it: a process that runs three families' tests builds three models.
    """

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root
        self.cases = {case.model: case for case in all_cases()}
        for name in NAMED_MODELS:  # tests that submit to these by name never ask for their directory
            self[name]

    def path(self, name: str) -> Path:
        """Where ``name`` is (or will be) built, without building it."""
        return self.root / name

    def __missing__(self, name: str) -> Path:
        built = self.cases[name].build(self.path(name))
        if built != self.path(name):  # built earlier in this process, elsewhere: link it where the registry looks
            self.path(name).symlink_to(built, target_is_directory=True)
        self[name] = built
        helper = self.cases[name].params.get("assistant_model")
        if helper:  # a generation case's assistant is another case's model: the worker loads it too
            self[helper]  # builds it
        return built


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> ModelDirs:
    """Every oracle case's tiny model, built on first use and once per session."""
    return ModelDirs(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def registry_file(model_dirs: ModelDirs, tmp_path_factory: pytest.TempPathFactory) -> Path:
    entries = {
        name: {"task": case.task, "path": str(model_dirs.path(name)), **case.registry}
        for name, case in model_dirs.cases.items()
    }
    path = tmp_path_factory.mktemp("registry") / "models.toml"
    path.write_text(BUNDLED_REGISTRY.read_text(encoding="utf-8") + "\n" + registry_toml(entries), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def stack(
    database_url: str, broker_url: str, registry_file: Path, model_dirs: ModelDirs,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:  # fmt: skip
    var = tmp_path_factory.mktemp("var")
    settings = make_settings(database_url, broker_url, var, models_file=registry_file, chunk_size=64, **WEBHOOKS)
    migrate.upgrade(settings)
    hostname = f"test-{os.getpid()}-{var.name}@localhost"
    proc = start_ready_worker(settings, ["minilm"], var / "worker.log", hostname)
    yield Stack(settings, Client(settings), proc, settings_env(settings), model_dirs)
    stop_worker(proc)


def sluice(stack: Stack, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the ``sluice`` command line against the stack's settings."""
    return subprocess.run(
        [sys.executable, "-m", "sluice.cli", *args],
        env={**os.environ, **stack.env}, capture_output=True, text=True, check=check, timeout=300,
    )  # fmt: skip
