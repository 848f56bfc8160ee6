"""Fetch a service's model weights into the local cache when they are missing (``deploy_service.sh``).

``python -m scripts.fetch_models NAME``. A model id that is a local folder or file is used as it is; a hub id
is downloaded once with ``huggingface_hub.snapshot_download`` (resumable; later runs find it cached).
"""

from __future__ import annotations

import os
import sys
import urllib.request
from pathlib import Path


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


def fetch_detector(weights: str, url: str | None) -> None:
    if weights in ("", "nudenet") or Path(weights).exists():
        print(f"detector weights: {weights or 'nudenet'}")
        return
    if not url:
        raise SystemExit(f"detector weights {weights} are missing and SELFIE_DETECTOR_WEIGHTS_URL is not set")
    Path(weights).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(weights + ".part")
    print(f"downloading detector weights to {weights}")
    urllib.request.urlretrieve(url, tmp)
    tmp.rename(weights)


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
        fetch_detector(selfie.detector_weights, os.environ.get("SELFIE_DETECTOR_WEIGHTS_URL"))
        fetch_hub_model(selfie.vlm_model)
    elif name in ("profile", "chat1to1", "shorts", "scenes"):
        from services.image_worker.settings import ImageSettings

        fetch_hub_model(ImageSettings().model_id)
    else:
        raise SystemExit(f"unknown service {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
