from __future__ import annotations

import logging
import ssl
import uuid
from pathlib import Path

import pytest
import redis
from redis.sentinel import SentinelConnectionPool, SentinelManagedSSLConnection

from sluice.broker import redacted, redis_client
from sluice.celery_app import celery_config, create_app, redis_priority
from sluice.errors import ConfigError
from sluice.settings import Settings


def test_reliability_settings() -> None:
    conf = celery_config(Settings(broker_url="redis://example:6379/0"))
    assert conf["accept_content"] == ["json"] and conf["task_serializer"] == "json"
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]
    assert conf["worker_prefetch_multiplier"] == 1 and conf["task_ignore_result"]
    assert conf["result_backend"] is None
    assert conf["broker_transport_options"]["priority_steps"] == list(range(10))


def test_priority_nine_is_served_first_on_redis() -> None:
    assert redis_priority(9) == 0 and redis_priority(0) == 9 and redis_priority(42) == 0


# -- TLS and Sentinel brokers ------------------------------------------------------------------


@pytest.fixture
def pem(tmp_path: Path) -> Path:
    """A file that stands for a CA bundle, certificate or key (only its existence is checked here)."""
    path = tmp_path / "x.pem"
    path.write_text("not parsed here")
    return path


def test_a_plain_broker_gets_no_tls_and_no_sentinel_options() -> None:
    conf = celery_config(Settings(broker_url="redis://:pw@example:6379/0"))
    assert "broker_use_ssl" not in conf and "master_name" not in conf["broker_transport_options"]


def test_rediss_verifies_the_certificate_by_default(pem: Path) -> None:
    conf = celery_config(Settings(broker_url="rediss://:pw@example:6380/0", broker_tls_ca_file=pem))
    assert conf["broker_url"] == "rediss://:pw@example:6380/0"
    assert conf["broker_use_ssl"] == {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_check_hostname": True,
                                      "ssl_ca_certs": str(pem)}  # fmt: skip
    # Without a CA file: still verified, against the system's trust store.
    system = celery_config(Settings(broker_url="rediss://example"))["broker_use_ssl"]
    assert system["ssl_cert_reqs"] == ssl.CERT_REQUIRED and "ssl_ca_certs" not in system


def test_apps_with_other_tls_settings_do_not_share_connections(pem: Path) -> None:
    """kombu pools connections process-wide by URL and transport options, not by TLS options."""
    url = "rediss://:pw@example:6380/0"
    verified = create_app(Settings(broker_url=url, broker_tls_ca_file=pem)).connection_for_write()
    unverified = create_app(Settings(broker_url=url, broker_tls_verify=False)).connection_for_write()
    assert verified.__eqhash__() != unverified.__eqhash__()  # no connection is made


def test_mutual_tls_needs_a_certificate_and_its_key(pem: Path) -> None:
    conf = celery_config(Settings(broker_url="rediss://example", broker_tls_cert_file=pem, broker_tls_key_file=pem))
    assert conf["broker_use_ssl"]["ssl_certfile"] == conf["broker_use_ssl"]["ssl_keyfile"] == str(pem)
    with pytest.raises(ConfigError, match="both"):
        celery_config(Settings(broker_url="rediss://example", broker_tls_cert_file=pem))
    with pytest.raises(ConfigError, match="not a readable file"):
        celery_config(Settings(broker_url="rediss://example", broker_tls_ca_file=pem.with_name("missing.pem")))


def test_turning_verification_off_is_explicit_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    url = f"rediss://:secret@example-{uuid.uuid4().hex[:6]}:6380/0"
    with caplog.at_level(logging.WARNING, "sluice.broker"):
        conf = celery_config(Settings(broker_url=url, broker_tls_verify=False))
    assert conf["broker_use_ssl"] == {"ssl_cert_reqs": ssl.CERT_NONE, "ssl_check_hostname": False}
    assert "verification" in caplog.text and "OFF" in caplog.text
    assert "secret" not in caplog.text and ":***@" in caplog.text


def test_the_url_cannot_turn_verification_off_behind_the_settings(pem: Path) -> None:
    # kombu would let ?ssl_cert_reqs=none replace broker_use_ssl wholesale: refused unless the settings agree.
    for query in ("ssl_cert_reqs=none", "ssl_cert_reqs=CERT_OPTIONAL", "ssl_check_hostname=false"):
        with pytest.raises(ConfigError, match="SLUICE_BROKER_TLS_VERIFY=false"):
            celery_config(Settings(broker_url=f"rediss://:pw@example/0?{query}"))
    off = celery_config(Settings(broker_url="rediss://example/0?ssl_cert_reqs=none", broker_tls_verify=False))
    assert off["broker_url"] == "rediss://example/0" and off["broker_use_ssl"]["ssl_cert_reqs"] == ssl.CERT_NONE
    # Taken out of the URL; fill in only what the settings leave unset.
    conf = celery_config(Settings(broker_url=f"rediss://example/0?ssl_cert_reqs=required&ssl_ca_certs={pem}"))
    assert conf["broker_url"] == "rediss://example/0" and conf["broker_use_ssl"]["ssl_ca_certs"] == str(pem)
    with pytest.raises(ConfigError, match="ssl_ciphers"):
        celery_config(Settings(broker_url="rediss://example/0?ssl_ciphers=x"))


