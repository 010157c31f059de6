"""Oracle case for a model that ships its own code (``trust_remote_code``), pinned by ``code_sha256``.

The directory holds ``configuration_tiny.py`` and ``modeling_tiny.py`` and a ``config.json`` whose
``model_type`` transformers does not know and whose ``auto_map`` names those files, as a hub
repository with custom code does. The model is a BERT classifier whose code doubles its logits,
so results that match prove this directory's code ran. The pin is computed from the sources
below (no need to build the model first: the session's registry is written before any model is).
The oracle is ``pipeline("text-classification", trust_remote_code=True)`` on the directory.

Remote code copied by transformers in the test process goes to a temporary directory of this
process (:func:`modules_cache`), never to the user's home.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import shutil
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

from sluice.remote_code import manifest_sha256, use_modules_cache
from tests.models import OracleCase
from tests.models.common import bert_config, build_wordpiece, mixed_texts, save
from tests.models.text_classification import check

LABELS = ("negative", "neutral", "positive")
MODEL_TYPE = "sluice-tiny-remote"
SOURCES = {
    "configuration_tiny.py": '''"""A BERT configuration under a model type transformers does not know."""
from transformers import BertConfig


class TinyRemoteConfig(BertConfig):
    model_type = "sluice-tiny-remote"
''',
    "modeling_tiny.py": '''"""BERT sequence classification whose logits are doubled: code only this directory has."""
from transformers import BertForSequenceClassification

from .configuration_tiny import TinyRemoteConfig


class TinyRemoteForSequenceClassification(BertForSequenceClassification):
    config_class = TinyRemoteConfig

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits = out.logits * 2.0
        return out
''',
}
AUTO_MAP = {
    "AutoConfig": "configuration_tiny.TinyRemoteConfig",
    "AutoModelForSequenceClassification": "modeling_tiny.TinyRemoteForSequenceClassification",
}
#: per-file pins and the overall pin of the directory :func:`build_remote` writes
CODE_FILES = {name: hashlib.sha256(source.encode("utf-8")).hexdigest() for name, source in SOURCES.items()}
CODE_SHA256 = manifest_sha256(CODE_FILES)


@cache
def modules_cache() -> Path:
    """This test process's ``HF_MODULES_CACHE`` (set once, before any remote code loads in it; removed at exit)."""
    path = use_modules_cache(Path(tempfile.mkdtemp(prefix="sluice-test-hf-modules-")))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def build_remote(path: Path, seed: int = 3) -> Path:
    """The tiny custom-code model: BERT weights, a config naming the custom classes, their source files."""
    import torch
    from transformers import BertForSequenceClassification

    modules_cache()
    torch.manual_seed(seed)
    config = bert_config(num_labels=len(LABELS), id2label=dict(enumerate(LABELS)),
                         label2id={label: i for i, label in enumerate(LABELS)})  # fmt: skip
    model = BertForSequenceClassification(config).eval()
    torch.nn.init.normal_(model.classifier.weight, std=1.0)
    save(model, build_wordpiece(), path)
    saved = json.loads((path / "config.json").read_text(encoding="utf-8"))
    saved.update(model_type=MODEL_TYPE, architectures=["TinyRemoteForSequenceClassification"], auto_map=AUTO_MAP)
    (path / "config.json").write_text(json.dumps(saved, indent=2), encoding="utf-8")
    for name, source in SOURCES.items():
        (path / name).write_bytes(source.encode("utf-8"))
    return path


def oracle_rows(path: Path, inputs: list[dict[str, Any]], params: dict[str, Any]) -> list[Any]:
    from transformers import pipeline

    modules_cache()
    clf = pipeline("text-classification", model=str(path), top_k=None, device="cpu", trust_remote_code=True)
    assert type(clf.model).__name__ == "TinyRemoteForSequenceClassification"
    rows = [clf(x["text"], truncation=True) for x in inputs]
    return [r[0] if r and isinstance(r[0], list) else r for r in rows]


def _inputs() -> list[dict[str, Any]]:
    return [{"text": t} for t in mixed_texts(30, seed=12)]


CASES = [
    OracleCase("tiny-remote", "text-classification", build_remote, _inputs, oracle_rows, check,
               registry={"trust_remote_code": True, "code_sha256": CODE_SHA256}),
]  # fmt: skip
