"""Scheduled batch inference: a schedules file, a leased scheduler process, sinks (see the README, "Schedules")."""
