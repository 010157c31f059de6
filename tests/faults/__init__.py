"""Fault injection for the recovery tests: a TCP proxy that can cut a connection, and hooks that
make a worker die on a poison item."""
