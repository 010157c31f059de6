"""The exactly-once database contract, against SQLite and PostgreSQL (no worker needed)."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import event, insert, select, update

from producer.client import Client
from sluice.clock import utcnow
from sluice.db import Chunk, Job, Worker, get_engine
from sluice.families.base import ItemResult
from sluice.ledger import Claim, Ledger, Split
from sluice.recovery import heal, reclaim_own, reconcile, restore_unclaimed, stale_chunks
from sluice.status import JobStatus, WorkerStatus
from tests.conftest import make_settings
from worker.runtime import WorkerRuntime


@pytest.fixture
def client(migrated_database_url: str, broker_url: str, tmp_path: Path) -> Client:
    settings = make_settings(migrated_database_url, broker_url, tmp_path, chunk_size=4, max_attempts=2)
    client = Client(settings)
    client.dispatcher.send = lambda *a, **k: None  # type: ignore[method-assign]  # no worker here: keep Redis clean
    return client


def test_redelivered_chunk_writes_and_counts_nothing_twice(client: Client) -> None:
    job = client.submit("minilm", [f"doc {i}" for i in range(6)])
    store = Ledger(client.settings.resolved_database_url, max_attempts=5)
    first = store.claim(job, 0)
    assert store.claim(job, 0) is None  # leased and fresh: a duplicate message does no work
    expired = Ledger(client.settings.resolved_database_url, max_attempts=5, lease_seconds=0)
    split = expired.claim(job, 0)  # a redelivery after the first worker's lease ran out: split in two
    assert isinstance(first, Claim) and isinstance(split, Split) and [i for i, _ in first.items] == [0, 1, 2, 3]
    results = [ItemResult(item=i, label="x", score=0.5) for i in range(4)]
    assert store.write_results({job: results}, "w1") == (4, 0)  # the first worker was slow, not dead
    assert store.write_results({job: results}, "w2") == (0, 0)
    assert not store.close(job, 0, first.lease)  # its lease is gone with the split
    parts = [store.claim(job, i) for i in split.children]
    assert all(isinstance(p, Claim) and p.items == [] and store.close(job, p.idx, p.lease) for p in parts)
    assert store.claim(job, 0) is None  # done chunks are not claimed again
    info = client.status(job)
    assert (info.done, info.failed, info.status) == (4, 0, JobStatus.RUNNING)
    claim = store.claim(job, 1)
    assert claim is not None
    store.write_results({job: [ItemResult(item=4, label="y", score=1.0), ItemResult(item=5, error="bad")]}, "w1")
    info = client.status(job)
    assert (info.done, info.failed, info.status) == (5, 1, JobStatus.COMPLETED)


def test_one_write_spans_jobs_and_outcomes_and_counts_only_pending_rows(client: Client) -> None:
    """PostgreSQL writes a batch in one UPDATE ... FROM unnest(...): values, counts and idempotence."""
    a = client.submit("minilm", ["a0", "a1", "a2"])
    b = client.submit("minilm", ["b0", "b1"])
    store = Ledger(client.settings.resolved_database_url, max_attempts=3)
    vector = np.arange(384, dtype=np.float32) / 7
    batch = {
        a: [ItemResult(item=0, embedding=vector, n_tokens=np.int64(5), compute_ms=1.5),
            ItemResult(item=2, error="ValueError: bad"),
            ItemResult(item=1, label="x", score=np.float32(0.25), output={"scores": [{"label": "x", "score": 0.25}]})],
        b: [ItemResult(item=1, label="é", score=1.0, output={"n": None})],
    }  # fmt: skip
    assert store.write_results(batch, "w1") == (3, 1)
    assert store.write_results(batch, "w2") == (0, 0)  # a redelivery: nothing pending is left to write
    assert store.write_results({b: [ItemResult(item=0, label="y"), ItemResult(item=1, error="late")]}, "w2") == (1, 0)
    rows = list(client.results(a))
    assert [r["status"] for r in rows] == ["done", "done", "failed"]
    assert np.array_equal(np.asarray(rows[0]["embedding"], dtype=np.float32), vector)
    assert (rows[1]["label"], rows[1]["score"], rows[1]["output"]) == ("x", 0.25, batch[a][2].output)
    assert rows[2]["error"] == "ValueError: bad"
    assert [(r["label"], r["output"]) for r in client.results(b)] == [("y", None), ("é", {"n": None})]
    assert (client.status(a).done, client.status(a).failed, client.status(a).status) == (2, 1, JobStatus.COMPLETED)
    assert (client.status(b).done, client.status(b).status) == (2, JobStatus.COMPLETED)
    assert store.write_results({}, "w1") == (0, 0)


def test_a_label_longer_than_the_column_is_cut_not_fatal_to_the_batch(client: Client) -> None:
    """A 300-character candidate label must not make PostgreSQL refuse the batch's write."""
    job = client.submit("minilm", ["a", "b"])
    store = Ledger(client.settings.resolved_database_url, max_attempts=3)
    long = "é" * 300
    results = [ItemResult(item=0, label=long, score=0.5, output={"label": long}), ItemResult(item=1, label="ok")]
    assert store.write_results({job: results}, "w1") == (2, 0)
    rows = list(client.results(job))
    assert rows[0]["label"] == long[:256] and rows[0]["output"] == {"label": long} and rows[1]["label"] == "ok"


