"""The worker-fleet supervisor without real workers: planning, back-off, restarts, stop signals."""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sluice.cli import build_parser, main
from sluice.errors import ConfigError
from sluice.settings import Settings
from worker.supervisor import (
    SUPERVISOR_FIELDS,
    ChildSpec,
    Supervisor,
    backoff_delay,
    child_options,
    detect_gpus,
    parse_gpus,
    plan_fleet,
    spawn_process,
)

NVIDIA_SMI = "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0f1e)\nGPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-2d3c)\n"


def test_backoff_doubles_from_one_second_to_a_minute() -> None:
    assert [backoff_delay(n) for n in range(9)] == [0, 1, 2, 4, 8, 16, 32, 60, 60]
    assert backoff_delay(10_000) == 60


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("all", "all"),
        ("NONE", "none"),
        ("0", ["0"]),
        (" 0, 3 ", ["0", "3"]),
        ("GPU-0f1e,MIG-ab-1", ["GPU-0f1e", "MIG-ab-1"]),
    ],
)
def test_parse_gpus(raw: str, want: str | list[str]) -> None:
    assert parse_gpus(raw) == want


@pytest.mark.parametrize("raw", ["", ",", "a", "-1", "0,0", "cuda:0"])
def test_parse_gpus_rejects(raw: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="--gpus wants"):
        parse_gpus(raw)


def test_detect_gpus_reads_nvidia_smi_then_proc(tmp_path: Path) -> None:
    def smi(*_a: object, **_k: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(["nvidia-smi"], 0, NVIDIA_SMI, "")

    def missing(*_a: object, **_k: object) -> subprocess.CompletedProcess[str]:
        raise FileNotFoundError("nvidia-smi")

    assert detect_gpus(smi, tmp_path / "nope") == ["0", "1"]
    for bus in ("0000:01:00.0", "0000:02:00.0", "0000:03:00.0"):
        (tmp_path / bus).mkdir()
    assert detect_gpus(missing, tmp_path) == ["0", "1", "2"]
    assert detect_gpus(missing, tmp_path / "nope") == []


def _plan(gpus: str | list[str], **kw: object) -> list[ChildSpec]:
    kw.setdefault("detected", lambda: [])
    kw.setdefault("cores", 8)
    kw.setdefault("environ", {})
    return plan_fleet(gpus, ["--models", "m"], "host", **kw)  # type: ignore[arg-type]


def test_one_pinned_worker_per_gpu() -> None:
    specs = _plan("all", detected=lambda: ["0", "1"])
    assert [s.name for s in specs] == ["gpu0@host", "gpu1@host"]
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in specs] == ["0", "1"]
    for spec in specs:
        argv = spec.argv[spec.argv.index("worker") :]
        assert argv == ["worker", "--device", "cuda:0", "--hostname", spec.name, "--models", "m"]
        assert spec.env["TOKENIZERS_PARALLELISM"] == "false"
        assert spec.env["SLUICE_TORCH_THREADS"] == spec.env["OMP_NUM_THREADS"] == "4"


def test_fake_device_ids_pin_but_run_on_cpu() -> None:
    specs = _plan(["0", "1"], device="cpu")
    assert [(s.name, s.env["CUDA_VISIBLE_DEVICES"]) for s in specs] == [("gpu0@host", "0"), ("gpu1@host", "1")]
    assert all(s.argv[s.argv.index("--device") + 1] == "cpu" for s in specs)


def test_cpu_workers_split_the_cores() -> None:
    specs = _plan("none", workers=3)
    assert [s.name for s in specs] == ["cpu0@host", "cpu1@host", "cpu2@host"]
    assert {s.env["SLUICE_TORCH_THREADS"] for s in specs} == {"2"}
    assert {s.env["CUDA_VISIBLE_DEVICES"] for s in specs} == {""}
    assert [s.name for s in _plan("all")] == ["cpu0@host"]  # no GPU found: one CPU worker
    assert _plan("none", workers=16)[0].env["SLUICE_TORCH_THREADS"] == "1"


