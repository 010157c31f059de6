"""Throughput benchmark: Sluice against what users would otherwise write, measured in one run."""