def test_a_lost_run_splits_its_chunk_and_only_the_poison_item_fails(client: Client) -> None:
    """Repeated worker deaths bisect a chunk down to the item that causes them; the rest complete."""
    job = client.submit("minilm", ["a", "b", "poison", "c"])
    store = Ledger(client.settings.resolved_database_url, max_attempts=2, lease_seconds=0)
    first = store.claim(job, 0)
    assert isinstance(first, Claim) and not first.alone  # a fresh chunk runs (and may coalesce)
    split = store.claim(job, 0)  # the first worker died: its lease expired, the redelivery splits
    assert isinstance(split, Split) and split.children == [1, 2]
    parts = {i: store.claim(job, i) for i in split.children}
    assert all(isinstance(c, Claim) and c.alone for c in parts.values())
    assert [[i for i, _ in c.items] for c in parts.values()] == [[0, 1], [2, 3]]  # type: ignore[union-attr]
    good, bad = parts[1], parts[2]
    assert isinstance(good, Claim) and isinstance(bad, Claim)
    store.write_results({job: [ItemResult(item=i, label="ok") for i, _ in good.items]}, "w1")
    assert store.close(job, 1, good.lease)
    halves = store.claim(job, 2)  # the part holding the poison item was lost too: split again
    assert isinstance(halves, Split) and halves.children == [3, 4]
    assert store.claim(job, 3) and store.claim(job, 3)  # item 2 alone, lost twice (max_attempts=2)
    assert store.claim(job, 3) is None  # third delivery: it fails, with the reason
    rest = store.claim(job, 4)
    assert isinstance(rest, Claim) and [i for i, _ in rest.items] == [3]
    store.write_results({job: [ItemResult(item=3, label="ok")]}, "w1")
    rows = list(client.results(job))
    assert [r["status"] for r in rows] == ["done", "done", "failed", "done"]
    assert "delivered 3 times" in rows[2]["error"]
    assert client.status(job).status is JobStatus.COMPLETED


def test_a_database_failure_releases_without_counting_and_a_worker_retakes_its_own_lease(client: Client) -> None:
    job = client.submit("minilm", ["a", "b"])
    store = Ledger(client.settings.resolved_database_url, max_attempts=2)
    claim = store.claim(job, 0, worker="w@host")
    assert isinstance(claim, Claim)
    assert store.claim(job, 0, worker="other@host") is None  # a fresh lease of someone else
    again = store.claim(job, 0, worker="w@host")  # its own stale lease: the worker is not running it
    assert isinstance(again, Claim) and again.lease != claim.lease
    assert store.release(job, 0, again.lease)  # a failed write: not the items' fault
    assert store.release(job, 0, again.lease) is False
    third = store.claim(job, 0, worker="other@host")
    assert isinstance(third, Claim) and [i for i, _ in third.items] == [0, 1]  # not split: one lost run only


