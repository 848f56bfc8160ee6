"""Fetch a service's model weights into the local cache when they are missing (``deploy_service.sh``).

``python -m scripts.fetch_models NAME``. A model id that is a local folder or file is used as it is; a hub id
is downloaded once with ``huggingface_hub.snapshot_download`` (resumable; later runs find it cached). The
selfie worker's YOLOv8-face weights come from ``SELFIE_DETECTOR_WEIGHTS_URL`` and are installed only when
their sha256 is ``SELFIE_DETECTOR_WEIGHTS_SHA256`` (``scripts/verified_download.py``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from scripts.verified_download import VerifiedDownloadError, install_verified

if TYPE_CHECKING:
    from services.selfie_feature_worker.settings import SelfieSettings


def _is_local(model_id: str) -> bool:
    return model_id.startswith(("/", "./", "../", "~")) or Path(model_id).expanduser().exists()


def fetch_hub_model(model_id: str) -> None:
    if _is_local(model_id):
        if not Path(model_id).expanduser().exists():
            raise SystemExit(f"model path {model_id} does not exist")
        print(f"using local model {model_id}")
        return
    from huggingface_hub import snapshot_download

    print(f"fetching {model_id} (skipped if cached)")
    path = snapshot_download(model_id, token=os.environ.get("HF_TOKEN") or None)
    print(f"{model_id} ready at {path}")


def fetch_detector(settings: SelfieSettings) -> None:
    """Install the YOLOv8-face weights the worker reads, verified against their pinned sha256."""
    from services.selfie_feature_worker.settings import NUDENET_WEIGHTS

    if settings.detector_backend == "haar":
        print("detector: haar (OpenCV's bundled cascade, nothing to fetch)")
        return
    if settings.detector_weights == NUDENET_WEIGHTS:
        print("detector weights: nudenet (bundled with the nudenet package, nothing to fetch)")
        return
    target = Path(settings.detector_weights).expanduser()
    if not settings.detector_weights_url and not target.is_file():
        # An env file from before the weights had a source sets the URL empty.
        raise SystemExit(
            f"detector weights {target} are missing and SELFIE_DETECTOR_WEIGHTS_URL is empty: set it and "
            "SELFIE_DETECTOR_WEIGHTS_SHA256 as deploy.env.example does, or copy the file there"
        )
    try:
        outcome = install_verified(
            settings.detector_weights_url,
            target,
            settings.detector_weights_sha256,
            pin_setting="SELFIE_DETECTOR_WEIGHTS_SHA256",
        )
    except VerifiedDownloadError as exc:
        # SystemExit with a message: exit status 1, the message on stderr, and deploy_service.sh stops.
        raise SystemExit(
            f"detector weights not installed: {exc}. (To run on nudenet's detector on purpose instead, set "
            'SELFIE_DETECTOR_WEIGHTS=nudenet; DEPLOYMENT.md, "Face detector weights".)'
        ) from None
    print(f"detector weights {outcome}: {target} (sha256 {settings.detector_weights_sha256})")


def main(name: str) -> int:
    if name == "interface":
        return 0
    if name == "llm":
        from services.llm_service.settings import LlmSettings

        llm = LlmSettings()
        fetch_hub_model(llm.model_id)
        if llm.guard_backend != "off":
            fetch_hub_model(llm.guard_model_id)
    elif name == "selfie_feature":
        from services.selfie_feature_worker.settings import SelfieSettings

        selfie = SelfieSettings()
        fetch_detector(selfie)
        fetch_hub_model(selfie.vlm_model)
    elif name in ("profile", "chat1to1", "shorts", "scenes"):
        from services.image_worker.settings import ImageSettings

        fetch_hub_model(ImageSettings().model_id)
    else:
        raise SystemExit(f"unknown service {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
