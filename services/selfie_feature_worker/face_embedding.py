"""Face crop -> embedding vector, behind one small interface, and the cosine between two vectors.

The one embedder today is the loaded Qwen2-VL's vision tower (``vlm``): no extra weights and no extra GPU
memory, but a general-purpose image encoder, not a face-recognition model. Its similarity follows identity
together with pose, lighting, hair and expression; a dedicated face model (ArcFace-like) would be another
``FaceEmbedder`` chosen by ``identity_embedder``, and the route and the response would not change.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from services.selfie_feature_worker.vlm import QwenVlDescriber
from shared.public_names import public_model_id
from shared.tiny_models.build import BUILDERS

# shared/tiny_models writes this beside each folder it finished building (shared/tiny_models/build.py).
TINY_MODEL_MARKER = ".complete"


class FaceEmbedder(Protocol):
    # Public: goes into every response (no paths).
    name: str
    # False when the weights are random: the scores are then noise (the response says so).
    meaningful: bool

    def embed(self, crops: Sequence[Image.Image]) -> np.ndarray:
        """One float32 row per crop, each of unit length; blocking (call it from a worker thread)."""
        ...


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity in [-1, 1]; 0.0 for a zero vector (it points nowhere, so it matches nothing)."""
    a64, b64 = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if a64.shape != b64.shape:
        raise ValueError(f"vectors differ in size: {a64.size} and {b64.size}")
    norms = float(np.linalg.norm(a64) * np.linalg.norm(b64))
    if norms == 0.0:
        return 0.0
    # Rounding can put an identical pair a hair above 1.
    return float(np.clip(np.dot(a64, b64) / norms, -1.0, 1.0))


def built_by_tiny_models(model_id: str) -> bool:
    """Whether ``model_id`` is a folder that ``shared/tiny_models`` built: random weights by construction.

    Read from the builder's own traces (its folder name and the marker it writes beside it), not from the
    model's size: a small real checkpoint is not noise, and a renamed copy of a tiny one is caught by the
    ``identity_meaningful`` setting instead.
    """
    path = Path(model_id).expanduser()
    names = {sub for sub, _ in BUILDERS.values()}
    return path.is_dir() and path.name in names and path.with_name(path.name + TINY_MODEL_MARKER).exists()


class VlmFaceEmbedder:
    """The mean of the Qwen2-VL vision encoder's patch states over one face crop.

    The encoder's own patch states, not the merger's output: the merger projects them into the language
    model's input space, trained for generating text, while the encoder is the visual representation.
    Crops are resized to one square side, so every face gets the same patch grid and the same pooling.
    """

    def __init__(self, vlm: QwenVlDescriber, *, crop_side: int, meaningful: bool) -> None:
        self.vlm = vlm
        self.crop_side = crop_side
        self.meaningful = meaningful
        self.name = f"vlm:{public_model_id(vlm.model_id)}"
        # The describer's lock: analyses and compares drive the same model object, one call at a time.
        self._lock: threading.Lock = vlm._lock

    def embed(self, crops: Sequence[Image.Image]) -> np.ndarray:
        if not crops:
            raise ValueError("nothing to embed")
        side = self.crop_side
        sized = [
            c if c.size == (side, side) else c.resize((side, side), Image.Resampling.BICUBIC) for c in crops
        ]
        inputs = self.vlm.processor.image_processor(images=sized, return_tensors="pt")
        pixel_values = inputs["pixel_values"].to(self.vlm.device)
        grid_thw = inputs["image_grid_thw"].to(self.vlm.device)
        with self._lock, torch.inference_mode():
            states = self.vlm.model.get_image_features(pixel_values, grid_thw).last_hidden_state
            # One image's patches follow the previous one's: t * h * w rows each.
            per_image = torch.split(states, grid_thw.prod(-1).tolist())
            pooled = torch.stack([patches.float().mean(dim=0) for patches in per_image])
            unit = torch.nn.functional.normalize(pooled, dim=-1)
        return unit.cpu().numpy().astype(np.float32)

    def warm_up(self) -> None:
        """One pass on a grey square, so the first compare does not pay for lazy initialisation."""
        self.embed([Image.new("RGB", (self.crop_side, self.crop_side), (128, 128, 128))])
