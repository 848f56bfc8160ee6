"""How many images one pipeline call may hold, by image size.

Batching pays only while a single image leaves the GPU idle: measured on GPUs, four 512x512 images in one
call gave about 3x the images/s of one at a time, four 1024x1024 images about 1.0x (a 1024x1024 image is
4096 image tokens + the caption per sequence, enough to fill the GPU alone), so batching there only adds the
wait of the batch window and the latency of the neighbours. ``bench/latency_model.py`` has the FLOPs.
"""

from __future__ import annotations

from bisect import bisect_left

# Largest batch (in images) for images of up to this many pixels; larger images run one per call.
DEFAULT_MAX_BATCH_BY_PIXELS: dict[int, int] = {
    512 * 512: 4,
    768 * 768: 2,
    1024 * 1024: 1,
}


class BatchPolicy:
    def __init__(self, max_batch: int, by_pixels: dict[int, int]) -> None:
        self.max_batch = max_batch
        self._bounds = sorted(by_pixels)
        self._limits = [min(max_batch, by_pixels[b]) for b in self._bounds]

    def limit_for(self, width: int, height: int) -> int:
        """Images one call may hold at this size: the first row whose pixel bound covers it, else 1.

        An empty table leaves ``max_batch`` for every size.
        """
        if not self._bounds:
            return self.max_batch
        i = bisect_left(self._bounds, width * height)
        return self._limits[i] if i < len(self._limits) else 1
