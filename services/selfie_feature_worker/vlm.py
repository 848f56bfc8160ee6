"""Qwen2-VL through transformers: one generation per image, off the event loop, one at a time."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import torch
from PIL import Image

from services.selfie_feature_worker import vqa_prompts
from services.selfie_feature_worker.settings import SelfieSettings
from shared.torch_devices import resolve_device, resolve_dtype

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VlmAnswer:
    text: str
    new_tokens: int


class QwenVlDescriber:
    def __init__(self, settings: SelfieSettings) -> None:
        from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

        self.model_id = settings.vlm_model
        self.device = resolve_device(settings.device)
        self.dtype = resolve_dtype(settings.dtype, self.device)
        # size= caps the visual tokens (pixels / 28^2 after merging); the processor resizes to fit.
        self.processor = AutoProcessor.from_pretrained(
            self.model_id,
            revision=settings.vlm_revision,
            size={"shortest_edge": settings.vlm_min_pixels, "longest_edge": settings.vlm_max_pixels},
        )
        self.model = Qwen2VLForConditionalGeneration.from_pretrained(
            self.model_id, dtype=self.dtype, revision=settings.vlm_revision
        )
        self.model.to(self.device).eval()
        self.max_new_tokens = settings.max_new_tokens
        self.prompt = self.processor.apply_chat_template(
            [
                {"role": "system", "content": vqa_prompts.SYSTEM_PROMPT},
                {
                    "role": "user",
                    "content": [{"type": "image"}, {"type": "text", "text": vqa_prompts.analyze_prompt()}],
                },
            ],
            add_generation_prompt=True,
        )
        # generate() on one model object is not re-entrant; one request at a time per process.
        self._lock = threading.Lock()

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    def describe(self, image: Image.Image, max_new_tokens: int | None = None) -> VlmAnswer:
        inputs = self.processor(text=[self.prompt], images=[image], return_tensors="pt").to(self.device)
        limit = max_new_tokens or self.max_new_tokens
        with self._lock, torch.inference_mode():
            output = self.model.generate(**inputs, max_new_tokens=limit, do_sample=False)
        new = output[:, inputs["input_ids"].shape[1] :]
        text = self.processor.batch_decode(new, skip_special_tokens=True)[0]
        return VlmAnswer(text=text, new_tokens=int(new.shape[1]))
