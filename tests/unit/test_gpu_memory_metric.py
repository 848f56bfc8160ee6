"""``imgpod_gpu_memory_bytes``: declared by the GPU services, sampled per CUDA device at scrape time."""

from __future__ import annotations

import pytest
import torch

from shared.metrics import ServiceMetrics


def test_declared_without_samples_where_there_is_no_cuda() -> None:
    metrics = ServiceMetrics("image_test")
    metrics.watch_gpu_memory()
    text = metrics.render()[0].decode()
    assert "# TYPE imgpod_gpu_memory_bytes gauge" in text
    samples = [ln for ln in text.splitlines() if ln.startswith("imgpod_gpu_memory_bytes{")]
    if not torch.cuda.is_available():
        assert samples == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the lent GPU machine)")
def test_sampled_per_device_on_cuda() -> None:
    metrics = ServiceMetrics("image_test")
    metrics.watch_gpu_memory()
    held = torch.empty(64 * 2**20, dtype=torch.uint8, device="cuda:0")
    value = metrics.registry.get_sample_value
    allocated = value("imgpod_gpu_memory_bytes", {"device": "cuda:0", "kind": "allocated"})
    total = value("imgpod_gpu_memory_bytes", {"device": "cuda:0", "kind": "total"})
    assert allocated is not None and allocated >= held.numel()
    assert total is not None and total > allocated
