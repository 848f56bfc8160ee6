"""scripts/preflight.py: meta-device parameter counts, the formulas' inputs, verdicts and exit codes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from scripts import preflight
from scripts.preflight import DecoderShape, ImageRun, ZImageShape, config_path, fit_image, main

ENV_SETTINGS = (
    "CONFIG_FILE",
    "IMAGE_MODEL_ID",
    "IMAGE_DTYPE",
    "IMAGE_MAX_BATCH",
    "IMAGE_MAX_SIDE",
    "IMAGE_MAX_PIXELS",
    "IMAGE_MAX_GUIDANCE",
    "IMAGE_DEFAULT_WIDTH",
    "IMAGE_DEFAULT_HEIGHT",
    "IMAGE_MAX_BATCH_BY_PIXELS",
    "IMAGE_VAE_TILING_ABOVE",
    "SELFIE_DTYPE",
    "SELFIE_VLM_MAX_PIXELS",
    "SELFIE_MAX_CONCURRENT",
    "SELFIE_DETECTOR_WEIGHTS",
    "LLM_MODEL_ID",
    "LLM_GUARD_BACKEND",
    "LLM_GUARD_MODEL_ID",
    "VLLM_MAX_MODEL_LEN",
    "VLLM_GPU_MEMORY_UTILIZATION",
    "VLLM_EXTRA_ARGS",
    "VLLM_MAX_NUM_SEQS",
    "GUARD_VLLM_MAX_MODEL_LEN",
    "GUARD_VLLM_GPU_MEMORY_UTILIZATION",
)


@pytest.fixture(autouse=True)
def default_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sizes the code defaults unless it sets an override itself."""
    for name in ENV_SETTINGS:
        monkeypatch.delenv(name, raising=False)