def test_queued_chunks_of_the_same_model_are_coalesced_most_urgent_first(client: Client) -> None:
    low = client.submit("minilm", ["a"], priority=0)
    high = client.submit("minilm", ["b"], priority=9)
    other = client.submit("minilm-topics", ["c"], params={"candidate_labels": ["x"]})
    big = client.submit("minilm", [f"e{i}" for i in range(6)])  # chunks of 4 and 2 items
    mine = client.submit("minilm", ["d"])
    store = Ledger(client.settings.resolved_database_url, 3)
    assert store.claim(mine, 0) is not None
    taken = store.claim_queued("minilm", (mine, 0), max_chunks=10, max_items=5, worker="w@host")
    # Most urgent first, first fit: big's 4-item chunk 0 would overflow 5 items, its chunk 1 fits.
    assert [(c.job_id, c.idx) for c in taken] == [(high, 0), (low, 0), (big, 1)]
    assert [i for i, _ in taken[2].items] == [4, 5] and len({c.lease for c in taken}) == 1
    assert store.claim(high, 0) is None  # its own message, arriving later, finds it leased
    assert store.claim_queued("minilm", (mine, 0), max_chunks=10, max_items=3) == []  # nothing left fits
    again = store.claim_queued("minilm", (mine, 0), max_chunks=10, max_items=100)
    assert [(c.job_id, c.idx) for c in again] == [(big, 0)]
    assert store.claim_queued("minilm", (mine, 0), max_chunks=10, max_items=100) == []
    assert other not in {c.job_id for c in taken + again}
    assert client.status(high).status is JobStatus.RUNNING
    assert sorted(store.close_all(taken + again)) == sorted((c.job_id, c.idx) for c in taken + again)
    expired = Ledger(client.settings.resolved_database_url, 3, lease_seconds=0)
    assert expired.claim(high, 0) is None  # done, not merely leased


def test_close_all_names_only_chunks_whose_lease_still_held(client: Client) -> None:
    jobs = [client.submit("minilm", [f"doc {i}"]) for i in range(3)]
    early = Ledger(client.settings.resolved_database_url, 3, lease_seconds=0)
    first = early.claim(jobs[0], 0)
    shared = early.claim_queued("minilm", (jobs[0], 0), max_chunks=10, max_items=10)
    assert first and [c.job_id for c in shared] == jobs[1:]
    retaken = early.claim(jobs[2], 0)  # its lease expired: a redelivery took it over
    assert retaken is not None
    # The shared lease lost one of its two chunks, so neither is reported closed.
    assert early.close_all([first, *shared]) == [(jobs[0], 0)]
    assert early.close_all([retaken]) == [(jobs[2], 0)]


def test_runtime_acks_the_messages_of_chunks_it_closed_without_a_database_read(client: Client) -> None:
    """A coalesced chunk's own message, arriving after the run, is skipped from memory."""
    jobs = [client.submit("minilm", [f"doc {i}"]) for i in range(3)]
    runtime = WorkerRuntime(client.settings, hostname="w@host")
    assert runtime.process_chunk(jobs[0], 0).written == 3
    statements: list[str] = []

    def count(conn: object, cursor: object, statement: str, *rest: object) -> None:
        statements.append(statement)

    event.listen(runtime.ledger.engine, "before_cursor_execute", count)
    try:
        assert runtime.process_chunk(jobs[1], 0).skipped and not statements
        assert runtime.process_chunk(jobs[1], 0).skipped and statements  # a resent message: read again
    finally:
        event.remove(runtime.ledger.engine, "before_cursor_execute", count)
    with client.engine.connect() as conn:
        deliveries = conn.execute(select(Chunk.deliveries).where(Chunk.job_id.in_(jobs))).scalars().all()
    assert deliveries == [1, 1, 1]


def test_a_retried_chunk_is_not_coalesced_and_fails_past_its_attempts(client: Client) -> None:
    poison = client.submit("minilm", ["p"])
    mine = client.submit("minilm", ["d"])
    engine = get_engine(client.settings.resolved_database_url)
    with engine.begin() as conn:  # delivered twice already (max_attempts=2 here), never finished
        conn.execute(update(Chunk.__table__).where(Chunk.job_id == poison).values(deliveries=2))
    store = Ledger(client.settings.resolved_database_url, max_attempts=2)
    assert store.claim_queued("minilm", (mine, 0), max_chunks=10, max_items=10) == []  # retried chunks run alone
    assert store.claim(poison, 0) is None  # its own message: past its attempts, it fails
    info = client.status(poison)
    assert (info.failed, info.status) == (1, JobStatus.FAILED)