def test_explicit_thread_settings_win() -> None:
    spec = _plan("none", settings=Settings(torch_threads=3), environ={"OMP_NUM_THREADS": "5"})[0]
    assert (spec.env["SLUICE_TORCH_THREADS"], spec.env["OMP_NUM_THREADS"]) == ("3", "5")


@pytest.mark.parametrize(
    ("gpus", "kw", "message"),
    [
        (["0"], {"workers": 2}, "one worker per GPU"),
        (["0"], {"device": "cuda:1"}, "sees one GPU as cuda:0"),
        ("none", {"device": "cuda"}, "needs a GPU"),
        (["0", "3"], {"detected": lambda: ["0", "1"]}, "no GPU 3 here"),
    ],
)
def test_plans_that_cannot_work_are_refused(gpus: str | list[str], kw: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _plan(gpus, **kw)


def test_child_options_pass_every_worker_option_through() -> None:
    parser = build_parser()
    given = ["worker", "--gpus", "0,1", "--device", "cpu", "--hostname", "h", "--models", "a,b", "--queues", "q1,q2",
             "--max-batch-tokens", "4096", "--max-batch-size", "16", "--loglevel", "DEBUG"]  # fmt: skip
    if "max_model_memory" in vars(parser.parse_args(["worker"])):
        given += ["--max-model-memory", "2GB"]
    args = parser.parse_args(given)
    options = child_options(args)
    assert not {"--gpus", "--workers", "--device", "--hostname"} & set(options)
    again = parser.parse_args(["worker", *options])
    for dest, value in vars(args).items():
        if dest not in SUPERVISOR_FIELDS:
            assert getattr(again, dest) == value, dest


class FakeProc:
    _next_pid = 1000

    def __init__(self) -> None:
        FakeProc._next_pid += 1
        self.pid = FakeProc._next_pid
        self.returncode: int | None = None
        self.signals: list[int] = []

    def poll(self) -> int | None:
        return self.returncode

    def send_signal(self, sig: int) -> None:
        self.signals.append(sig)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _fleet(n: int = 2, **kw: object) -> tuple[Supervisor, list[FakeProc], Clock]:
    spawned: list[FakeProc] = []
    clock = Clock()

    def spawn(_spec: ChildSpec) -> FakeProc:
        spawned.append(FakeProc())
        return spawned[-1]

    specs = [ChildSpec(f"gpu{i}@h", ["worker"], {}) for i in range(n)]
    sup = Supervisor(specs, spawn, clock=clock, **kw)  # type: ignore[arg-type]
    sup.start()
    return sup, spawned, clock


def test_dead_child_restarts_after_growing_backoff() -> None:
    sup, spawned, clock = _fleet()
    assert len(spawned) == 2
    waits = []
    for _ in range(4):
        spawned[-1].returncode = -signal.SIGKILL
        died_at, n = clock.now, len(spawned)
        sup.poll()
        while len(spawned) == n:
            clock.now += 0.25
            sup.poll()
        waits.append(clock.now - died_at)
    assert waits == [1, 2, 4, 8]
    assert sup.children[1].restarts == 4 and sup.children[0].restarts == 0
    assert spawned[0].returncode is None and not sup.finished


@pytest.mark.parametrize("code", [0, 1, 70, -signal.SIGTERM])
def test_a_child_exit_nobody_asked_for_is_a_failure_whatever_its_code(code: int) -> None:
    """A worker only stops when asked: exit code 0 on its own (Celery's "Unrecoverable error" used
    to end that way) is restarted with back-off like a crash, and never stops the fleet."""
    sup, spawned, clock = _fleet(1)
    for failures, wait in [(1, 1), (2, 2)]:
        spawned[-1].returncode = code
        n = len(spawned)
        sup.poll()
        assert sup.children[0].failures == failures and sup.children[0].restart_at == clock.now + wait
        assert len(spawned) == n and not sup.stopping
        clock.now += wait
        sup.poll()
        assert len(spawned) == n + 1
    assert sup.children[0].exit_codes == [code, code] and sup.exit_code == 0 and not sup.finished


@pytest.mark.parametrize(
    ("celery_code", "signals", "want"),
    [
        (0, ["SIGTERM"], 0),  # warm shutdown asked for
        (1, ["SIGINT"], 0),  # Celery ends a Ctrl-C warm shutdown with 1; it was still asked for
        (0, [], 1),  # the loop ended on its own
        (None, [], 1),  # worker_main's view of it
        (1, [], 1),  # "Unrecoverable error"
        ("Got shutdown from remote", [], 1),
        (64, [], 64),  # usage error: passes through (the supervisor stops the fleet on it)
        (1, ["SIGQUIT"], 1),  # cold shutdown
    ],
)
def test_worker_process_exit_code(celery_code: object, signals: list[str], want: int) -> None:
    from worker.main import exit_code

    assert exit_code(celery_code, signals) == want


def test_backoff_resets_after_a_stable_run() -> None:
    sup, spawned, clock = _fleet(1)
    sup.children[0].failures = 6  # it had been crash-looping
    clock.now += 61
    spawned[-1].returncode = 1
    sup.poll()
    assert sup.children[0].restart_at == clock.now + 1


def test_stop_forwards_sigterm_once_and_does_not_restart() -> None:
    sup, spawned, clock = _fleet()
    spawned[1].returncode = 1  # died just before the stop: in back-off
    sup.poll()
    sup.request_stop(signal.SIGINT)
    sup.poll()
    assert spawned[0].signals == [signal.SIGTERM] and spawned[1].signals == []
    clock.now += 120
    sup.poll()
    assert len(spawned) == 2 and not sup.finished  # nothing restarted; still waiting for gpu0
    spawned[0].returncode = 0
    sup.poll()
    assert sup.exit_code == 0 and sup.finished


def test_second_signal_is_cold_and_timeout_kills() -> None:
    sup, spawned, clock = _fleet(1, stop_timeout=30)
    sup.request_stop()
    sup.poll()
    sup.request_stop()
    sup.poll()
    assert spawned[0].signals == [signal.SIGTERM, signal.SIGQUIT]
    clock.now += 31
    sup.poll()
    assert spawned[0].signals[-1] == signal.SIGKILL


def test_usage_error_stops_the_fleet() -> None:
    sup, spawned, _clock = _fleet()
    spawned[0].returncode = 2
    sup.poll()
    assert sup.stopping and sup.exit_code == 2 and spawned[1].signals == [signal.SIGTERM]
    spawned[1].returncode = 0
    sup.poll()
    assert sup.finished and len(spawned) == 2


def test_real_children_are_pinned_grouped_and_stopped(tmp_path: Path) -> None:
    """Real processes (not workers): environment, own process group, SIGTERM on stop."""
    script = (
        "import os, sys, time; "
        "open(sys.argv[1], 'w').write(os.environ['CUDA_VISIBLE_DEVICES'] + ' ' + str(os.getpgid(0) == os.getpid())); "
        "time.sleep(60)"
    )
    specs = [
        ChildSpec(f"gpu{i}@h", [sys.executable, "-c", script, str(tmp_path / f"{i}")], {"CUDA_VISIBLE_DEVICES": str(i)})
        for i in range(2)
    ]
    sup = Supervisor(specs, spawn_process)

    def on_alarm(_signum: int, _frame: object) -> None:  # a signal, as in production: stop once both started
        if all((tmp_path / f"{i}").exists() for i in range(2)):
            sup.request_stop(signal.SIGTERM)
        else:
            signal.setitimer(signal.ITIMER_REAL, 0.05)

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, 0.05)
    try:
        assert sup.run(tick=0.05) == 0
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert [(tmp_path / f"{i}").read_text() for i in range(2)] == ["0 True", "1 True"]
    assert [c.exit_codes for c in sup.children] == [[-signal.SIGTERM], [-signal.SIGTERM]]


def test_supervisor_never_imports_torch() -> None:
    code = "import sys, sluice.cli, worker.supervisor; sys.exit('torch' in sys.modules or 'celery' in sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


def test_cli_refuses_workers_without_gpus(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["worker", "--workers", "2"]) == 1
    assert "--workers needs --gpus" in capsys.readouterr().err
    assert main(["worker", "--gpus", "0", "--device", "cpu", "--workers", "2"]) == 1
    assert "one worker per GPU" in capsys.readouterr().err
