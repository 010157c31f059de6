"""The package layering holds: core at the bottom, producer and worker above it and apart, and a
producer that never loads torch.

Checked on the source (every import statement, deferred ones included) and, for torch, on a
fresh interpreter that imports every producer and core module.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: The shell sits on top of everything; it may import producer and worker.
SHELL = {"sluice.cli", "sluice.cli_errors", "sluice.data_commands", "sluice.demo", "sluice.process", "sluice.api",
         "sluice.schedules", "sluice.exporter", "sluice.top", "sluice.monitor_commands"}  # fmt: skip
#: Packages whose every module is shell (the HTTP API and the scheduler sit on the producer client
#: and the ledger).
SHELL_PACKAGES = ("sluice.api.", "sluice.schedules.")
#: Core modules allowed to use SQLAlchemy: the schema and engine, the migrations runner and the ledger (Sluice's
#: own tables), and the user's databases: a SQL source read (sources) and a table sink written (sinks).
SQL_OWNERS = ("sluice.db", "sluice.schema", "sluice.migrate", "sluice.ledger", "sluice.sources", "sluice.sinks")


def _shell(module: str) -> bool:
    return module in SHELL or module.startswith(SHELL_PACKAGES)


def _modules(package: str) -> dict[str, Path]:
    found = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _top(name: str) -> str:
    return name.split(".")[0]


@pytest.mark.parametrize(("package", "forbidden"), [("producer", "worker"), ("worker", "producer")])
def test_producer_and_worker_never_import_each_other(package: str, forbidden: str) -> None:
    bad = {m: sorted(i for i in _imports(p) if _top(i) == forbidden) for m, p in _modules(package).items()}
    assert not {m: i for m, i in bad.items() if i}


def test_the_core_imports_neither_producer_nor_worker() -> None:
    core = {m: p for m, p in _modules("sluice").items() if not _shell(m)}
    bad = {m: sorted(i for i in _imports(p) if _top(i) in ("producer", "worker")) for m, p in core.items()}
    assert not {m: i for m, i in bad.items() if i}


def test_only_the_schema_migrations_and_ledger_use_sqlalchemy() -> None:
    modules = {**_modules("sluice"), **_modules("producer"), **_modules("worker")}
    users = sorted(m for m, p in modules.items() if any(_top(i) == "sqlalchemy" for i in _imports(p)))
    assert [m for m in users if not m.startswith(SQL_OWNERS)] == []


def test_producer_and_core_modules_import_without_torch_transformers_or_pil() -> None:
    """`sluice submit` must stay fast: one top-level `import torch` in a family would break this."""
    names = [m for m in {**_modules("sluice"), **_modules("producer")} if not _shell(m)]
    script = (
        "import importlib, json, sys\n"
        f"for name in {names!r}: importlib.import_module(name)\n"
        "from sluice.families import families; families()\n"
        "print(json.dumps([m for m in ('torch', 'transformers', 'PIL') if m in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
