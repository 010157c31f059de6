"""Sluice: bulk inference with Hugging Face transformers over Redis-dispatched Celery workers.

The shared core lives here: settings, errors, status enums, the database schema, the model
registry and the Celery application. ``producer`` and ``worker`` build on it.
"""

__version__ = "0.1.0"
