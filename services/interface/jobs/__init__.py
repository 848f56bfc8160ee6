"""Jobs: every generate request is a job, submitted, queued, run and watched the same way (docs/JOBS.md).

A synchronous request is a job whose submitter waits for it on the same connection; ``Prefer: respond-async``
answers 202 at once with the job's URLs. The store (``store.py``: SQLite by default, Redis for replicas)
holds the records and carries the events; the dispatcher (``dispatch.py``) holds the queue bounds and runs
the jobs; the manager (``manager.py``) ties them together.
"""