def test_cancelled_job_is_not_claimed(client: Client) -> None:
    job = client.submit("minilm", ["a"])
    assert client.cancel(job)
    assert Ledger(client.settings.resolved_database_url, 3).claim(job, 0) is None
    assert not client.cancel(job)


def test_reconcile_finds_expired_leases_and_unsent_chunks(client: Client) -> None:
    job = client.submit("minilm", [str(i) for i in range(10)])  # chunks 0, 1, 2; never enqueued here
    assert job not in {j for j, _ in stale_chunks(client.dispatcher)}  # just created: maybe being sent now
    engine = get_engine(client.settings.resolved_database_url)
    with engine.begin() as conn:
        conn.execute(update(Job.__table__).where(Job.id == job).values(created_at=utcnow() - timedelta(seconds=60)))
    assert stale_chunks(client.dispatcher)[(job, 0)] == [0, 1, 2]
    with engine.begin() as conn:
        conn.execute(update(Chunk.__table__).where(Chunk.job_id == job).values(enqueued_at=utcnow()))
    assert job not in {j for j, _ in stale_chunks(client.dispatcher)}
    store = Ledger(client.settings.resolved_database_url, 3)
    store.claim(job, 1)
    long_ago = utcnow() - timedelta(seconds=client.settings.lease_seconds + 1)
    with engine.begin() as conn:
        conn.execute(update(Chunk.__table__).where(Chunk.job_id == job, Chunk.idx == 1).values(leased_at=long_ago))
    assert stale_chunks(client.dispatcher)[(job, 0)] == [1]
    assert stale_chunks(client.dispatcher, include_queued=True)[(job, 0)] == [0, 1, 2]


def _worker_row(client: Client, hostname: str, pid: int, beat_age_s: float) -> None:
    beat = utcnow() - timedelta(seconds=beat_age_s)
    with get_engine(client.settings.resolved_database_url).begin() as conn:
        conn.execute(insert(Worker.__table__).values(
            hostname=hostname, pid=pid, device="cpu", queues=[client.settings.queue], models=[], evictions=[],
            status=WorkerStatus.RUNNING.value, started_at=beat, heartbeat_at=beat))  # fmt: skip


def _sent(client: Client) -> list[tuple[str, list[int]]]:
    sent: list[tuple[str, list[int]]] = []
    client.dispatcher.enqueue = lambda job, chunks, *a, **k: sent.append((job, list(chunks)))  # type: ignore[method-assign]
    return sent


def test_chunks_of_a_gone_worker_are_requeued_at_once(client: Client) -> None:
    job = client.submit("minilm", [f"doc {i}" for i in range(8)])
    store = Ledger(client.settings.resolved_database_url, max_attempts=5)
    assert store.claim(job, 0, worker="ghost@host") and store.claim(job, 1, worker="alive@host")
    _worker_row(client, "ghost@host", pid=1, beat_age_s=3600)  # heartbeat long stale: gone
    _worker_row(client, "alive@host", pid=1, beat_age_s=0)
    with get_engine(client.settings.resolved_database_url).begin() as conn:
        conn.execute(update(Chunk).values(enqueued_at=utcnow()))  # as if sent: only the lease matters here
    sent = _sent(client)
    assert reconcile(client.dispatcher) == 1  # the lease is fresh, but its holder is gone
    assert sent == [(job, [0])]
    again = store.claim(job, 0, worker="alive@host")  # no lease left: the next delivery takes it at once,
    assert isinstance(again, Split) and again.children == [2, 3]  # and splits it, as its run was lost
    assert store.claim(job, 1) is None  # the live worker's chunk stays with it


