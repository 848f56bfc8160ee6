"""Import ultralytics safely in a server: offline, no auto-install, and without its PIL patch.

ultralytics reads ``YOLO_OFFLINE``/``YOLO_AUTOINSTALL``/``YOLO_CONFIG_DIR`` at import time: without them
it probes the network and may pip-install missing extras. On import it also replaces ``PIL.Image.open``
process-wide with a wrapper that, on any unidentifiable file, tries to install and import ``pi-heif``. In a
service that decodes untrusted uploads that turns a text file posted as ``.jpg`` into a 500 (or, with
auto-install on, a pip run), so the original ``Image.open`` is put back.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

DEFAULT_CONFIG_DIR = Path(tempfile.gettempdir()) / "imgpod-ultralytics"


def import_yolo(config_dir: Path | None = None) -> Any:
    """Return ``ultralytics.YOLO`` after setting the offline environment; undo the ``Image.open`` patch."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    if config_dir is not None or "YOLO_CONFIG_DIR" not in os.environ:
        target = config_dir or DEFAULT_CONFIG_DIR
        target.mkdir(parents=True, exist_ok=True)
        os.environ["YOLO_CONFIG_DIR"] = str(target)
    from PIL import Image

    original_open = Image.open
    # Its first import prints (settings file creation) through a stdout handler it makes on the spot.
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        import ultralytics.utils.patches as patches
        from ultralytics import YOLO

    # The first import patched it; a later call finds it patched already: patches kept the original.
    Image.open = getattr(patches, "_image_open", original_open)
    # ultralytics logs to stdout through its own handler; send it through ours, so logs stay JSON lines.
    yolo_log = logging.getLogger("ultralytics")
    yolo_log.handlers.clear()
    yolo_log.propagate = True
    for line in captured.getvalue().splitlines():
        if line.strip():
            yolo_log.info(line.strip())
    return YOLO
