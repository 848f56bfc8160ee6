"""Fetch a service's model weights into the local cache when they are missing (``deploy_service.sh``).

``python -m scripts.fetch_models NAME``. A model id that is a local folder or file is used as it is; a hub id
is downloaded once with ``huggingface_hub.snapshot_download`` (resumable; later runs find it cached), at
``IMAGE_MODEL_REVISION`` for the image workers, and its files checked against the hub's listed sizes. The
selfie worker's YOLOv8-face weights come from ``SELFIE_DETECTOR_WEIGHTS_URL`` and are installed only when
their sha256 is ``SELFIE_DETECTOR_WEIGHTS_SHA256`` (``scripts/verified_download.py``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from scripts.verified_download import VerifiedDownloadError, install_verified
from shared.public_names import is_local_model

if TYPE_CHECKING:
    from services.selfie_feature_worker.settings import SelfieSettings


def hub_file_sizes(model_id: str, revision: str | None, token: str | None) -> dict[str, int] | None:
    """Every file's size as the hub lists it at this revision; None when the hub cannot say (offline)."""
    from huggingface_hub import HfApi

    try:
        info = HfApi().model_info(model_id, revision=revision, files_metadata=True, token=token)
    except Exception as exc:
        print(f"hub file sizes of {model_id} unavailable ({type(exc).__name__}); checking headers only")
        return None
    return {s.rfilename: s.size for s in info.siblings or [] if s.size is not None}


def fetch_hub_model(model_id: str, revision: str | None = None, *, diffusers_pipeline: bool = False) -> None:
    """Download ``model_id`` at ``revision`` (a commit pins it) and check what arrived before going on.

    Every file the hub lists must be there at its listed size; a diffusers pipeline is also checked the
    way its worker checks it at start-up (``model_index.json``, each component's weights whole).
    """
    if is_local_model(model_id):
        if not Path(model_id).expanduser().exists():
            raise SystemExit(f"model path {model_id} does not exist")
        print(f"using local model {model_id}")
        return
    from huggingface_hub import snapshot_download

    from services.image_worker.model_files import ModelFilesInvalid, verify_pipeline_dir

    token = os.environ.get("HF_TOKEN") or None
    at = f"@{revision}" if revision else ""
    print(f"fetching {model_id}{at} (skipped if cached)")
    path = Path(snapshot_download(model_id, revision=revision, token=token))
    sizes = hub_file_sizes(model_id, revision, token) or {}
    try:
        if diffusers_pipeline:
            checked = verify_pipeline_dir(path, sizes)
            print(f"{len(checked)} weight files whole: {', '.join(checked)}")
        else:
            for rel, want in sizes.items():
                if not (path / rel).is_file() or (path / rel).stat().st_size != want:
                    raise ModelFilesInvalid(f"{rel} is missing or not the {want} bytes the hub lists")
    except ModelFilesInvalid as exc:
        raise SystemExit(
            f"{model_id}{at} is incomplete after download: {exc}. Run this again to resume."
        ) from None
    print(f"{model_id}{at} ready at {path} ({len(sizes)} files checked against the hub's sizes)")


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
        fetch_hub_model(llm.model_id, llm.model_revision)
        if llm.guard_backend != "off":
            fetch_hub_model(llm.guard_model_id, llm.guard_model_revision)
    elif name == "selfie_feature":
        from services.selfie_feature_worker.settings import SelfieSettings

        selfie = SelfieSettings()
        fetch_detector(selfie)
        fetch_hub_model(selfie.vlm_model, selfie.vlm_revision)
    elif name in ("profile", "chat1to1", "shorts", "scenes"):
        from services.image_worker.settings import ImageSettings

        image = ImageSettings()
        fetch_hub_model(image.model_id, image.model_revision, diffusers_pipeline=True)
    else:
        raise SystemExit(f"unknown service {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
