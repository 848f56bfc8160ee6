"""Environment of the model services on the tiny checkpoints, as the e2e tests and the soak bench run them.

One place for the knobs that make the tiny random models usable in a flow (short generations, a fixed seed,
the LLM's labelled template fallback for the junk random weights write), so a test and a bench that start the
same stack start it the same way.

The guard: the LLM service loads the tiny Qwen3Guard (the same code path as the real one), and the interface
asks it about every image prompt in ``observe`` mode. A random-weight guard answers noise (nearly always
"unparsed"), which ``enforce`` would refuse: observing exercises every call and counts every verdict without
letting noise decide. For the same reason the LLM does not guard its own captions and replies here.
"""

from __future__ import annotations

from pathlib import Path

# The avatar's features as a client sends them back as ``persona`` in later chat requests.
PERSONA = {
    "hair_color": "auburn",
    "hair_style": "long wavy",
    "eye_color": "green",
    "skin_tone": "fair",
    "age_range": "25-35",
    "gender_presentation": "woman",
}


def llm_env(models: dict[str, Path], token: str, **extra: str) -> dict[str, str]:
    return {
        "LLM_BACKEND": "transformers",
        "LLM_MODEL_ID": str(models["qwen_lm"]),
        "LLM_MIN_NEW_TOKENS": "16",
        "LLM_SEED": "1234",
        "LLM_EXPAND_MAX_NEW_TOKENS": "48",
        "LLM_CAPTION_MAX_NEW_TOKENS": "40",
        "LLM_REPLY_MAX_NEW_TOKENS": "32",
        "LLM_INTERNAL_TOKEN": token,
        # Random weights write junk: the labelled fallback keeps the flows whole and says so ("template").
        "LLM_TEMPLATE_FALLBACK": "true",
        "LLM_GUARD_BACKEND": "transformers",
        "LLM_GUARD_MODEL_ID": str(models["qwen3_guard"]),
        "LLM_GUARD_OUTPUTS": "false",
        **extra,
    }


# The interface's guard mode on the tiny stack (see the module docstring).
INTERFACE_GUARD = {"INTERFACE_GUARD": "observe"}


def interface_env(urls: dict[str, str], token: str, **extra: str) -> dict[str, str]:
    """The interface in front of the whole tiny stack: ``urls`` by service (llm, selfie, profile, chat1to1,
    shorts, scenes); ``extra`` adds or overrides (keys, the text2img pool, queue knobs)."""
    return {
        "INTERFACE_INTERNAL_TOKEN": token,
        "INTERFACE_LLM_URLS": urls["llm"],
        "INTERFACE_SELFIE_FEATURE_WORKER_URLS": urls["selfie"],
        "INTERFACE_PROFILE_WORKER_URLS": urls["profile"],
        "INTERFACE_CHAT1TO1_WORKER_URLS": urls["chat1to1"],
        "INTERFACE_SHORTS_WORKER_URLS": urls["shorts"],
        "INTERFACE_SCENES_WORKER_URLS": urls["scenes"],
        **INTERFACE_GUARD,
        **extra,
    }


def selfie_env(models: dict[str, Path], token: str, scratch: Path, **extra: str) -> dict[str, str]:
    return {
        "SELFIE_VLM_MODEL": str(models["qwen_vl"]),
        # The pretrained detector this machine has offline, chosen on purpose: not a fallback, no warning.
        "SELFIE_DETECTOR_WEIGHTS": "nudenet",
        "SELFIE_MAX_NEW_TOKENS": "32",
        "SELFIE_VLM_MAX_PIXELS": str(224 * 224),
        "SELFIE_INTERNAL_TOKEN": token,
        "SELFIE_YOLO_CONFIG_DIR": str(scratch / "ultralytics"),
        **extra,
    }
