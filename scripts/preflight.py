"""Does a GPU role fit its GPU? Sized before any weight is downloaded (``deploy_service.sh``).

    python -m scripts.preflight ROLE [--gpu-mem-gb N]  ROLE: profile chat1to1 shorts scenes selfie_feature llm
    python -m scripts.preflight --table                 every role on the common GPUs (DEPLOYMENT.md)

The models are built on torch's meta device (shapes, no memory) from their real configs: the model folder's
when the model id is a local folder or already in the Hugging Face cache, else the copies shipped in
``shared/model_configs`` (README there says where each comes from). Parameters are counted from those
models; bytes follow the dtype the service loads them in. The activation peak is an estimate with the
formulas below; every figure is in GiB (2**30 bytes), printed as "GB" like nvidia-smi's totals.

Exit status: 0 the role fits as configured; 1 it does not (the line says which setting would make it fit,
or that none does); 2 a model's config could not be found, so nothing can be said.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from scripts.vllm_flags import choose
from shared.public_names import is_local_model

GIB = 2**30
CONFIG_ROOT = Path(__file__).resolve().parent.parent / "shared" / "model_configs"
# Model ids whose configs are shipped, and the folder that holds them.
SHIPPED = {
    "Tongyi-MAI/Z-Image-Turbo": "z_image_turbo",
    "Qwen/Qwen2-VL-7B-Instruct": "qwen2_vl_7b_instruct",
    "Qwen/Qwen2.5-7B-Instruct": "qwen2_5_7b_instruct",
}
IMAGE_ROLES = ("profile", "chat1to1", "shorts", "scenes")
ROLES = (*IMAGE_ROLES, "selfie_feature", "llm")
# Moderated roles run nudenet's bundled ONNX detector (320n.onnx, 12.2 MB) in onnxruntime on the CPU.
MODERATED_ROLES = ("shorts", "scenes")
# The CUDA context, cuBLAS/cuDNN workspaces and the allocator's slack: typically 0.5-1 GiB per process.
CONTEXT_GIB = 1.0
# Text tokens the Z-Image transformer sees besides the image (the pipeline pads the caption to 32).
TEXT_TOKENS = 512
SEQ_MULTIPLE = 32
# GPUs of the --table, with the total memory nvidia-smi reports (GiB).
GPUS: dict[str, float] = {
    "H200 141GB": 140.4,
    "H100 80GB": 79.6,
    "A100 80GB": 80.0,
    "L40S 48GB": 45.0,
    "A40 48GB": 45.0,
    "A100 40GB": 40.0,
    "RTX 4090 24GB": 24.0,
}
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
Verdict = Literal["fits", "needs", "does not fit"]


class ConfigNotFound(Exception):
    """No config for a model: not a local folder, not in the Hugging Face cache, not shipped."""


# --- configs and counting ---------------------------------------------------------------------------------


def config_path(model_id: str, subfolder: str = "") -> Path:
    """The model's ``[subfolder/]config.json``: local folder, Hugging Face cache, else the shipped copy."""
    name = f"{subfolder}/config.json" if subfolder else "config.json"
    local = Path(model_id).expanduser()
    if local.is_dir():
        if (local / name).is_file():
            return local / name
        raise ConfigNotFound(f"{local / name} is missing")
    if is_local_model(model_id):
        raise ConfigNotFound(f"model path {model_id} is not a model folder")
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model_id, name)
        if isinstance(cached, str):
            return Path(cached)
    except Exception:
        pass  # a malformed id or an unreadable cache only means "not cached"
    if model_id in SHIPPED:
        return CONFIG_ROOT / SHIPPED[model_id] / name
    raise ConfigNotFound(
        f"no config for {model_id}: it is not a local folder, not in the Hugging Face cache and not "
        "shipped in shared/model_configs"
    )