def numel(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_meta_count_of_tiny_zimage_equals_the_loaded_models(tiny_models: dict[str, Path]) -> None:
    from diffusers import AutoencoderKL, ZImageTransformer2DModel
    from transformers import AutoModel

    folder = tiny_models["zimage"]
    shape = ZImageShape.load(str(folder))
    assert shape.transformer == numel(
        ZImageTransformer2DModel.from_pretrained(folder, subfolder="transformer")
    )
    assert shape.text_encoder == numel(AutoModel.from_pretrained(folder / "text_encoder"))
    assert shape.vae == numel(AutoencoderKL.from_pretrained(folder, subfolder="vae"))
    # The tiny VAE has four blocks (8x) and the transformer 2x2 patches, as the real model.
    assert (shape.vae_scale, shape.patch) == (8, 2)


@pytest.mark.parametrize("name", ["qwen_lm", "qwen_vl"])
def test_meta_count_of_tiny_lms_equals_the_loaded_models(tiny_models: dict[str, Path], name: str) -> None:
    import transformers

    folder = tiny_models[name]
    shape = DecoderShape.load(config_path(str(folder)))
    arch = transformers.AutoConfig.from_pretrained(folder).architectures[0]
    assert shape.params == numel(getattr(transformers, arch).from_pretrained(folder))


def test_real_zimage_sizes_match_the_published_figures() -> None:
    """Published: 11.5 GB transformer + 7.5 GB text encoder (bf16) + 0.3 GB VAE (its file is float32)."""
    shape = ZImageShape.load("Tongyi-MAI/Z-Image-Turbo")
    for part, ours, published in preflight.zimage_crosscheck(shape):
        assert abs(ours - published) / published < 0.10, part
    # 1024x1024: 64 x 64 patches of 16 pixels (8x VAE, 2x2 patch) beside the 512 text tokens.
    assert 1024 * 1024 // (shape.vae_scale * shape.patch) ** 2 == 4096


def test_real_lm_counts_match_the_model_cards() -> None:
    lm = DecoderShape.load(config_path("Qwen/Qwen2.5-7B-Instruct"))
    vl = DecoderShape.load(config_path("Qwen/Qwen2-VL-7B-Instruct"))
    assert 7.5e9 < lm.params < 7.7e9  # "7.61B"
    assert 8.2e9 < vl.params < 8.4e9  # "8.29B"
    # 28 layers x 2 (K, V) x 4 KV heads x 128 x 2 bytes.
    assert lm.kv_bytes_per_token() == 57344


def small_shape() -> ZImageShape:
    return ZImageShape.load("Tongyi-MAI/Z-Image-Turbo")


def test_options_are_tried_in_order_and_kept() -> None:
    shape = small_shape()
    fp32 = ImageRun("float32", 1024 * 1024, 1, False, 512)
    as_is = fit_image("profile", shape, fp32, 80.0)
    assert as_is.verdict == "fits"
    needs = fit_image("profile", shape, fp32, 30.0)
    assert needs.settings == ("IMAGE_DTYPE=bfloat16",)
    assert needs.fixed_peak_gib is not None and needs.fixed_peak_gib <= 30.0 < needs.peak_gib
    offload = fit_image("profile", shape, fp32, 16.0)
    assert offload.settings[:2] == ("IMAGE_DTYPE=bfloat16", "text-encoder CPU offload")
    assert fit_image("profile", shape, fp32, 8.0).verdict == "does not fit"


def test_vae_tiling_caps_the_decode_at_one_tile() -> None:
    shape = small_shape()
    big = ImageRun("bfloat16", 2048 * 2048, 4, True, 512)
    plain = preflight.zimage_peak(shape, big)[1]
    tiled = preflight.zimage_peak(shape, replace(big, vae_tiling_above=1024))[1]
    assert tiled < plain
    report = fit_image("shorts", shape, big, 24.0)
    assert report.verdict == "needs" and "IMAGE_VAE_TILING_ABOVE=1024" in report.settings


def test_the_batch_table_sizes_each_bound_with_its_own_batch() -> None:
    """Four 512x512 images, two 768x768, then one image per call up to 2048x2048: the worst of those, not
    four 2048x2048 images."""
    shape = small_shape()
    table = ((512 * 512, 4), (768 * 768, 2), (1024 * 1024, 1))
    run = ImageRun("bfloat16", 2048 * 2048, 4, False, 512, by_pixels=table, vae_tiling_above=1024)
    assert run.points() == [(512 * 512, 4), (768 * 768, 2), (1024 * 1024, 1), (2048 * 2048, 1)]
    flat = replace(run, by_pixels=())
    assert flat.points() == [(2048 * 2048, 4)]
    assert preflight.zimage_peak(shape, run)[1] < preflight.zimage_peak(shape, flat)[1]


def test_exit_codes_and_lines(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["llm", "--gpu-mem-gb", "80"]) == 0
    out = capsys.readouterr().out
    assert "weights 14.2 GB" in out and "\npeak " in out and out.rstrip().endswith("fits")
    assert main(["llm", "--gpu-mem-gb", "12"]) == 1
    assert capsys.readouterr().out.rstrip().endswith("does not fit")
    assert main(["profile", "--gpu-mem-gb", "10"]) == 1
    assert main(["interface"]) == 0


def test_a_model_without_any_config_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LLM_MODEL_ID", "someone/Unknown-7B")
    assert main(["llm", "--gpu-mem-gb", "80"]) == 2
    assert "no config for someone/Unknown-7B" in capsys.readouterr().err


def test_a_local_model_folder_is_sized_from_its_own_configs(
    monkeypatch: pytest.MonkeyPatch, tiny_models: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("IMAGE_MODEL_ID", str(tiny_models["zimage"]))
    assert main(["chat1to1", "--gpu-mem-gb", "2"]) == 0
    out = capsys.readouterr().out
    assert "weights 0.0 GB" in out


def test_vllm_flags_are_read_from_the_extra_args(monkeypatch: pytest.MonkeyPatch) -> None:
    assert preflight.vllm_flag("--enforce-eager --max-num-seqs 32", "--max-num-seqs", 256) == 32
    assert preflight.vllm_flag("--max-num-seqs=8", "--max-num-seqs", 256) == 8
    lm = DecoderShape.load(config_path("Qwen/Qwen2.5-7B-Instruct"))
    long = preflight.fit_llm(lm, None, 24.0, {"VLLM_MAX_MODEL_LEN": "131072", "LLM_GUARD_BACKEND": "off"})
    assert long.verdict == "needs" and long.settings[0].startswith(
        ("VLLM_GPU_MEMORY_UTILIZATION", "VLLM_MAX")
    )


def test_selfie_counts_the_detector_from_its_file(
    monkeypatch: pytest.MonkeyPatch, tiny_models: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("SELFIE_VLM_MODEL", raising=False)
    monkeypatch.setenv("SELFIE_DETECTOR_WEIGHTS", str(tiny_models["yolo_random"]))
    assert main(["selfie_feature", "--gpu-mem-gb", "24"]) == 0
    out = capsys.readouterr().out
    # The 80-class YOLOv8n the tiny builder saves: 3.16 M parameters, read from the .pt itself.
    assert f"3.16 M params from {tiny_models['yolo_random']}" in out
    assert "Qwen2-VL: 8.291 B params, 15.44 GB in bfloat16" in out
    assert main(["selfie_feature", "--gpu-mem-gb", "16"]) == 1


def test_the_guard_is_sized_inside_its_own_share(
    monkeypatch: pytest.MonkeyPatch, tiny_models: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LLM_GUARD_MODEL_ID", str(tiny_models["qwen3_guard"]))
    assert main(["llm", "--gpu-mem-gb", "80"]) == 0
    assert "guard: 0.000 B params" in capsys.readouterr().out
    # 10% of a 24 GB GPU leaves the guard room; 10% of 8 GB is under its CUDA context alone.
    assert main(["llm", "--gpu-mem-gb", "8"]) == 1
