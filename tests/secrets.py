"""Every secret the tests hand to Sluice, in one place, and the session-end check that none leaked.

The issue's requirement is literal: grep the logs of a full test run for the secrets the tests
use. The values are fixed (not random per process) so that the pytest-xdist controller, which
runs :func:`scan` over every worker's temporary directory once all of them have finished, knows
the secrets each worker used. ``LEAKS`` also catches secrets no list names: any URL with a
password in clear, any API key (``sk-sluice-...``) in clear.
"""

from __future__ import annotations

import re
from pathlib import Path

#: Passwords in broker and database URLs (Redis accepts any for its passwordless ``default`` user).
REDIS_PASSWORD = "redis-pw-7c1e9a2f40"
PG_PASSWORD = "pg-pw-3b88d0c5e1"
#: Password of a password-protected Redis and of its Sentinels (test_broker_tls_sentinel).
BROKER_PASSWORD = "pw-5e0b3c9d71aa4f26"
SENTINEL_PASSWORD = "spw-9a4d2e7b05c1"
FLOWER_PASSWORD = "flower-pw-6f2a81c4d9"
#: An API key that was never issued: the API must refuse it and never log it.
BOGUS_API_KEY = "sk-sluice-bogus4e2c7a9b1d6f80e3a5c7b9d1f2e4a6c8"
#: The HMAC secret that signs job webhooks.
WEBHOOK_SECRET = "whsec-test-8d3f1a6c2b9e"
#: A password used only in unit tests (never written to a log file, checked all the same).
UNIT_PASSWORD = "s3cr3t-pw"

TEST_SECRETS = (
    REDIS_PASSWORD, PG_PASSWORD, BROKER_PASSWORD, SENTINEL_PASSWORD, FLOWER_PASSWORD, BOGUS_API_KEY,
    WEBHOOK_SECRET, UNIT_PASSWORD,
)  # fmt: skip

#: An unmasked password in a URL, or an unmasked API key, in any log line.
LEAKS = re.compile(r"\b[a-z][\w+.-]*://[^\s:/@]*:(?!\*+@)[^\s@/]+@|sk-sluice-(?!\*)[A-Za-z0-9_-]{16,}")


def leaks_in(text: str, secrets: tuple[str, ...] = TEST_SECRETS) -> list[str]:
    """What in ``text`` is a secret in clear: the named secrets found, and ``LEAKS`` matches (cut short)."""
    found = sorted({m[:40] for m in LEAKS.findall(text)})
    return found + [f"secret #{TEST_SECRETS.index(s)}" for s in secrets if s in text]


def scan(root: Path) -> dict[str, list[str]]:
    """Every ``*.log`` file under ``root`` (the session's base temporary directory, which holds
    every xdist worker's ``popen-gw*`` directory) that holds a secret in clear, with what it holds."""
    found: dict[str, list[str]] = {}
    for path in sorted(root.rglob("*.log")):
        leaks = leaks_in(path.read_text(errors="replace"))
        if leaks:
            found[str(path.relative_to(root))] = leaks
    return found
