"""Benchmarks: plain scripts run as ``python -m bench.<name>`` from the repo root; no pass/fail."""
