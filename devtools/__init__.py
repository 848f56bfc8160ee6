"""Helpers shared by the tests and the benchmarks to run the real services locally."""
