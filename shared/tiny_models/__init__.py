"""Tiny, randomly initialised checkpoints of the production architectures, built offline.

They load through exactly the code the services use for the real models (``from_pretrained`` and
ultralytics), so a test on them exercises the production path; only the weights are random.
"""
