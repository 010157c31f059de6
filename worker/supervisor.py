"""``sluice worker --gpus``: one pinned worker process per GPU (or N CPU workers), kept alive.

The supervisor never imports torch or touches CUDA: a CUDA context cannot survive a fork, and
each child must see only its own device. It finds GPUs with ``nvidia-smi -L`` (or
``/proc/driver/nvidia/gpus``) and starts one plain ``sluice worker`` per device with
``CUDA_VISIBLE_DEVICES=<id>`` set before the child imports torch, so inside the child the device
is ``cuda:0`` and its Celery node is ``gpu<id>@<host>``. With no GPU (or ``--gpus none``) it
starts ``--workers N`` CPU workers, ``cpu<n>@<host>``, splitting the cores between them. With
``SLUICE_METRICS_PORT`` set, child ``n`` serves its Prometheus metrics on that port + ``n``.

A child that exits without being asked to, whatever its exit code (0 included: a worker stops
only when asked, and ``sluice worker`` exits non-zero when its Celery loop ends on its own), is
restarted after an exponential back-off (1 s doubling to 60 s; a child that stayed up for a minute
starts again from 1 s); only a usage error (exit code 2 or 64) stops the fleet. SIGTERM or SIGINT
to the supervisor is forwarded once to every child as SIGTERM (Celery's warm shutdown: the chunk
in hand finishes); a second signal escalates to SIGQUIT (cold shutdown) and
``SLUICE_WORKER_STOP_TIMEOUT`` ends in SIGKILL. Either way no work is lost: the database holds
every lease and unacked messages are redelivered.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from sluice.errors import ConfigError
from sluice.settings import Settings

log = logging.getLogger("sluice.supervisor")

BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 60.0
STABLE_AFTER_S = 60.0  # a child up this long has recovered: its next restart waits BACKOFF_BASE_S again
FATAL_EXIT_CODES = frozenset({2, 64})  # usage errors (argparse, Celery's EX_USAGE): the same args fail forever
NVIDIA_PROC_DIR = Path("/proc/driver/nvidia/gpus")
# Namespace fields the supervisor consumes itself; every other `sluice worker` option passes through.
SUPERVISOR_FIELDS = frozenset({"command", "func", "gpus", "workers", "device", "hostname"})
_GPU_ID = re.compile(r"^(\d+|(GPU|MIG)-[0-9A-Za-z-]+)$")


def backoff_delay(failures: int, base: float = BACKOFF_BASE_S, cap: float = BACKOFF_CAP_S) -> float:
    """Seconds to wait before restart number ``failures`` (1, 2, ...): base doubling up to cap."""
    if failures <= 0:
        return 0.0
    return min(cap, base * 2.0 ** min(failures - 1, 32))


def parse_gpus(raw: str) -> str | list[str]:
    """``--gpus`` value: ``"all"``, ``"none"`` or a list of device ids (indices or GPU UUIDs)."""
    value = raw.strip().lower()
    if value in {"all", "none"}:
        return value
    ids = [part.strip() for part in raw.split(",") if part.strip()]
    bad = [i for i in ids if not _GPU_ID.match(i)]
    if not ids or bad or len(set(ids)) != len(ids):
        raise argparse.ArgumentTypeError(f"--gpus wants all, none or distinct ids like 0,1; got {raw!r}")
    return ids


def detect_gpus(
    run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run, proc_dir: Path = NVIDIA_PROC_DIR
) -> list[str]:
    """GPU indices visible to this machine, found without initialising CUDA in this process."""
    try:
        out = run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=False)
        if out.returncode == 0:
            return re.findall(r"^GPU (\d+):", out.stdout, re.M)
    except (OSError, subprocess.TimeoutExpired):
        pass  # no driver tools: fall back to the kernel module's view
    try:
        return [str(i) for i in range(sum(1 for p in proc_dir.iterdir() if p.is_dir()))]
    except OSError:
        return []


def usable_cores() -> int:
    """Cores this process may run on (respects taskset/cpusets, unlike os.cpu_count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def child_options(args: argparse.Namespace) -> list[str]:
    """The ``sluice worker`` options every child gets: all but the supervisor's own, as given."""
    argv: list[str] = []
    for dest, value in sorted(vars(args).items()):
        if dest in SUPERVISOR_FIELDS or dest.startswith("_") or value is None or value is False:
            continue
        flag = "--" + dest.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif isinstance(value, list | tuple):
            for v in value:
                argv += [flag, str(v)]
        else:
            argv += [flag, str(value)]
    return argv


@dataclass(frozen=True)
class ChildSpec:
    """One worker process to keep alive: its Celery node name, argv and extra environment."""

    name: str
    argv: list[str]
    env: dict[str, str]


def plan_fleet(
    gpus: str | list[str],
    options: list[str],
    host: str,
    device: str | None = None,
    workers: int | None = None,
    settings: Settings | None = None,
    detected: Callable[[], list[str]] = detect_gpus,
    cores: int | None = None,
    environ: Mapping[str, str] = os.environ,
) -> list[ChildSpec]:
    """The children for ``--gpus``: one per GPU id, or ``workers`` CPU workers when there is none.

    ``device="cpu"`` with GPU ids is the fake-device mode for CPU machines: children are pinned and
    named per id but run on the CPU.
    """
    if device not in (None, "cpu", "cuda", "cuda:0"):
        raise ConfigError(f"with --gpus each worker sees one GPU as cuda:0; --device {device} is not allowed")
    ids = _gpu_ids(gpus, device, detected)
    if ids and workers is not None:
        raise ConfigError("--workers counts CPU workers; with GPUs there is one worker per GPU")
    if not ids and device not in (None, "cpu"):
        raise ConfigError(f"--device {device} needs a GPU, and none is selected")
    n = len(ids) or (workers or 1)
    threads = (settings.torch_threads if settings else None) or max(1, (cores or usable_cores()) // n)
    base_env = {"TOKENIZERS_PARALLELISM": "false", "SLUICE_TORCH_THREADS": str(threads),
                "OMP_NUM_THREADS": environ.get("OMP_NUM_THREADS", str(threads))}  # fmt: skip
    base = settings.metrics_port if settings else None  # each child serves /metrics on base + its index

    def port(k: int) -> dict[str, str]:
        return {"SLUICE_METRICS_PORT": str(base + k)} if base else {}

    if ids:
        child_device = device if device == "cpu" else "cuda:0"
        return [_spec(f"gpu{i}@{host}", child_device, options, {**base_env, **port(k), "CUDA_VISIBLE_DEVICES": i})
                for k, i in enumerate(ids)]  # fmt: skip
    # An empty CUDA_VISIBLE_DEVICES keeps CPU workers off any GPU the machine has.
    return [_spec(f"cpu{k}@{host}", "cpu", options, {**base_env, **port(k), "CUDA_VISIBLE_DEVICES": ""})
            for k in range(n)]  # fmt: skip


def _spec(name: str, device: str, options: list[str], env: dict[str, str]) -> ChildSpec:
    argv = [sys.executable, "-m", "sluice.cli", "worker", "--device", device, "--hostname", name, *options]
    return ChildSpec(name, argv, env)


def _gpu_ids(gpus: str | list[str], device: str | None, detected: Callable[[], list[str]]) -> list[str]:
    if gpus == "none":
        return []
    if gpus == "all":
        return detected()
    ids = list(gpus)
    if device != "cpu":  # real devices: catch a typo'd id here, not as a child crash loop
        found = detected()
        missing = [i for i in ids if i.isdigit() and found and i not in found]
        if missing:
            raise ConfigError(f"no GPU {','.join(missing)} here (found {','.join(found)})")
        if not found:
            log.warning("no GPU detected; starting workers for GPU ids %s anyway", ",".join(ids))
    return ids


class Proc(Protocol):
    """What the supervisor needs of a child process (``subprocess.Popen`` has it)."""

    pid: int

    def poll(self) -> int | None: ...

    def send_signal(self, sig: int) -> None: ...


@dataclass
class Child:
    spec: ChildSpec
    proc: Proc | None = None
    started_at: float = 0.0
    failures: int = 0
    restart_at: float = 0.0
    restarts: int = 0
    exit_codes: list[int] = field(default_factory=list)


class Supervisor:
    """Keeps one process per :class:`ChildSpec` running; :meth:`poll` is one step of the loop.

    ``spawn`` starts a child and ``clock`` tells the time, so tests drive it without processes.
    """

    def __init__(
        self,
        specs: list[ChildSpec],
        spawn: Callable[[ChildSpec], Proc],
        clock: Callable[[], float] = time.monotonic,
        stop_timeout: float | None = None,
        stable_after: float = STABLE_AFTER_S,
    ) -> None:
        self.children = [Child(spec) for spec in specs]
        self.spawn = spawn
        self.clock = clock
        self.stop_timeout = stop_timeout
        self.stable_after = stable_after
        self.stopping = False
        self.exit_code = 0
        self._signals: list[int] = []
        self._stop_deadline: float | None = None
        self._killed = False

    def start(self) -> None:
        for child in self.children:
            self._start(child)

    def request_stop(self, signum: int = signal.SIGTERM) -> None:
        """Safe in a signal handler: only records the request; :meth:`poll` acts on it."""
        self._signals.append(signum)

    @property
    def finished(self) -> bool:
        return self.stopping and all(c.proc is None for c in self.children)

    def poll(self) -> None:
        """Reap dead children, restart those whose back-off has passed, act on stop requests."""
        while self._signals:
            self._on_signal(self._signals.pop(0))
        now = self.clock()
        for child in self.children:
            if child.proc is not None and (code := child.proc.poll()) is not None:
                self._on_exit(child, code, now)
            if child.proc is None and not self.stopping and now >= child.restart_at:
                self._start(child)
        if self.stopping and not self._killed and self._stop_deadline is not None and now >= self._stop_deadline:
            log.warning("children still running %.0fs after stop; killing them", self.stop_timeout)
            self._killed = True
            self._signal_all(signal.SIGKILL)

    def run(self, tick: float = 0.2) -> int:
        """Start every child and supervise until stopped; the exit code of the fleet."""
        self.start()
        while not self.finished:
            time.sleep(tick)
            self.poll()
        return self.exit_code

    def _start(self, child: Child) -> None:
        child.proc = self.spawn(child.spec)
        child.started_at = self.clock()
        log.info("started %s (pid %d)", child.spec.name, child.proc.pid)

    def _on_exit(self, child: Child, code: int, now: float) -> None:
        child.proc = None
        child.exit_codes.append(code)
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"code {code}"
        if self.stopping:
            log.info("%s stopped (%s)", child.spec.name, how)
            return
        if code in FATAL_EXIT_CODES:
            log.error("%s exited with usage error %s; stopping the fleet", child.spec.name, how)
            self.exit_code = code
            self._stop(signal.SIGTERM)
            return
        uptime = now - child.started_at
        child.failures = 1 if uptime >= self.stable_after else child.failures + 1
        delay = backoff_delay(child.failures)
        child.restart_at = now + delay
        child.restarts += 1
        log.warning("%s died (%s) after %.1fs; restarting in %.0fs", child.spec.name, how, uptime, delay)

    def _on_signal(self, signum: int) -> None:
        if not self.stopping:
            log.info("got %s: warm shutdown of %d worker(s)", signal.Signals(signum).name, len(self.children))
            self._stop(signal.SIGTERM)
        else:  # asked again: do not wait for the chunks in hand (their leases bring them back)
            log.warning("got %s again: cold shutdown", signal.Signals(signum).name)
            self._signal_all(signal.SIGQUIT)

    def _stop(self, sig: int) -> None:
        self.stopping = True
        if self.stop_timeout is not None:
            self._stop_deadline = self.clock() + self.stop_timeout
        self._signal_all(sig)

    def _signal_all(self, sig: int) -> None:
        for child in self.children:
            if child.proc is not None and child.proc.poll() is None:
                child.proc.send_signal(sig)


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the supervisor dies, even by SIGKILL (Linux only)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def spawn_process(spec: ChildSpec) -> subprocess.Popen[bytes]:
    """Start a child in its own process group: a terminal's Ctrl-C reaches only the supervisor,
    which forwards one SIGTERM (Celery treats a second signal as cold shutdown)."""
    return subprocess.Popen(spec.argv, env={**os.environ, **spec.env}, process_group=0, preexec_fn=_die_with_parent)


def run_supervisor(args: argparse.Namespace, settings: Settings) -> int:
    """``sluice worker --gpus ...``: plan the fleet, forward stop signals, supervise until stopped."""
    from sluice.logs import configure_logging

    configure_logging(settings, args.loglevel)
    host = (args.hostname or socket.gethostname()).rpartition("@")[2]
    specs = plan_fleet(args.gpus, child_options(args), host, args.device, args.workers, settings)
    for spec in specs:
        metrics = f", metrics on port {spec.env['SLUICE_METRICS_PORT']}" if "SLUICE_METRICS_PORT" in spec.env else ""
        log.info("worker %s: CUDA_VISIBLE_DEVICES=%r, %s torch threads%s", spec.name,
                 spec.env["CUDA_VISIBLE_DEVICES"], spec.env["SLUICE_TORCH_THREADS"], metrics)  # fmt: skip
    supervisor = Supervisor(specs, spawn_process, stop_timeout=settings.worker_stop_timeout)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: supervisor.request_stop(signum))
    return supervisor.run()
