"""Producers: validate input, write jobs and items to the database, enqueue chunk references."""

from producer.client import Client, JobInfo

__all__ = ["Client", "JobInfo"]
