"""The OpenAI Files and Batch API through the real ``openai`` SDK, against a real ``sluice api``
process on the session's stack: embeddings equal to the native API's and sentence-transformers',
a chat batch equal to ``apply_chat_template`` + greedy ``generate``, per-line validation errors,
cancelling mid-batch, list paging, and ownership."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import openai
import pytest
from openai import OpenAI

from sluice.corpus import stdlib_documents
from sluice.registry import load_registry
from tests.api_server import ApiServer, start_api, stop_api, wait_for
from tests.integration.conftest import Stack

TERMINAL = ("completed", "failed", "expired", "cancelled")
CHAT_MODEL = "tiny-llama-beams"  # its tokenizer has a chat template (tests/models/text_generation.py)


@pytest.fixture(scope="module")
def api(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    server = start_api(stack.settings, stack.env, tmp_path_factory.mktemp("api") / "api.log")
    yield server
    stop_api(server)


def sdk(api: ApiServer, who: str) -> OpenAI:
    return OpenAI(base_url=f"{api.url}/v1", api_key=api.keys[who], max_retries=0, timeout=60)


def jsonl(endpoint: str, bodies: list[dict[str, Any]], ids: list[str] | None = None) -> bytes:
    ids = ids or [f"req-{n}" for n in range(len(bodies))]
    lines = [{"custom_id": i, "method": "POST", "url": endpoint, "body": b} for i, b in zip(ids, bodies, strict=True)]
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def run_batch(client: OpenAI, endpoint: str, content: bytes, until: tuple[str, ...] = TERMINAL, **extra: Any) -> Any:
    """Upload, create, and poll (with a deadline) until the batch reaches one of ``until``."""
    uploaded = client.files.create(file=("batch.jsonl", content), purpose="batch")
    assert uploaded.bytes == len(content) and uploaded.purpose == "batch"
    batch = client.batches.create(input_file_id=uploaded.id, endpoint=endpoint, completion_window="24h", **extra)
    assert batch.status == "validating"
    return wait_for(lambda: (b := client.batches.retrieve(batch.id)).status in until and b, "the batch", timeout=150)


def lines_of(client: OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def test_embeddings_batch_equals_native_api_and_sentence_transformers(api: ApiServer) -> None:
    from sentence_transformers import SentenceTransformer

    docs = [d[:600] for d in stdlib_documents(limit=40)[::8]]
    bodies: list[dict[str, Any]] = [{"model": "minilm", "input": d} for d in docs]
    bodies.append({"model": "minilm", "input": docs[:2]})  # one request, several texts
    bodies.append({"model": "minilm", "input": docs[0], "encoding_format": "base64"})
    client = sdk(api, "alice")
    batch = run_batch(client, "/v1/embeddings", jsonl("/v1/embeddings", bodies), metadata={"run": "embeddings"})
    assert batch.status == "completed", batch
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (7, 7, 0)
    assert batch.model == "minilm" and batch.metadata == {"run": "embeddings"} and batch.error_file_id is None
    assert batch.in_progress_at and batch.finalizing_at and batch.completed_at and batch.expires_at

    out = lines_of(client, batch.output_file_id)
    assert [line["custom_id"] for line in out] == [f"req-{n}" for n in range(7)]
    assert all(line["response"]["status_code"] == 200 and line["error"] is None for line in out)
    got = np.array([line["response"]["body"]["data"][0]["embedding"] for line in out[:5]], dtype=np.float32)
    pair = np.array([d["embedding"] for d in out[5]["response"]["body"]["data"]], dtype=np.float32)
    packed = np.frombuffer(base64.b64decode(out[6]["response"]["body"]["data"][0]["embedding"]), dtype="<f4")
    assert out[0]["response"]["body"]["usage"]["prompt_tokens"] > 0
    assert client.files.retrieve(batch.output_file_id).bytes == len(client.files.content(batch.output_file_id).content)

    reference = SentenceTransformer(load_registry(None).get("minilm").path, device="cpu").encode(docs)
    np.testing.assert_allclose(got, reference, atol=1e-4)
    np.testing.assert_allclose(pair, reference[:2], atol=1e-4)
    np.testing.assert_allclose(packed, reference[0], atol=1e-4)
    with api.client("alice") as http:
        job = http.post("/jobs", json={"model": "minilm", "items": docs}).json()["id"]
        wait_for(lambda: http.get(f"/jobs/{job}").json()["status"] == "completed", "the native job", timeout=90)
        native = [json.loads(x)["embedding"] for x in http.get(f"/jobs/{job}/results").text.splitlines()]
    np.testing.assert_allclose(got, np.array(native, dtype=np.float32), atol=1e-4)


def test_bad_lines_fail_the_batch_line_by_line(api: ApiServer) -> None:
    client = sdk(api, "alice")
    good = {"model": "minilm", "input": "fine"}
    content = jsonl("/v1/embeddings", [good, good, {"model": "minilm"}, {"model": "minilm", "input": [1, 2]}, good],
                    ids=["a", "a", "b", "c", "d"])  # fmt: skip
    content += json.dumps({"custom_id": "e", "method": "POST", "url": "/v1/completions", "body": good}).encode()
    batch = run_batch(client, "/v1/embeddings", content)
    assert batch.status == "failed" and batch.failed_at and batch.output_file_id is None
    assert [(e.line, e.code) for e in batch.errors.data] == [
        (2, "duplicate_custom_id"), (3, "invalid_value"), (4, "invalid_value"), (6, "invalid_url")]  # fmt: skip
    no_template = run_batch(client, "/v1/chat/completions", jsonl("/v1/chat/completions", [
        {"model": "tiny-gpt2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}]))  # fmt: skip
    (error,) = no_template.errors.data
    assert no_template.status == "failed" and error.line == 1 and "no chat template" in error.message


def test_chat_batch_equals_chat_template_and_greedy_generate(api: ApiServer, stack: Stack) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    parts = [{"type": "text", "text": "Parts"}, {"type": "text", "text": "joined"}]
    chats = [[{"role": "user", "content": "What does a job queue do?"}],
             [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a sorting algorithm."}],
             [{"role": "user", "content": parts}]]  # fmt: skip
    bodies = [{"model": CHAT_MODEL, "messages": m, "max_tokens": 8, "temperature": 0} for m in chats]
    client = sdk(api, "alice")
    batch = run_batch(client, "/v1/chat/completions", jsonl("/v1/chat/completions", bodies))
    assert batch.status == "completed" and batch.request_counts.completed == 3, batch
    out = lines_of(client, batch.output_file_id)

    path = stack.model_dirs[CHAT_MODEL]
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path).eval()
    for line, body in zip(out, bodies, strict=True):
        messages = [{"role": m["role"], "content": m["content"] if isinstance(m["content"], str)
                     else "\n".join(p["text"] for p in m["content"])} for m in body["messages"]]  # fmt: skip
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        assert ids["input_ids"][0].tolist().count(tokenizer.bos_token_id) == 1  # no second bos
        with torch.no_grad():
            new = model.generate(**ids, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        tokens = new[0, ids["input_ids"].shape[1] :].tolist()
        ended = tokenizer.eos_token_id in tokens
        tokens = tokens[: tokens.index(tokenizer.eos_token_id) + 1] if ended else tokens
        completion = line["response"]["body"]
        assert completion["object"] == "chat.completion" and completion["model"] == CHAT_MODEL
        assert completion["choices"][0]["message"]["content"] == tokenizer.decode(tokens, skip_special_tokens=True)
        assert completion["choices"][0]["finish_reason"] == ("stop" if ended else "length")
        assert completion["usage"] == {"prompt_tokens": ids["input_ids"].shape[1], "completion_tokens": len(tokens),
                                       "total_tokens": ids["input_ids"].shape[1] + len(tokens)}  # fmt: skip

    prompt = {"model": CHAT_MODEL, "prompt": "def fib(n):", "max_tokens": 6, "temperature": 0}
    done = run_batch(client, "/v1/completions", jsonl("/v1/completions", [prompt]))
    (text_line,) = lines_of(client, done.output_file_id)
    ids = tokenizer("def fib(n):", return_tensors="pt")
    with torch.no_grad():
        new = model.generate(**ids, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    tokens = new[0, ids["input_ids"].shape[1] :].tolist()
    tokens = tokens[: tokens.index(tokenizer.eos_token_id) + 1] if tokenizer.eos_token_id in tokens else tokens
    assert text_line["response"]["body"]["choices"][0]["text"] == tokenizer.decode(tokens, skip_special_tokens=True)


def test_cancel_mid_batch_keeps_the_results_so_far(api: ApiServer) -> None:
    docs = stdlib_documents(limit=1200)
    client = sdk(api, "alice")
    bodies = [{"model": "minilm", "input": d[:2000]} for d in docs]
    running = run_batch(client, "/v1/embeddings", jsonl("/v1/embeddings", bodies), until=("in_progress", *TERMINAL))
    assert running.status == "in_progress", running.status
    cancelling = client.batches.cancel(running.id)
    assert cancelling.status in ("cancelling", "cancelled") and cancelling.cancelling_at
    batch = wait_for(lambda: (b := client.batches.retrieve(running.id)).status == "cancelled" and b, "cancelled")
    counts = batch.request_counts
    assert counts.total == len(docs) and counts.completed + counts.failed == counts.total
    assert counts.failed > 0 and batch.cancelled_at
    out, errors = lines_of(client, batch.output_file_id), lines_of(client, batch.error_file_id)
    assert len(out) == counts.completed and len(errors) == counts.failed
    assert {e["error"]["code"] for e in errors} == {"batch_cancelled"}
    assert sorted(x["custom_id"] for x in out + errors) == sorted(f"req-{n}" for n in range(len(docs)))


def test_a_batch_past_its_window_expires_with_the_results_so_far(api: ApiServer, stack: Stack) -> None:
    from sqlalchemy import update

    from sluice.db import batches_table

    docs = stdlib_documents(limit=1200)
    client = sdk(api, "alice")
    bodies = [{"model": "minilm", "input": d[:2000]} for d in docs]
    running = run_batch(client, "/v1/embeddings", jsonl("/v1/embeddings", bodies), until=("in_progress", *TERMINAL))
    assert running.status == "in_progress", running.status
    with stack.client.engine.begin() as conn:  # the 24 h window, passed
        conn.execute(update(batches_table).where(batches_table.c.id == running.id)
                     .values(expires_at=datetime.now(UTC) - timedelta(seconds=1)))  # fmt: skip
    batch = wait_for(lambda: (b := client.batches.retrieve(running.id)).status == "expired" and b, "expired")
    counts = batch.request_counts
    assert batch.expired_at and counts.completed + counts.failed == counts.total == len(docs) and counts.failed > 0
    assert len(lines_of(client, batch.output_file_id)) == counts.completed
    assert {e["error"]["code"] for e in lines_of(client, batch.error_file_id)} == {"batch_expired"}


def test_list_paging_and_other_owners_get_404(api: ApiServer) -> None:
    bob = sdk(api, "bob")
    made = [run_batch(bob, "/v1/embeddings", jsonl("/v1/embeddings", [{"model": "minilm", "input": f"doc {n}"}]))
            for n in range(3)]  # fmt: skip
    page = bob.batches.list(limit=2)
    assert [b.id for b in page.data] == [made[2].id, made[1].id] and page.has_more
    rest = bob.batches.list(limit=2, after=page.data[-1].id)
    assert [b.id for b in rest.data] == [made[0].id] and not rest.has_more
    assert [b.id for b in bob.batches.list(limit=2)] == [b.id for b in reversed(made)]  # the SDK follows the cursor

    alice, batch = sdk(api, "alice"), made[0]
    assert batch.id not in [b.id for b in alice.batches.list()]
    for call in (lambda: alice.batches.retrieve(batch.id), lambda: alice.batches.cancel(batch.id),
                 lambda: alice.files.retrieve(batch.input_file_id), lambda: alice.files.content(batch.output_file_id),
                 lambda: alice.files.delete(batch.input_file_id)):  # fmt: skip
        with pytest.raises(openai.NotFoundError):
            call()
    with pytest.raises(openai.PermissionDeniedError):
        sdk(api, "alice-ro").files.create(file=("b.jsonl", b"{}\n"), purpose="batch")
    assert bob.files.delete(batch.input_file_id).deleted
    with pytest.raises(openai.NotFoundError):
        bob.files.retrieve(batch.input_file_id)
