"""``sluice api`` (serve the HTTP API with uvicorn) and ``sluice keys`` (create, list, revoke keys).

This module is imported to build the CLI's parser, so it imports FastAPI and uvicorn only when a
command runs.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from sluice.errors import ConfigError
from sluice.settings import Settings


def add_commands(sub: Any) -> None:
    """Add the ``api`` and ``keys`` subcommands to the CLI's subparsers."""
    p = sub.add_parser("api", help="serve the HTTP API (native jobs and the OpenAI Batch API)")
    p.add_argument("--host", default="127.0.0.1", help="listen address (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--no-auth", action="store_true", help="no API keys: every caller is an admin (loopback only)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=cmd_api)

    p = sub.add_parser("keys", help="API keys: create (printed once), list, revoke")
    keys = p.add_subparsers(dest="action", required=True)
    create = keys.add_parser("create", help="make a key; it is printed once, only its hash is stored")
    create.add_argument("--name", required=True, help="a unique name for the key")
    create.add_argument("--scopes", default="submit,read", help="comma-separated: submit, read, admin")
    create.add_argument("--owner", help="who owns what the key creates (default: the name); keys may share one")
    keys.add_parser("list", help="the keys: name, owner, scopes, prefix, created, revoked")
    revoke = keys.add_parser("revoke", help="revoke a key by name")
    revoke.add_argument("name")
    p.set_defaults(func=cmd_keys)


def cmd_api(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from sluice.api.app import create_app
    from sluice.api.auth import is_loopback
    from sluice.ledger import Ledger

    ledger = Ledger.for_settings(settings)
    if not ledger.has_api_tables():
        raise ConfigError("the database has no API tables; run `sluice db upgrade` first")
    if args.no_auth and not is_loopback(args.host):
        raise ConfigError(f"--no-auth is only allowed on a loopback host (127.0.0.1, ::1), not {args.host!r}")
    if not args.no_auth and ledger.active_keys() == 0:
        raise ConfigError(
            "no API key in the database: create one with `sluice keys create --name NAME --scopes submit,read` "
            "(or run `sluice api --no-auth` on a loopback host)"
        )
    from sluice.logs import configure_logging

    configure_logging(settings, args.log_level)  # uvicorn's loggers too (log_config=None): one format, redacted
    app = create_app(settings, no_auth=args.no_auth)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, proxy_headers=False, log_config=None)
    return 0


def cmd_keys(args: argparse.Namespace, settings: Settings) -> int:
    from sluice.api.auth import key_hash, new_key, parse_scopes
    from sluice.ledger import Ledger

    ledger = Ledger.for_settings(settings)
    if args.action == "create":
        scopes = parse_scopes(args.scopes)
        key = new_key()
        owner = args.owner or args.name
        if not ledger.create_key(args.name, owner, key_hash(key), key[:14], scopes):
            raise ConfigError(f"a key named {args.name!r} exists; pick another name (or revoke it and use a new one)")
        print(key)
        print(f"key {args.name!r} (owner {owner!r}, scopes {','.join(scopes)}): shown only now, store it safely",
              file=sys.stderr)  # fmt: skip
    elif args.action == "list":
        for k in ledger.api_keys():
            revoked = f"revoked {k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "active"
            print(f"{k.name:20} owner={k.owner:16} scopes={','.join(k.scopes):20} {k.prefix}...  "
                  f"created {k.created_at:%Y-%m-%d %H:%M}  {revoked}")  # fmt: skip
    elif not ledger.revoke_key(args.name):
        raise ConfigError(f"no active key named {args.name!r} (`sluice keys list` shows them)")
    else:
        print(f"revoked {args.name}")
    return 0
