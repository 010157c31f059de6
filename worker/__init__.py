"""Celery workers that keep models resident and turn chunks of items into stored scores."""