def read_config(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def count_params(build: Callable[[], Any]) -> int:
    """Parameters of the module ``build`` makes, built on the meta device: shapes only, no memory."""
    import torch

    with torch.device("meta"):
        module = build()
    return sum(p.numel() for p in module.parameters())


def build_transformers_model(path: Path, auto_class: str = "") -> Any:
    """A transformers model from its config.json: the class ``architectures`` names, or ``auto_class``."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(path.parent)
    arch = auto_class or (config.architectures or ["AutoModelForCausalLM"])[0]
    cls = getattr(transformers, arch)
    if arch.startswith("Auto"):
        return cls.from_config(config)
    return cls(config)


# --- estimates --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    """One model on the GPU: its parameter count and the bytes per parameter it is loaded with."""

    name: str
    params: int
    dtype: str

    @property
    def gib(self) -> float:
        return self.params * DTYPE_BYTES[self.dtype] / GIB


@dataclass(frozen=True)
class Report:
    role: str
    gpu_gib: float
    weights_gib: float
    peak_gib: float
    verdict: Verdict
    settings: tuple[str, ...] = ()
    lines: tuple[str, ...] = field(default_factory=tuple)
    # The peak once ``settings`` are applied (a "needs" verdict).
    fixed_peak_gib: float | None = None

    @property
    def summary(self) -> str:
        if self.verdict == "needs":
            return "needs " + " + ".join(self.settings)
        return self.verdict


def block_elements_per_token(dim: int, ffn: int) -> int:
    """Live activations of one transformer block per token, with SDPA/flash attention (no N x N matrix):
    attention holds the input, its norm, q, k, v and the output (6 x dim); the SwiGLU MLP holds the residual,
    the normed input and its gate, up and product tensors (2 x dim + 3 x ffn). The larger of the two."""
    return max(6 * dim, 2 * dim + 3 * ffn)


@dataclass(frozen=True)
class ZImageShape:
    transformer: int
    text_encoder: int
    vae: int
    dim: int
    ffn: int
    patch: int
    vae_scale: int
    te_dim: int
    te_ffn: int
    te_layers: int
    vae_full_res_channels: int
    vae_tile: int

    @classmethod
    def load(cls, model_id: str) -> ZImageShape:
        from diffusers import AutoencoderKL, ZImageTransformer2DModel

        t_cfg = read_config(config_path(model_id, "transformer"))
        v_cfg = read_config(config_path(model_id, "vae"))
        te_path = config_path(model_id, "text_encoder")
        te_cfg = read_config(te_path)
        dim = int(t_cfg["dim"])
        tile = v_cfg.get("sample_size", 512)
        channels = list(v_cfg["block_out_channels"])
        return cls(
            transformer=count_params(lambda: ZImageTransformer2DModel.from_config(t_cfg)),
            # The pipeline loads the bare Qwen3Model (model_index.json): no LM head, whatever the config says.
            text_encoder=count_params(lambda: build_transformers_model(te_path, "AutoModel")),
            vae=count_params(lambda: AutoencoderKL.from_config(v_cfg)),
            dim=dim,
            ffn=int(
                dim / 3 * 8
            ),  # diffusers' ZImageTransformerBlock: FeedForward(hidden_dim=int(dim / 3 * 8))
            patch=int(t_cfg["all_patch_size"][0]),
            vae_scale=2 ** (len(channels) - 1),
            te_dim=int(te_cfg["hidden_size"]),
            te_ffn=int(te_cfg["intermediate_size"]),
            te_layers=int(te_cfg["num_hidden_layers"]),
            # The last upsampler writes channels[1] at full resolution, where the decoder peaks.
            vae_full_res_channels=int(channels[1] if len(channels) > 1 else channels[0]),
            vae_tile=int(tile[0] if isinstance(tile, (list, tuple)) else tile),
        )


@dataclass(frozen=True)
class ImageRun:
    """What the image worker is configured to do (``IMAGE_*``): the worst case the preflight sizes."""

    dtype: str
    max_pixels: int  # min(IMAGE_MAX_PIXELS, IMAGE_MAX_SIDE**2)
    batch: int  # IMAGE_MAX_BATCH
    cfg: bool  # IMAGE_MAX_GUIDANCE > 0
    text_tokens: int  # IMAGE_MAX_SEQUENCE_LENGTH
    by_pixels: tuple[tuple[int, int], ...] = ()  # IMAGE_MAX_BATCH_BY_PIXELS
    vae_tiling_above: int = 0  # IMAGE_VAE_TILING_ABOVE; 0: never
    text_encoder_offload: bool = False

    def points(self) -> list[tuple[int, int]]:
        """(pixels, images per call) at each bound of the batch table up to the largest size, and there."""
        from services.image_worker.batch_policy import BatchPolicy

        policy = BatchPolicy(self.batch, dict(self.by_pixels))
        sizes = [p for p, _ in self.by_pixels if p < self.max_pixels] + [self.max_pixels]
        return [(p, policy.limit_for(p, 1)) for p in sizes]

    def decoded_pixels(self, pixels: int, tile: int) -> int:
        """Pixels the VAE decodes at once: an image whose longer side is over the threshold goes in tiles;
        at most a square of the threshold's side goes whole."""
        if self.vae_tiling_above <= 0:
            return pixels
        return min(pixels, max(self.vae_tiling_above, tile) ** 2)


def zimage_peak(shape: ZImageShape, run: ImageRun) -> tuple[float, float, list[str]]:
    """(weights GiB, peak GiB, explanation) for one GPU holding the whole pipeline."""
    b = DTYPE_BYTES[run.dtype]
    text = math.ceil(run.text_tokens / SEQ_MULTIPLE) * SEQ_MULTIPLE
    dit = te = vae = 0.0
    worst = ""
    for pixels, images in run.points():
        # Classifier-free guidance runs the conditional and unconditional passes as one doubled batch.
        rows = images * (2 if run.cfg else 1)
        image_tokens = pixels // (shape.vae_scale * shape.patch) ** 2
        point_dit = rows * (image_tokens + text) * block_elements_per_token(shape.dim, shape.ffn) * b
        if point_dit >= dit:
            dit = point_dit
            worst = f"{rows} rows x ({image_tokens} image + {text} text tokens)"
        # The pipeline keeps every hidden state of the text encoder (it reads hidden_states[-2]).
        per_token = (
            block_elements_per_token(shape.te_dim, shape.te_ffn) + (shape.te_layers + 1) * shape.te_dim
        )
        te = max(te, 0.0 if run.text_encoder_offload else rows * text * per_token * b)
        # Decoder peak at full resolution: the upsampled input, its conv output and the next norm.
        decoded = run.decoded_pixels(pixels, shape.vae_tile)
        vae = max(vae, images * 3 * shape.vae_full_res_channels * decoded * b)
    parts = [Part("transformer", shape.transformer, run.dtype), Part("vae", shape.vae, run.dtype)]
    if not run.text_encoder_offload:
        parts.insert(1, Part("text encoder", shape.text_encoder, run.dtype))
    weights = sum(p.gib for p in parts)
    act = max(dit, te, vae) / GIB
    lines = [f"  {p.name}: {p.params / 1e9:.3f} B params, {p.gib:.2f} GB in {p.dtype}" for p in parts]
    tiling = f"tiled above {run.vae_tiling_above} px" if run.vae_tiling_above > 0 else "not tiled"
    lines.append(
        f"  activations: transformer {dit / GIB:.2f} GB ({worst}), text encoder {te / GIB:.2f} GB, "
        f"VAE decode {vae / GIB:.2f} GB ({tiling}); they run one after another, the largest counts"
    )
    return weights, weights + act + CONTEXT_GIB, lines


def fit_image(role: str, shape: ZImageShape, run: ImageRun, gpu_gib: float) -> Report:
    """As configured; else the options in order, each kept once taken: bf16, text-encoder CPU offload, VAE
    tiling, then the largest batch that fits."""
    weights, peak, lines = zimage_peak(shape, run)
    if peak <= gpu_gib:
        return Report(role, gpu_gib, weights, peak, "fits", (), tuple(lines))
    tile = shape.vae_tile
    options: list[tuple[str, Callable[[ImageRun], ImageRun]]] = [
        ("IMAGE_DTYPE=bfloat16", lambda r: replace(r, dtype="bfloat16")),
        ("text-encoder CPU offload", lambda r: replace(r, text_encoder_offload=True)),
        (
            f"IMAGE_VAE_TILING_ABOVE={tile}",
            lambda r: r if 0 < r.vae_tiling_above <= tile else replace(r, vae_tiling_above=tile),
        ),
    ]
    settings: list[str] = []
    tried = run
    for label, apply in options:
        changed = apply(tried)
        if changed == tried:
            continue
        tried = changed
        settings.append(label)
        fixed = zimage_peak(shape, tried)[1]
        if fixed <= gpu_gib:
            return Report(role, gpu_gib, weights, peak, "needs", tuple(settings), tuple(lines), fixed)
    largest = max(images for _, images in tried.points())
    for batch in range(largest - 1, 0, -1):
        fixed = zimage_peak(shape, replace(tried, batch=batch))[1]
        if fixed <= gpu_gib:
            settings.append(f"IMAGE_MAX_BATCH={batch}")
            return Report(role, gpu_gib, weights, peak, "needs", tuple(settings), tuple(lines), fixed)
    return Report(role, gpu_gib, weights, peak, "does not fit", (), tuple(lines))


def image_run_from_settings() -> tuple[str, ImageRun]:
    from services.image_worker.settings import ImageSettings

    s = ImageSettings()
    dtype = "bfloat16" if s.dtype == "auto" else s.dtype  # shared/torch_devices.resolve_dtype on CUDA
    run = ImageRun(
        dtype=dtype,
        max_pixels=min(s.max_pixels, s.max_side**2),
        batch=s.max_batch,
        cfg=s.max_guidance > 0,
        text_tokens=s.max_sequence_length,
        by_pixels=tuple(sorted(s.max_batch_by_pixels.items())),
        vae_tiling_above=s.vae_tiling_above,
    )
    return s.model_id, run


@dataclass(frozen=True)
class DecoderShape:
    """A decoder-only LM (or the LM of a VLM): what weights and the KV cache cost."""

    params: int
    layers: int
    dim: int
    ffn: int
    kv_heads: int
    head_dim: int
    vocab: int

    @classmethod
    def load(cls, path: Path) -> DecoderShape:
        cfg = read_config(path)
        text = cfg.get("text_config") or cfg
        heads = int(text["num_attention_heads"])
        dim = int(text["hidden_size"])
        return cls(
            params=count_params(lambda: build_transformers_model(path)),
            layers=int(text["num_hidden_layers"]),
            dim=dim,
            ffn=int(text["intermediate_size"]),
            kv_heads=int(text.get("num_key_value_heads") or heads),
            head_dim=int(text.get("head_dim") or dim // heads),
            vocab=int(text["vocab_size"]),
        )

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes


def vllm_flag(args: str, flag: str, default: int) -> int:
    words = shlex.split(args)
    for i, word in enumerate(words):
        if word == flag and i + 1 < len(words):
            return int(words[i + 1])
        if word.startswith(flag + "="):
            return int(word.split("=", 1)[1])
    return default


def vllm_defaults(gpu_gib: float, guard: bool) -> tuple[int, float, int]:
    """(max-model-len, gpu-memory-utilization, max-num-seqs) start_vllm.sh picks for this GPU when the env
    sets none (scripts/vllm_flags.py)."""
    flags = choose(gpu_gib, guard=guard)
    return flags.max_model_len, flags.gpu_memory_utilization, flags.max_num_seqs


def fit_llm(lm: DecoderShape, guard: DecoderShape | None, gpu_gib: float, env: dict[str, str]) -> Report:
    """vLLM's own rule: weights + profiled activations + the KV cache of one max-model-len sequence must fit
    in its share of the GPU; what is left of the share is KV cache for concurrent sequences."""
    guard_on = env.get("LLM_GUARD_BACKEND", "vllm") == "vllm"
    auto_len, auto_share, auto_seqs = vllm_defaults(gpu_gib, guard_on)
    extra = env.get("VLLM_EXTRA_ARGS", "")
    # start_vllm.sh: env over the defaults, VLLM_EXTRA_ARGS last (so its flags win).
    max_len = vllm_flag(extra, "--max-model-len", int(env.get("VLLM_MAX_MODEL_LEN") or auto_len))
    max_seqs = vllm_flag(extra, "--max-num-seqs", int(env.get("VLLM_MAX_NUM_SEQS") or auto_seqs))
    # vLLM's V1 engine prefills in chunks of at most this many tokens (its default for a server on a GPU).
    batched = vllm_flag(extra, "--max-num-batched-tokens", 8192)
    share = float(env.get("VLLM_GPU_MEMORY_UTILIZATION") or auto_share)
    guard_share = float(env.get("GUARD_VLLM_GPU_MEMORY_UTILIZATION", "0.10")) if guard_on else 0.0
    weights = lm.params * 2 / GIB  # start_vllm.sh: --dtype bfloat16
    # The profile run: max-num-batched-tokens through one block, plus fp32 logits for every sequence.
    act = (batched * block_elements_per_token(lm.dim, lm.ffn) * 2 + max_seqs * lm.vocab * 4) / GIB
    kv_one = max_len * lm.kv_bytes_per_token() / GIB
    need = weights + act + kv_one + CONTEXT_GIB
    budget = share * gpu_gib
    spare = budget - weights - act - CONTEXT_GIB
    lines = [
        f"  chat model: {lm.params / 1e9:.3f} B params, {weights:.2f} GB in bfloat16",
        f"  vLLM share {share:.2f} x {gpu_gib:.1f} GB = {budget:.1f} GB; activations {act:.2f} GB "
        f"({batched} batched tokens); KV cache {lm.kv_bytes_per_token() // 1024} KiB/token, "
        f"{kv_one:.2f} GB per {max_len}-token sequence, {max_seqs * kv_one:.1f} GB for all {max_seqs} "
        "(max-num-seqs) at full length",
        f"  the share holds {max(0, int(spare / kv_one)) if kv_one else 0} full-length sequences at once",
    ]
    peak = need
    if guard is not None:
        g_weights = guard.params * 2 / GIB
        g_budget = guard_share * gpu_gib
        guard_len = int(env.get("GUARD_VLLM_MAX_MODEL_LEN") or 8192)  # deploy_service.sh's default
        g_need = g_weights + guard_len * guard.kv_bytes_per_token() / GIB + CONTEXT_GIB
        lines.append(
            f"  guard: {guard.params / 1e9:.3f} B params, {g_weights:.2f} GB; needs {g_need:.2f} GB of its "
            f"share {guard_share:.2f} x {gpu_gib:.1f} = {g_budget:.1f} GB"
        )
        weights += g_weights
        peak += g_need
        if g_need > g_budget:
            need_share = math.ceil(g_need / gpu_gib * 100) / 100
            ok = need_share + share <= 1.0 and need <= budget
            verdict: Verdict = "needs" if ok else "does not fit"
            settings = (f"GUARD_VLLM_GPU_MEMORY_UTILIZATION={need_share:.2f}",) if ok else ()
            return Report("llm", gpu_gib, weights, peak, verdict, settings, tuple(lines))
    elif guard_on:
        lines.append(
            "  guard: its config is in neither a local folder nor the cache; only its share is reserved"
        )
    if share + guard_share > 1.0:
        lines.append(f"  the two shares add up to {share + guard_share:.2f} > 1")
        return Report("llm", gpu_gib, weights, peak, "does not fit", (), tuple(lines))
    if need <= budget:
        return Report("llm", gpu_gib, weights, peak, "fits", (), tuple(lines))
    # Options: a larger share of the GPU (up to what the guard leaves), then a shorter max-model-len.
    room = 1.0 - guard_share - 0.02
    if need <= room * gpu_gib:
        share_needed = math.ceil(need / gpu_gib * 100) / 100
        return Report(
            "llm",
            gpu_gib,
            weights,
            peak,
            "needs",
            (f"VLLM_GPU_MEMORY_UTILIZATION={share_needed:.2f}",),
            tuple(lines),
        )
    tokens_left = (budget - weights - act - CONTEXT_GIB) * GIB / lm.kv_bytes_per_token()
    if tokens_left >= 1024:
        fit_len = int(tokens_left) // 1024 * 1024
        return Report(
            "llm", gpu_gib, weights, peak, "needs", (f"VLLM_MAX_MODEL_LEN={fit_len}",), tuple(lines)
        )
    return Report("llm", gpu_gib, weights, peak, "does not fit", (), tuple(lines))


def yolo_params(weights: str) -> tuple[int, str]:
    """The face detector's parameters: from its .pt when it is on disk, else from its YOLOv8n architecture."""
    import torch

    path = Path(weights).expanduser()
    if path.is_file() and path.suffix == ".pt":
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        model = ckpt.get("model") or ckpt.get("ema")
        return sum(p.numel() for p in model.parameters()), str(path)
    from shared.ultralytics_env import import_yolo

    import_yolo()  # the offline environment, before ultralytics is imported
    from ultralytics.nn.tasks import DetectionModel

    # The face model is YOLOv8n with one class.
    model = DetectionModel("yolov8n.yaml", nc=1, verbose=False)
    return sum(p.numel() for p in model.parameters()), "yolov8n.yaml, 1 class"


def fit_selfie(vl: DecoderShape, vision: dict[str, Any], yolo: tuple[int, str], gpu_gib: float) -> Report:
    from services.selfie_feature_worker.settings import SelfieSettings

    s = SelfieSettings()
    dtype = "bfloat16" if s.dtype == "auto" else s.dtype
    b = DTYPE_BYTES[dtype]
    weights = vl.params * b / GIB + yolo[0] * 4 / GIB  # ultralytics keeps the detector in float32
    patch = int(vision.get("patch_size", 14))
    merge = int(vision.get("spatial_merge_size", 2))
    patches = s.vlm_max_pixels // patch**2
    e = int(vision.get("embed_dim", 1280))
    vision_act = patches * block_elements_per_token(e, e * int(vision.get("mlp_ratio", 4))) * b
    tokens = patches // merge**2 + TEXT_TOKENS + s.max_new_tokens
    lm_act = tokens * block_elements_per_token(vl.dim, vl.ffn) * b
    kv = tokens * vl.kv_bytes_per_token(b)
    per_request = max(vision_act, lm_act) + kv
    act = s.max_concurrent * per_request / GIB
    peak = weights + act + CONTEXT_GIB
    lines = [
        f"  Qwen2-VL: {vl.params / 1e9:.3f} B params, {vl.params * b / GIB:.2f} GB in {dtype}",
        f"  face detector: {yolo[0] / 1e6:.2f} M params from {yolo[1]}, "
        f"{yolo[0] * 4 / GIB * 1024:.1f} MB in float32",
        f"  activations: {s.max_concurrent} requests x ({patches} patches or {tokens} tokens + KV cache)"
        f" = {act:.2f} GB",
    ]
    if peak <= gpu_gib:
        return Report("selfie_feature", gpu_gib, weights, peak, "fits", (), tuple(lines))
    if dtype == "float32" and peak / 2 <= gpu_gib:
        return Report(
            "selfie_feature", gpu_gib, weights, peak, "needs", ("SELFIE_DTYPE=bfloat16",), tuple(lines)
        )
    return Report("selfie_feature", gpu_gib, weights, peak, "does not fit", (), tuple(lines))


# --- roles ------------------------------------------------------------------------------------------------


class Sizer:
    """Builds each model once (the meta build of a 7B model takes seconds) and sizes roles on any GPU."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self._cache: dict[str, Any] = {}

    def _once(self, key: str, build: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def report(self, role: str, gpu_gib: float) -> Report:
        if role in IMAGE_ROLES:
            model_id, run = image_run_from_settings()
            shape = self._once("zimage", lambda: ZImageShape.load(model_id))
            report = fit_image(role, shape, run, gpu_gib)
            if role in MODERATED_ROLES:
                note = (
                    "  nudenet output check: 320n.onnx, 12.2 MB, runs on the CPU (onnxruntime): 0 GB of GPU"
                )
                report = replace(report, lines=(*report.lines, note))
            return report
        if role == "selfie_feature":
            from services.selfie_feature_worker.settings import SelfieSettings

            s = SelfieSettings()
            path = config_path(s.vlm_model)
            vl = self._once("vl", lambda: DecoderShape.load(path))
            yolo = self._once("yolo", lambda: yolo_params(s.detector_weights))
            return fit_selfie(vl, read_config(path).get("vision_config", {}), yolo, gpu_gib)
        if role == "llm":
            from services.llm_service.settings import LlmSettings

            s = LlmSettings()
            lm = self._once("lm", lambda: DecoderShape.load(config_path(s.model_id)))
            guard = None
            if s.guard_backend == "vllm":
                try:
                    guard_path = config_path(s.guard_model_id)
                    guard = self._once("guard", lambda: DecoderShape.load(guard_path))
                except ConfigNotFound:
                    guard = None
            env = {**self.env, "LLM_GUARD_BACKEND": s.guard_backend}
            return fit_llm(lm, guard, gpu_gib, env)
        raise ValueError(f"unknown role {role}; one of {', '.join(ROLES)}")


def print_report(report: Report) -> None:
    print(f"{report.role} on a {report.gpu_gib:.1f} GB GPU")
    for line in report.lines:
        print(line)
    print(f"weights {report.weights_gib:.1f} GB")
    print(f"peak {report.peak_gib:.1f} GB")
    if report.fixed_peak_gib is not None:
        print(f"peak with {' + '.join(report.settings)}: {report.fixed_peak_gib:.1f} GB")
    print(report.summary)


def zimage_crosscheck(shape: ZImageShape) -> list[tuple[str, float, float]]:
    """(part, our GiB, published GiB). The published VAE file is float32; the other two are bfloat16."""
    return [
        ("transformer bf16", shape.transformer * 2 / GIB, 11.5),
        ("text encoder bf16", shape.text_encoder * 2 / GIB, 7.5),
        ("VAE fp32 (bf16 is half)", shape.vae * 4 / GIB, 0.3),
    ]


def print_table(sizer: Sizer) -> None:
    roles = ("profile", "selfie_feature", "llm")  # the four image roles share one engine and one answer
    print("| GPU | image roles (profile, chat1to1, shorts, scenes) | selfie_feature | llm |")
    print("|---|---|---|---|")
    for gpu, gib in GPUS.items():
        cells = []
        for role in roles:
            r = sizer.report(role, gib)
            fixed = f", {r.fixed_peak_gib:.1f} with it" if r.fixed_peak_gib is not None else ""
            cells.append(f"{r.summary} (peak {r.peak_gib:.1f}{fixed})")
        print(f"| {gpu} ({gib:.1f} GB) | " + " | ".join(cells) + " |")
    shape = sizer._once("zimage", lambda: ZImageShape.load(image_run_from_settings()[0]))
    print()
    for part, ours, published in zimage_crosscheck(shape):
        print(f"Z-Image {part}: {ours:.2f} GB, published {published} GB")


def gpu_memory_from_nvidia_smi() -> float | None:
    import shutil
    import subprocess

    if shutil.which("nvidia-smi") is None:
        return None
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if out.returncode != 0 or not out.stdout.strip():
        return None
    # The smallest GPU decides: each image worker puts a whole pipeline on every device.
    return min(float(v) for v in out.stdout.split()) / 1024


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.preflight", description=__doc__.splitlines()[0])
    parser.add_argument("role", nargs="?", choices=(*ROLES, "interface"))
    parser.add_argument("--gpu-mem-gb", type=float, help="GPU memory in GiB (default: nvidia-smi's total)")
    parser.add_argument("--table", action="store_true", help="every role on the common GPUs")
    args = parser.parse_args(argv)
    sizer = Sizer(dict(os.environ))
    try:
        if args.table:
            print_table(sizer)
            return 0
        if args.role is None:
            parser.error("give a ROLE or --table")
        if args.role == "interface":
            print("interface: no GPU models")
            return 0
        gpu = args.gpu_mem_gb if args.gpu_mem_gb is not None else gpu_memory_from_nvidia_smi()
        if gpu is None:
            print("preflight: no GPU found by nvidia-smi; give --gpu-mem-gb N", file=sys.stderr)
            return 2
        report = sizer.report(args.role, gpu)
    except ConfigNotFound as exc:
        print(f"preflight: {exc}", file=sys.stderr)
        return 2
    print_report(report)
    return 0 if report.verdict == "fits" else 1


if __name__ == "__main__":
    sys.exit(main())
