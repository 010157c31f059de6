"""Alembic migrations for the Sluice schema (``sluice db upgrade`` runs them)."""
