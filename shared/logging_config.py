"""JSON-lines logging with the request id on every record, so one request can be followed across pods."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

from shared.request_context import get_request_id

_STD_ATTRS = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = get_request_id()
        if request_id:
            out["request_id"] = request_id
        for key, value in record.__dict__.items():
            if key not in _STD_ATTRS and not key.startswith("_"):
                out[key] = value if isinstance(value, str | int | float | bool | None) else repr(value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def quiet_progress_bars() -> None:
    """Turn off the hub/transformers/diffusers progress bars: tqdm lines would break the JSON-lines log.

    transformers and huggingface_hub read the variable at import; diffusers (and anything imported before
    this runs) must be told directly, so loaders call this again right after importing them.
    """
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    for module in ("transformers.utils.logging", "diffusers.utils.logging"):
        if module in sys.modules:
            sys.modules[module].disable_progress_bar()


def configure_logging(service: str, level: str = "info") -> None:
    """Replace root handlers with one JSON handler on stderr; uvicorn's loggers go through it too."""
    quiet_progress_bars()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Library warnings (deprecations and the like) would otherwise print raw lines to stderr.
    logging.captureWarnings(True)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
    # Per-request access lines come from our own middleware, with timings and the request id.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    for noisy in ("httpx", "httpcore", "PIL", "urllib3", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