def test_tls_settings_on_a_plaintext_url_are_an_error(pem: Path) -> None:
    plain_sentinel = Settings(broker_url="sentinel://s1", broker_sentinel_master="m", broker_tls_ca_file=pem)
    for settings in (Settings(broker_url="redis://example", broker_tls=True),
                     Settings(broker_url="redis://example", broker_tls_ca_file=pem), plain_sentinel):  # fmt: skip
        with pytest.raises(ConfigError, match="rediss://"):
            celery_config(settings)


def test_sentinel_urls_name_their_master() -> None:
    url = "sentinel://:pw@s1:26379;sentinel://:pw@s2:26380/0"
    with pytest.raises(ConfigError, match="SLUICE_BROKER_SENTINEL_MASTER"):
        celery_config(Settings(broker_url=url))
    with pytest.raises(ConfigError, match="not sentinel://"):
        celery_config(Settings(broker_url="redis://example", broker_sentinel_master="m"))
    conf = celery_config(Settings(broker_url=url, broker_sentinel_master="m", broker_sentinel_password="spw"))
    transport = conf["broker_transport_options"]
    assert transport["master_name"] == "m" and transport["visibility_timeout"] == 3600
    assert transport["sentinel_kwargs"]["password"] == "spw" and "ssl" not in transport["sentinel_kwargs"]
    assert conf["broker_url"] == url and "broker_use_ssl" not in conf


def test_sentinel_over_tls_verifies_both_sentinels_and_redis(pem: Path) -> None:
    settings = Settings(broker_url="sentinel://s1;sentinel://s2", broker_sentinel_master="m", broker_tls=True,
                        broker_tls_ca_file=pem)  # fmt: skip
    conf = celery_config(settings)
    assert conf["broker_use_ssl"]["ssl_cert_reqs"] == ssl.CERT_REQUIRED
    kwargs = conf["broker_transport_options"]["sentinel_kwargs"]
    assert kwargs["ssl"] is True and kwargs["ssl_ca_certs"] == str(pem) and kwargs["ssl_check_hostname"] is True


def test_redacted_hides_every_password() -> None:
    assert redacted("rediss://user:pw@h:6380/0") == "rediss://user:***@h:6380/0"
    assert redacted("sentinel://:pw@s1:26379;sentinel://:pw@s2:26379") == (
        "sentinel://:***@s1:26379;sentinel://:***@s2:26379"
    )
    assert redacted("redis://h:6379/0") == "redis://h:6379/0"


def test_redis_client_takes_the_same_tls_and_sentinel_options(pem: Path) -> None:
    """No connection is made: only what the client would connect with."""
    tls = redis_client("rediss://:pw@example:6380/2", Settings(broker_tls_ca_file=pem))
    kwargs = tls.connection_pool.connection_kwargs
    assert tls.connection_pool.connection_class is redis.SSLConnection
    assert kwargs["ssl_cert_reqs"] == ssl.CERT_REQUIRED and kwargs["ssl_ca_certs"] == str(pem)
    assert kwargs["ssl_check_hostname"] is True and kwargs["password"] == "pw" and kwargs["db"] == 2
    settings = Settings(broker_sentinel_master="m", broker_sentinel_password="spw", broker_tls=True)
    client = redis_client("sentinel://:pw@s1:26379/1;sentinel://s2:26380", settings)  # as kombu: the first URL
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool) and pool.service_name == "m"
    assert pool.connection_kwargs["password"] == "pw" and pool.connection_kwargs["db"] == 1
    assert pool.connection_class is SentinelManagedSSLConnection
    nodes = pool.sentinel_manager.sentinels
    assert [n.connection_pool.connection_kwargs["port"] for n in nodes] == [26379, 26380]
    assert all(n.connection_pool.connection_kwargs["password"] == "spw" for n in nodes)


def test_the_worker_guard_covers_sentinel_brokers(monkeypatch: pytest.MonkeyPatch) -> None:
    """``sentinel://`` is consumed through the same malformed-message guard as ``redis://``."""
    import kombu.transport
    from kombu.transport import TRANSPORT_ALIASES

    from worker import messages

    for alias, stock in (("redis", "Transport"), ("rediss", "Transport"), ("sentinel", "SentinelTransport")):
        monkeypatch.setitem(TRANSPORT_ALIASES, alias, f"kombu.transport.redis:{stock}")
    monkeypatch.setattr(kombu.transport, "_transport_cache", {})
    monkeypatch.setattr(messages, "_guard", messages._Guard())  # install() sets process-wide state
    settings = Settings(broker_url="sentinel://127.0.0.1:1;sentinel://127.0.0.1:2", broker_sentinel_master="m")
    app = create_app(settings)
    messages.install(app, "myqueue", hostname="cpu0@h")
    assert TRANSPORT_ALIASES["sentinel"] == "worker.messages:GuardedSentinelTransport"
    with app.connection_for_read() as conn:  # not connected: only the classes are resolved
        channel = conn.transport.Channel
        assert conn.transport_cls == "sentinel" and issubclass(channel, messages.GuardedChannel)
        assert issubclass(channel, kombu.transport.redis.SentinelChannel)
