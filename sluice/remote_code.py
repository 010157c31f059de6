"""Models that ship their own code: the code is pinned by hash before transformers may run it.

``trust_remote_code = true`` lets ``from_pretrained`` import and run the Python files of the model
directory (``configuration_*.py``, ``modeling_*.py``, ... named by ``auto_map`` in its config), in
the worker, with the worker's credentials. So a registry entry that sets it must also pin those
files with ``code_sha256``, and a worker refuses to load the model when they differ.

**The hash.** Every regular file named ``*.py`` under the model directory, at any depth
(symbolic links followed), by its path relative to the directory in POSIX form, sorted by that
path; the *manifest* is one line per file, ``<sha256 of its bytes>  <path>\\n``, which is what
``sha256sum`` prints; ``code_sha256`` is the sha256 of the manifest. For ordinary file names it is
reproducible without Sluice::

    cd DIR && find -L . -type f -name '*.py' | sed 's|^\\./||' | LC_ALL=C sort | xargs -d '\\n' sha256sum | sha256sum

``sluice models hash DIR`` prints it, with ``code_files``, the per-file hashes, as TOML to paste
into the entry. ``code_files`` is optional: the overall hash alone decides whether the code may
run, and with ``code_files`` pinned too a mismatch names exactly which file changed, appeared or
went missing. Without it a single hash cannot say which file changed, so the message lists the
files with their hashes and modification times, the most recently modified first.

Models registered in-process (``AutoConfig.register`` / ``AutoModel.register``) instead name a
module that does the registration (``register_module``): installed code, like hooks, imported by
the worker before ``from_pretrained`` (never by a producer), needing no ``trust_remote_code``.

A worker keeps transformers' copies of remote code (``HF_MODULES_CACHE``) under its own
``var_dir`` (:func:`use_modules_cache`), not in the user's home. Nothing here imports torch or
transformers.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from sluice.errors import ConfigError

if TYPE_CHECKING:
    from sluice.registry import ModelSpec

_SHA256 = re.compile(r"[0-9a-f]{64}")
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
#: files listed in a mismatch message without code_files (the message is stored on every item)
_LISTED = 10


class ModelCodeError(ConfigError):
    """A model's own code may not run: it differs from its pinned hash, cannot be checked, or
    its registration module is missing. Retrying cannot help, so a worker fails the items."""


# hashing -------------------------------------------------------------------------------------


def code_files(directory: Path) -> dict[str, str]:
    """sha256 of every ``*.py`` under ``directory`` (symlinks followed), by POSIX relative path, sorted."""
    root = Path(directory)
    found: dict[str, str] = {}
    seen: set[str] = set()
    for parent, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(parent)
        if real in seen:  # a symlink loop: each real directory once
            dirs[:] = []
            continue
        seen.add(real)
        for name in files:
            path = Path(parent) / name
            if name.endswith(".py") and path.is_file():
                found[path.relative_to(root).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return dict(sorted(found.items()))


def manifest_sha256(files: Mapping[str, str]) -> str:
    """sha256 of the manifest of ``files`` (path -> sha256): ``sha256sum``'s lines, sorted by path."""
    manifest = "".join(f"{files[path]}  {path}\n" for path in sorted(files))
    return hashlib.sha256(manifest.encode("utf-8")).hexdigest()


def code_sha256(directory: Path) -> str:
    """The ``code_sha256`` of a model directory."""
    return manifest_sha256(code_files(directory))


def registry_snippet(directory: Path) -> str:
    """The TOML lines that pin ``directory``'s code, for ``sluice models hash DIR``."""
    files = code_files(directory)
    if not files:
        return f"# {directory} holds no *.py files: the model needs no trust_remote_code\n"
    pins = ", ".join(f'{json.dumps(path)} = "{sha}"' for path, sha in files.items())  # JSON quoting is TOML's
    return f'trust_remote_code = true\ncode_sha256 = "{manifest_sha256(files)}"\ncode_files = {{ {pins} }}\n'


# registry checks (producer and worker) -------------------------------------------------------


def check_entry(
    name: str, trust: object, sha: object, files: object, register_module: object
) -> tuple[str | None, tuple[tuple[str, str], ...] | None]:
    """Check an entry's remote-code keys; the normalised ``code_sha256`` and ``code_files``.

    Raises :class:`ConfigError` naming the entry and the key: ``trust_remote_code`` without
    ``code_sha256``, a malformed hash, pins without ``trust_remote_code``, ``code_files`` that do
    not hash to ``code_sha256``, a ``register_module`` that is not a dotted module name.
    """
    where = f"registry model {name!r}"
    if register_module is not None and not (isinstance(register_module, str) and _MODULE.fullmatch(register_module)):
        raise ConfigError(f"{where}: register_module must be a dotted module name, got {register_module!r}")
    if not isinstance(trust, bool):
        raise ConfigError(f"{where}: trust_remote_code must be true or false, got {trust!r}")
    if not trust:
        if sha is not None or files is not None:
            raise ConfigError(f"{where}: code_sha256 / code_files pin code that only runs with trust_remote_code = "
                              "true; set it, or remove the pins")  # fmt: skip
        return None, None
    if sha is None:
        raise ConfigError(
            f"{where}: trust_remote_code = true runs the Python files of its directory, so it needs them pinned: "
            'add code_sha256 = "..." (print it, after reading the code, with `sluice models hash DIR`)'
        )
    if not isinstance(sha, str) or not _SHA256.fullmatch(sha.lower()):
        raise ConfigError(f"{where}: code_sha256 must be 64 hexadecimal digits (`sluice models hash DIR`), got {sha!r}")
    return sha.lower(), _pinned_files(where, sha.lower(), files)