def test_a_restarted_worker_reclaims_what_its_predecessor_held(client: Client) -> None:
    job = client.submit("minilm", [f"doc {i}" for i in range(8)])
    store = Ledger(client.settings.resolved_database_url, max_attempts=5)
    assert store.claim(job, 0, worker="gpu1@host")
    _worker_row(client, "gpu1@host", pid=_dead_pid(), beat_age_s=0)  # killed a moment ago: heartbeat still fresh
    sent = _sent(client)
    assert reclaim_own(client.dispatcher, "gpu1@host") == 1 and sent == [(job, [0])]


def test_no_reclaim_from_another_live_process_with_the_same_name(client: Client) -> None:
    job = client.submit("minilm", [f"doc {i}" for i in range(8)])
    store = Ledger(client.settings.resolved_database_url, max_attempts=5)
    assert store.claim(job, 0, worker="gpu0@host")
    _worker_row(client, "gpu0@host", pid=os.getppid(), beat_age_s=0)  # a live process that is not us
    sent = _sent(client)
    assert reclaim_own(client.dispatcher, "gpu0@host") == 0 and sent == []


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_failed_run_releases_its_chunk_for_redelivery(client: Client) -> None:
    job = client.submit("minilm", [f"doc {i}" for i in range(8)])
    store = Ledger(client.settings.resolved_database_url, max_attempts=5)
    claim = store.claim(job, 0, worker="w@host")
    assert claim and store.claim(job, 0) is None  # leased
    assert not store.release(job, 0, "someone else's lease")
    assert store.release(job, 0, claim.lease)
    again = store.claim(job, 0, worker="w@host")  # the requeued message claims it at once
    assert again is not None and again.lease != claim.lease


def test_split_parts_a_worker_died_before_sending_are_sent_by_recovery(client: Client) -> None:
    job = client.submit("minilm", ["a", "b", "c"])
    store = Ledger(client.settings.resolved_database_url, max_attempts=3, lease_seconds=0)
    assert isinstance(store.claim(job, 0, worker="w1@host"), Claim)
    split = store.claim(job, 0, worker="w2@host")  # w1's run was lost; w2 splits, then dies unsent
    assert isinstance(split, Split)
    held = store.release_held_by(["w2@host"])
    assert sorted((c.job_id, c.idx) for c in held) == [(job, i) for i in split.children]
    store.mark_sent(job, split.children, client.settings.queue)
    assert store.release_held_by(["w2@host"]) == []  # sent now: nothing of theirs left to send
    part = store.claim(job, split.children[0], worker="w2@host")  # its own part, not its lease
    assert isinstance(part, Claim) and part.items != [] and part.alone


@pytest.fixture
def sending(migrated_database_url: str, broker_url: str, tmp_path: Path) -> tuple[Client, str]:
    """A client that really sends, to a queue of its own, and its job of three chunks (0, 1, 2)."""
    settings = make_settings(migrated_database_url, broker_url, tmp_path, chunk_size=4)
    client = Client(settings.model_copy(update={"queue": f"{settings.queue}-{uuid.uuid4().hex[:8]}"}))
    return client, client.submit("minilm", [f"doc {i}" for i in range(12)])


def test_a_message_whose_worker_died_before_claiming_is_given_back(sending: tuple[Client, str]) -> None:
    """The window CI hit: a worker received a chunk's message and was killed before claiming it."""
    client, job = sending
    settings = client.settings
    store = Ledger(settings.resolved_database_url, max_attempts=5)
    with client.dispatcher.app.connection_for_write() as conn:
        channel = conn.default_channel
        dead = conn.channel()  # a consumer that takes the three messages and is killed holding them
        tags = {m.payload[0][1]: m.delivery_tag for m in (dead.basic_get(settings.queue, no_ack=False) for _ in "abc")}
        dead.do_restore = False  # a SIGKILL gives nothing back at close
        dead.close()
        assert restore_unclaimed(client.dispatcher) == 0  # delivered just now: its worker may be claiming it
        for tag in tags.values():  # delivered a minute ago
            channel.client.zadd(channel.unacked_index_key, {tag: time.time() - 60})
        running = store.claim(job, 1, worker="alive@host")  # claimed: a run under way, its lease covers it
        done = store.claim(job, 2, worker="alive@host")
        assert isinstance(running, Claim) and isinstance(done, Claim) and store.close(job, 2, done.lease)
        assert reclaim_own(client.dispatcher, "gpu7@host") == 1  # only chunk 0 was lost with its worker
        unacked = set(channel.client.hkeys(channel.unacked_key))
        assert tags[0].encode() not in unacked and {tags[1].encode(), tags[2].encode()} <= unacked
        again = channel.basic_get(settings.queue, no_ack=True)  # back at the head of its queue
        assert again.payload[0] == [job, 0] and again.headers["redelivered"] is True
        assert channel.basic_get(settings.queue, no_ack=True) is None
        channel.client.hdel(channel.unacked_key, tags[1], tags[2])
        channel.client.zrem(channel.unacked_index_key, tags[1], tags[2])
    assert isinstance(store.claim(job, 0, worker="alive@host"), Claim)  # the redelivery claims it at once


