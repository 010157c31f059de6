"""A real worker serves a model with its own code, pinned by hash, and refuses a tampered copy.

Its own worker (the shared ``stack`` registry is made of oracle cases, and a tampered model is not
one): the registry pins the same code for both directories; the tampered one's ``modeling_tiny.py``
gained a line. The worker loads models on demand (nothing preloaded, so a refused model cannot stop
it starting); the tampered job's items fail with the reason, naming the file, and its chunks close
(no redelivery loop). The remote code is copied under the worker's ``var_dir``, not the home dir.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from producer.client import Client
from sluice import migrate
from sluice.settings import Settings
from tests.conftest import make_settings
from tests.launch import start_ready_worker, stop_worker
from tests.models.remote_code import CASES, CODE_FILES, CODE_SHA256

CASE = CASES[0]


@dataclass
class Served:
    settings: Settings
    client: Client
    var: Path
    node: str
    good: Path
    bad: Path


@pytest.fixture(scope="module")
def served(database_url: str, broker_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("remote-code")
    good = CASE.build(root / "tiny-remote")
    bad = shutil.copytree(good, root / "tampered")
    with (bad / "modeling_tiny.py").open("a", encoding="utf-8") as f:
        f.write("\nimport os  # a line nobody reviewed\n")
    pins = f'trust_remote_code = true\ncode_sha256 = "{CODE_SHA256}"\n'
    files = "code_files = { " + ", ".join(f'"{k}" = "{v}"' for k, v in CODE_FILES.items()) + " }\n"
    registry = root / "models.toml"
    registry.write_text(
        f'[models.remote-ok]\ntask = "text-classification"\npath = "{good}"\n{pins}{files}\n'
        f'[models.remote-tampered]\ntask = "text-classification"\npath = "{bad}"\n{pins}{files}\n',
        encoding="utf-8",
    )
    var = root / "var"
    base = make_settings(database_url, broker_url, var, models_file=registry, chunk_size=16)
    settings = base.model_copy(update={"queue": f"{base.queue}-remote-{uuid.uuid4().hex[:6]}"})
    migrate.upgrade(settings)
    node = f"remote-{os.getpid()}@localhost"
    proc = start_ready_worker(settings, [], var / "worker.log", node)
    yield Served(settings, Client(settings), var, node, good, bad)
    stop_worker(proc)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_worker_serves_pinned_code_and_refuses_a_tampered_copy(served: Served) -> None:
    inputs = CASE.inputs()[:20]
    ok = served.client.submit("remote-ok", inputs)
    bad = served.client.submit("remote-tampered", inputs)  # two chunks: each is refused, none loops
    info = served.client.wait(ok, timeout=300, poll_s=0.1)
    assert (info.done, info.failed) == (len(inputs), 0)
    for expected, row in zip(CASE.expected(served.good, inputs, {}), served.client.results(ok), strict=True):
        CASE.check(expected, row)
    info = served.client.wait(bad, timeout=300, poll_s=0.1)
    assert (info.done, info.failed) == (0, len(inputs))
    errors = {row["error"] for row in served.client.results(bad)}
    (error,) = errors
    assert "model 'remote-tampered'" in error and "so it will not be run" in error
    assert "modeling_tiny.py changed" in error and "configuration_tiny.py" not in error
    # transformers copied the served model's code under the worker's own var dir
    copies = list((served.var / "hf_modules" / served.node / "transformers_modules").rglob("modeling_tiny.py"))
    assert copies and all(p.read_text() == (served.good / "modeling_tiny.py").read_text() for p in copies)
