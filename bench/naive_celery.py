"""The naive Celery design users write first: one task per document, result written per task.

The model is resident (loaded once per worker process) to be fair; what this design lacks is
batching and bulk writes. Run as ``celery -A bench.naive_celery worker --pool=solo``.
"""

from __future__ import annotations

import os

import numpy as np
from celery import Celery
from celery.signals import worker_init
from sqlalchemy import Column, Float, Integer, LargeBinary, MetaData, String, Table, create_engine, insert

app = Celery("naive", broker=os.environ.get("NAIVE_BROKER_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    worker_prefetch_multiplier=1,
    task_acks_late=True,
    task_default_queue=os.environ.get("NAIVE_QUEUE", "naive"),
)
meta = MetaData()
results = Table("naive_results", meta, Column("job", String(36)), Column("doc", Integer),
                Column("label", String(64)), Column("score", Float), Column("embedding", LargeBinary))  # fmt: skip
_state: dict[str, object] = {}


def engine():  # type: ignore[no-untyped-def]
    if "engine" not in _state:
        _state["engine"] = create_engine(os.environ["NAIVE_DATABASE_URL"])
        meta.create_all(_state["engine"])  # type: ignore[arg-type]
    return _state["engine"]


@worker_init.connect
def _load(**_: object) -> None:
    import torch
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    torch.set_num_threads(int(os.environ.get("NAIVE_THREADS", "2")))
    path, kind = os.environ["NAIVE_MODEL_PATH"], os.environ["NAIVE_KIND"]
    cls = AutoModel if kind == "embed" else AutoModelForSequenceClassification
    _state["tok"] = AutoTokenizer.from_pretrained(path)
    _state["model"] = cls.from_pretrained(path).eval()
    engine()


@app.task(name="naive.infer")
def infer(job: str, doc: int, text: str) -> None:
    import torch

    enc = _state["tok"](text, truncation=True, max_length=256, return_tensors="pt")  # type: ignore[operator]
    with torch.inference_mode():
        out = _state["model"](**enc)  # type: ignore[operator]
    row: dict[str, object] = {"job": job, "doc": doc}
    if hasattr(out, "logits"):
        probs = out.logits.softmax(-1)[0]
        row.update(label=str(int(probs.argmax())), score=float(probs.max()))
    else:
        mask = enc["attention_mask"].unsqueeze(-1)
        emb = (out.last_hidden_state * mask).sum(1) / mask.sum(1)
        row["embedding"] = np.asarray(emb[0], dtype=np.float32).tobytes()
    with engine().begin() as conn:
        conn.execute(insert(results).values(**row))