def test_a_chunk_whose_message_is_gone_from_an_empty_queue_is_sent_again(sending: tuple[Client, str]) -> None:
    """Redis evicted the queue (maxmemory), or a worker died between popping a message and recording it."""
    client, job = sending
    settings = client.settings
    reconcile(client.dispatcher)  # the first pass ever re-sends every queued chunk (no epoch marker yet)
    with client.dispatcher.app.connection_for_write() as conn:
        channel = conn.default_channel
        assert len(_drain(channel, settings.queue)) == 6  # every message gone (each chunk was sent twice)
        assert client.dispatcher.queue_size(settings.queue) == 0
        assert reconcile(client.dispatcher) == 0  # sent a moment ago: a worker may be about to take them
        _sent_a_minute_ago(settings.resolved_database_url, job)
        dead = conn.channel()  # chunk 2's message comes back and a worker is killed holding it, unclaimed
        client.dispatcher.enqueue(job, [2], 0)
        _sent_a_minute_ago(settings.resolved_database_url, job)
        taken = dead.basic_get(settings.queue, no_ack=False)
        assert taken.payload[0] == [job, 2]
        dead.do_restore = False
        dead.close()
        fresh = {taken.delivery_tag: time.time()}  # (delivered just now, however slow this test runs)
        channel.client.zadd(channel.unacked_index_key, fresh)
        assert reconcile(client.dispatcher) == 2  # 0 and 1; chunk 2 is held unacked, and young there
        assert sorted(m.payload[0][1] for m in _drain(channel, settings.queue)) == [0, 1]
        _sent_a_minute_ago(settings.resolved_database_url, job)  # lost again; no reconcile runs now
        channel.client.zadd(channel.unacked_index_key, {taken.delivery_tag: time.time()})
        assert heal(client.dispatcher, every=30) == 2  # what each worker tries on its heartbeat
        assert heal(client.dispatcher, every=30) == 0  # one of them per interval
        assert sorted(m.payload[0][1] for m in _drain(channel, settings.queue)) == [0, 1]
        client.dispatcher.enqueue(job, [0], 0)  # a queue with a message: whatever else is queued waits its turn
        _sent_a_minute_ago(settings.resolved_database_url, job)
        channel.client.zadd(channel.unacked_index_key, {taken.delivery_tag: time.time()})
        assert reconcile(client.dispatcher) == 0
        _drain(channel, settings.queue)
        channel.client.hdel(channel.unacked_key, taken.delivery_tag)
        channel.client.zrem(channel.unacked_index_key, taken.delivery_tag)
    # Another deployment sharing the database (its own queue name, perhaps its own Redis): not ours to judge.
    Ledger.for_settings(settings).mark_sent(job, [0, 1, 2], "another-deployment.minilm")
    _sent_a_minute_ago(settings.resolved_database_url, job)
    assert reconcile(client.dispatcher) == 0


def _sent_a_minute_ago(database_url: str, job: str) -> None:
    with get_engine(database_url).begin() as db:
        db.execute(update(Chunk).where(Chunk.job_id == job).values(enqueued_at=utcnow() - timedelta(seconds=60)))


def _drain(channel: Any, queue: str) -> list[Any]:
    found = []
    while (message := channel.basic_get(queue, no_ack=True)) is not None:
        found.append(message)
    return found
