"""Benchmarks: plain scripts run as ``python -m bench.<name>`` from the repo root; no pass/fail.

The exception is ``python -m bench.soak`` (the whole stack under mixed traffic at multiples of its capacity,
one worker killed part-way): it judges invariants and exits 1 when one fails; its short run is the test
``tests/integration/test_soak.py``.
"""
