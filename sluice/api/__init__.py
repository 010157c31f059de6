"""``sluice api``: the HTTP API (native job routes and the OpenAI Files and Batch API), a shell
module on top of the producer client and the ledger.

Importing this package is cheap (the CLI imports its command module to build its parser); the
FastAPI app lives in :mod:`sluice.api.app` (``create_app(settings)``).
"""
