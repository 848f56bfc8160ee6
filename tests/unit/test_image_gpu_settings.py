"""The image workers' GPU settings, exercised on the tiny Z-Image checkpoint on CPU through the real loader.

Attention backend, regional ``torch.compile``, warm-up sizes, VAE tiling and the check of the model's files.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from services.image_worker.engine import GenerationParams, ImageEngine
from services.image_worker.model_files import ModelFilesInvalid, verify_pipeline_dir
from services.image_worker.pipeline import DevicePipeline, ImageJob
from services.image_worker.routes.health import healthz
from services.image_worker.settings import ImageSettings
from shared.metrics import ServiceMetrics
from tests.unit.test_image_batcher import pixels, settings_for


def zimage(tiny_models: dict[str, Path]) -> Path:
    return tiny_models["zimage"]


def job(size: int = 64, seed: int = 3) -> ImageJob:
    return ImageJob("a lighthouse at dusk", None, seed, size, size, 2, 0.0)


def start(settings: ImageSettings) -> ImageEngine:
    engine = ImageEngine(settings, ServiceMetrics("image_gpu_test"))
    asyncio.run(engine.start())
    return engine


# --- attention backend -------------------------------------------------------------------------------


def test_unknown_attention_backend_fails_at_settings_with_the_choices() -> None:
    with pytest.raises(ValidationError) as err:
        ImageSettings(attention_backend="fastest")
    assert "unknown attention backend 'fastest'" in str(err.value)
    assert "native" in str(err.value) and "flash" in str(err.value)
    assert ImageSettings(attention_backend=" NATIVE ").attention_backend == "native"
    assert ImageSettings(attention_backend="").attention_backend is None


def test_native_backend_is_applied_and_gives_the_default_image(tiny_models: dict[str, Path]) -> None:
    default = DevicePipeline(str(zimage(tiny_models)), "cpu", "float32", 64)
    default.load()
    native = DevicePipeline(str(zimage(tiny_models)), "cpu", "float32", 64)
    native.load(attention_backend="native")
    processors = [m.processor for m in native.pipe.transformer.modules() if hasattr(m, "processor")]
    assert processors and all(p._attention_backend == "native" for p in processors)
    (a,), _ = default.run([job()])
    (b,), _ = native.run([job()])
    np.testing.assert_allclose(pixels(a[0]), pixels(b[0]), atol=1)


def test_backend_without_its_package_is_a_clear_health_error(tiny_models: dict[str, Path]) -> None:
    try:
        import flash_attn  # noqa: F401

        pytest.skip("flash-attn is installed here")
    except ImportError:
        pass
    engine = start(settings_for(zimage(tiny_models), attention_backend="flash"))
    assert engine.state == "error"
    assert engine.error == "attention backend flash is not usable on this worker"


# --- torch.compile of the repeated blocks ----------------------------------------------------------


def test_compiled_blocks_give_the_uncompiled_image(tiny_models: dict[str, Path]) -> None:
    # Inductor on CPU builds C++ kernels with gcc: about a minute on a small shared machine.
    import torch._dynamo

    eager = DevicePipeline(str(zimage(tiny_models)), "cpu", "float32", 64)
    eager.load()
    compiled = DevicePipeline(str(zimage(tiny_models)), "cpu", "float32", 64)
    compiled.load(compile_transformer=True)
    blocks = [*compiled.pipe.transformer.layers, *compiled.pipe.transformer.noise_refiner]
    assert all(getattr(b, "_compiled_call_impl", None) is not None for b in blocks)
    torch._dynamo.utils.counters.clear()
    (a,), _ = eager.run([job()])
    (b,), _ = compiled.run([job()])
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0, "the compiled blocks ran"
    np.testing.assert_allclose(pixels(a[0]), pixels(b[0]), atol=2)
    # Same shape again: served by the graphs compiled above, nothing compiled anew.
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    compiled.run([job(seed=4)])
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs


# --- warm-up -------------------------------------------------------------------------------------------


def test_warmup_sizes_parse_and_are_bounded() -> None:
    s = ImageSettings(default_width=64, default_height=64, warmup_sizes="64x64, 96x128,128X96")
    assert s.warmup_shapes == [(64, 64), (96, 128), (128, 96)]
    for bad in ("100x64", "64", "64x64x2", "4096x4096", "ax64"):
        with pytest.raises(ValidationError):
            ImageSettings(warmup_sizes=bad)


def test_health_stays_loading_until_every_warmup_size_ran(tiny_models: dict[str, Path]) -> None:
    settings = settings_for(zimage(tiny_models), warmup=True, warmup_sizes="96x96,64x128")
    release = threading.Event()
    warming: list[tuple[int, int]] = []

    async def main() -> dict[str, Any]:
        engine = ImageEngine(settings, ServiceMetrics("image_gpu_test"))
        original = DevicePipeline.run

        def parked_run(self: DevicePipeline, jobs: list[ImageJob], *hooks: Any) -> Any:
            if jobs[0].prompt == "warm-up":
                warming.append((jobs[0].width, jobs[0].height))
                if len(warming) == len(settings.warmup_shapes):
                    release.wait(60)  # hold the last warm-up open while health is asked
            return original(self, jobs, *hooks)

        DevicePipeline.run = parked_run  # type: ignore[method-assign]
        try:
            task = asyncio.create_task(engine.start())
            while len(warming) < 3:
                await asyncio.sleep(0.05)
            during = (await healthz(engine)).status_code, engine.state
            release.set()
            await task
            after = (await healthz(engine)).status_code
            pipe = engine._pipelines[0]
            warm_calls = dict(pipe.calls_by_shape)
            # The first client request at a warmed size is not that size's first pipeline call.
            await engine.generate(GenerationParams("a fox", None, 1, 96, 96, 2, None), "general")
            return {"during": during, "after": after, "warm": warm_calls, "now": dict(pipe.calls_by_shape)}
        finally:
            DevicePipeline.run = original  # type: ignore[method-assign]
            release.set()
            await engine.stop()

    out = asyncio.run(main())
    assert warming == [(64, 64), (96, 96), (64, 128)]
    assert out["during"] == (503, "loading")
    assert out["after"] == 200
    assert out["warm"] == {(64, 64): 1, (96, 96): 1, (64, 128): 1}
    assert out["now"][(96, 96)] == 2


# --- VAE tiling ------------------------------------------------------------------------------------------


def test_large_image_decodes_with_tiling_and_small_one_without(tiny_models: dict[str, Path]) -> None:
    # The tiny VAE's tile is its sample_size (32 px), so 128 px is many tiles, as 2048 px is for the real one.
    pipe = DevicePipeline(str(zimage(tiny_models)), "cpu", "float32", 64, vae_tiling_above=64)
    pipe.load()
    vae = pipe.pipe.vae
    tiled_decodes: list[tuple[int, ...]] = []
    plain = vae.tiled_decode

    def spy(z: Any, *args: Any, **kwargs: Any) -> Any:
        tiled_decodes.append(tuple(z.shape))
        return plain(z, *args, **kwargs)

    vae.tiled_decode = spy
    (large,), _ = pipe.run([job(128)])
    assert tiled_decodes == [(1, 4, 16, 16)] and large[0].size == (128, 128)
    assert np.asarray(large[0]).std() > 0
    (small,), _ = pipe.run([job(64)])
    assert len(tiled_decodes) == 1 and small[0].size == (64, 64)
    assert vae.use_tiling is False and pipe.tiled_calls == 1


def test_tiling_off_by_zero(tiny_models: dict[str, Path]) -> None:
    pipe = DevicePipeline(str(zimage(tiny_models)), "cpu", "float32", 64, vae_tiling_above=0)
    pipe.load()
    pipe.run([job(96)])
    assert pipe.tiled_calls == 0 and pipe.pipe.vae.use_tiling is False


# --- model files -------------------------------------------------------------------------------------


@pytest.fixture
def model_copy(tiny_models: dict[str, Path], tmp_path: Path) -> Path:
    return Path(shutil.copytree(zimage(tiny_models), tmp_path / "zimage"))


def test_whole_folder_passes_with_every_weight_file(model_copy: Path) -> None:
    checked = verify_pipeline_dir(model_copy)
    assert sorted(checked) == [
        "text_encoder/model.safetensors",
        "transformer/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
    ]
    sizes = {rel: (model_copy / rel).stat().st_size for rel in checked}
    verify_pipeline_dir(model_copy, sizes)


def test_missing_truncated_or_mis_sized_files_are_named(model_copy: Path) -> None:
    weights = model_copy / "transformer" / "diffusion_pytorch_model.safetensors"
    size = weights.stat().st_size
    with pytest.raises(ModelFilesInvalid, match="truncated"):
        with weights.open("r+b") as f:
            f.truncate(size - 100)
        verify_pipeline_dir(model_copy)
    with pytest.raises(ModelFilesInvalid, match="is empty"):
        weights.write_bytes(b"")
        verify_pipeline_dir(model_copy)
    weights.unlink()
    with pytest.raises(ModelFilesInvalid, match="component transformer has no weight files"):
        verify_pipeline_dir(model_copy)
    shutil.rmtree(model_copy / "transformer")
    with pytest.raises(ModelFilesInvalid, match="component folder transformer is missing"):
        verify_pipeline_dir(model_copy)
    (model_copy / "model_index.json").unlink()
    with pytest.raises(ModelFilesInvalid, match=r"no model_index\.json"):
        verify_pipeline_dir(model_copy)


def test_sizes_listed_by_the_hub_are_checked(model_copy: Path) -> None:
    rel = "vae/diffusion_pytorch_model.safetensors"
    size = (model_copy / rel).stat().st_size
    with pytest.raises(ModelFilesInvalid, match=f"the hub lists {size + 1}"):
        verify_pipeline_dir(model_copy, {rel: size + 1})
    with pytest.raises(ModelFilesInvalid, match=r"transformer/extra\.safetensors is missing"):
        verify_pipeline_dir(model_copy, {"transformer/extra.safetensors": 10})


def test_missing_shard_of_a_sharded_component(model_copy: Path) -> None:
    index = model_copy / "text_encoder" / "model.safetensors.index.json"
    index.write_text('{"weight_map": {"a": "model-00001-of-00002.safetensors"}}')
    with pytest.raises(ModelFilesInvalid, match=r"shard text_encoder/model-00001-of-00002\.safetensors"):
        verify_pipeline_dir(model_copy)


def test_truncated_model_is_a_health_error_without_paths(model_copy: Path) -> None:
    weights = model_copy / "transformer" / "diffusion_pytorch_model.safetensors"
    with weights.open("r+b") as f:
        f.truncate(weights.stat().st_size // 2)
    engine = start(settings_for(model_copy))
    assert engine.state == "error"
    assert (
        engine.error == "the image model's files on this worker are incomplete or truncated; fetch them again"
    )
    assert str(model_copy) not in engine.error


def test_fetch_checks_the_download_and_passes_the_revision(
    model_copy: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # No network here: the download is the tiny folder, the hub's listing the sizes it would give.
    import huggingface_hub

    from scripts import fetch_models

    asked: list[str | None] = []

    def snapshot(repo_id: str, revision: str | None = None, **_: Any) -> str:
        asked.append(revision)
        return str(model_copy)

    vae = "vae/diffusion_pytorch_model.safetensors"
    listed = {vae: (model_copy / vae).stat().st_size}
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot)
    monkeypatch.setattr(fetch_models, "hub_file_sizes", lambda *a: listed)
    fetch_models.fetch_hub_model("org/zimage", "abc123", diffusers_pipeline=True)
    assert asked == ["abc123"]
    assert "3 weight files whole" in capsys.readouterr().out

    listed[vae] += 1
    with pytest.raises(SystemExit, match=r"org/zimage@abc123 is incomplete after download"):
        fetch_models.fetch_hub_model("org/zimage", "abc123", diffusers_pipeline=True)