def _pinned_files(where: str, sha: str, files: object) -> tuple[tuple[str, str], ...] | None:
    if files is None:
        return None
    if not isinstance(files, dict) or not files:
        raise ConfigError(f'{where}: code_files must be a table of file = "sha256", got {files!r}')
    pins = {str(path): str(value).lower() for path, value in files.items()}
    bad = [path for path, value in pins.items() if not _SHA256.fullmatch(value)]
    if bad:
        raise ConfigError(f"{where}: code_files[{bad[0]!r}] must be 64 hexadecimal digits")
    if manifest_sha256(pins) != sha:
        raise ConfigError(f"{where}: code_files do not hash to code_sha256 (one of them was edited by hand?); "
                          "paste both from `sluice models hash DIR` again")  # fmt: skip
    return tuple(sorted(pins.items()))


# worker side ---------------------------------------------------------------------------------


def prepare(spec: ModelSpec) -> None:
    """Before ``from_pretrained``: import the entry's ``register_module``, check its pinned code."""
    if spec.register_module:
        try:
            importlib.import_module(spec.register_module)
        except ImportError as exc:
            raise ModelCodeError(f"model {spec.name!r}: register_module {spec.register_module!r} cannot be imported "
                                 f"on this worker ({exc}); install it where the workers run") from exc  # fmt: skip
    verify(spec)


def verify(spec: ModelSpec) -> None:
    """Raise :class:`ModelCodeError` unless the model's ``*.py`` files hash to its ``code_sha256``.

    A no-op for entries without ``trust_remote_code``; the registry refuses that flag without a
    hash, and a worker refuses a path that is not a local directory (a hub id), whose code it
    cannot read before transformers would fetch and run it.
    """
    if not spec.trust_remote_code:
        return
    directory = Path(spec.path)
    if not directory.is_dir():
        raise ModelCodeError(
            f"model {spec.name!r}: trust_remote_code needs a local model directory, whose code can be checked "
            f"against code_sha256, but {spec.path!r} is not one; download it (e.g. `hf download REPO --local-dir "
            "DIR`), read the code, and register DIR"
        )
    files = code_files(directory)
    if manifest_sha256(files) != spec.code_sha256:
        raise ModelCodeError(mismatch_message(spec, directory, files))


def mismatch_message(spec: ModelSpec, directory: Path, files: Mapping[str, str]) -> str:
    """Why the code does not match: the files that differ from ``code_files``, or without it every
    file with its hash and modification time, most recent first."""
    head = (f"model {spec.name!r}: the Python code in {directory} does not match the registry's code_sha256, "
            "so it will not be run")  # fmt: skip
    advice = "if the change is intended and reviewed, run `sluice models hash DIR` and update the entry"
    if spec.code_files is not None:
        pinned = dict(spec.code_files)
        changed = [p for p in files if p in pinned and files[p] != pinned[p]]
        parts = [f"{p} changed (sha256 {files[p][:12]}, pinned {pinned[p][:12]})" for p in changed]
        parts += [f"{p} is new" for p in files if p not in pinned]
        parts += [f"{p} is missing" for p in pinned if p not in files]
        return f"{head}: {'; '.join(parts)}; {advice}"
    if not files:
        return f"{head}: it holds no *.py files; {advice}"
    stamps = {p: (directory / p).stat().st_mtime for p in files}
    recent = sorted(files, key=lambda p: -stamps[p])
    listed = ", ".join(f"{p} (sha256 {files[p][:12]}, modified {_when(stamps[p])})" for p in recent[:_LISTED])
    more = f", and {len(recent) - _LISTED} more" if len(recent) > _LISTED else ""
    return (f"{head}: the entry pins no code_files, so the changed file cannot be named for certain; most recently "
            f"modified: {recent[0]}; its files: {listed}{more}; {advice} (with code_files, a mismatch names the "
            "file)")  # fmt: skip


def _when(stamp: float) -> str:
    return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def use_modules_cache(directory: Path) -> Path:
    """Make transformers copy and import remote code under ``directory`` (``HF_MODULES_CACHE``).

    transformers reads ``HF_MODULES_CACHE`` once, when ``transformers.utils.hub`` is imported, and
    :mod:`transformers.dynamic_module_utils` keeps its own copy; so the variable is set for a
    process that has not imported transformers yet, and the modules' copies are updated in one
    that has. Call it before any model is loaded: the copies land in the cache dir in use then.
    """
    path = Path(directory).resolve()
    earlier = {os.environ.get("HF_MODULES_CACHE")}
    os.environ["HF_MODULES_CACHE"] = str(path)
    for name in ("transformers.utils.hub", "transformers.utils", "transformers.file_utils",
                 "transformers.dynamic_module_utils"):  # fmt: skip
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "HF_MODULES_CACHE"):
            earlier.add(module.HF_MODULES_CACHE)
            module.HF_MODULES_CACHE = str(path)  # type: ignore[attr-defined]
    _forget_imported_code({p for p in earlier if p and p != str(path)})
    return path


def _forget_imported_code(earlier: set[str]) -> None:
    """Drop ``transformers_modules`` imported from an ``earlier`` cache directory, and that directory
    from ``sys.path``.

    Python resolves ``transformers_modules.<model>`` through the package imported first, found on
    the first ``sys.path`` entry that has it: code copied to the new directory would not be found.
    A worker sets its cache once, before any load; this matters to a process that switches (tests).
    """
    sys.path[:] = [p for p in sys.path if p not in earlier]
    for name in [n for n in sys.modules if n == "transformers_modules" or n.startswith("transformers_modules.")]:
        del sys.modules[name]
    importlib.invalidate_caches()
