# shellcheck shell=bash
# Environment of the local stack on the tiny models. Sourced by run_local.sh and run_service.sh after they
# set MODELS (tiny model folder), STATE (.local), PORT_OFFSET, and source lib/services.sh.

lp() { echo $(($(local_port "$1") + ${PORT_OFFSET:-0})); }
url() { echo "http://127.0.0.1:$(lp "$1")"; }

token=$(cat "$STATE/internal_token")
api_key=$(cat "$STATE/api_key")
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 YOLO_OFFLINE=1 YOLO_AUTOINSTALL=false
export YOLO_CONFIG_DIR="$STATE/ultralytics"
export IMAGE_INTERNAL_TOKEN=$token LLM_INTERNAL_TOKEN=$token SELFIE_INTERNAL_TOKEN=$token
export INTERFACE_INTERNAL_TOKEN=$token INTERFACE_API_KEYS=$api_key
# Jobs survive a restart of the local stack (services/interface/jobs/).
export INTERFACE_JOBS_SQLITE_PATH="$STATE/jobs.sqlite3"

# Image workers: the tiny Z-Image; 256x256 keeps CPU generations well under a second.
export IMAGE_MODEL_ID="$MODELS/z-image-turbo-tiny" IMAGE_DEFAULT_WIDTH=256 IMAGE_DEFAULT_HEIGHT=256
export IMAGE_MAX_SIDE=1024 IMAGE_DEVICES=cpu

# LLM: the tiny Qwen2 in process. Random weights write junk; the labelled template fallback
# ("source": "template") keeps the demo flowing and says so in every response that used it.
export LLM_BACKEND=transformers LLM_MODEL_ID="$MODELS/qwen2.5-tiny" LLM_MIN_NEW_TOKENS=8
export LLM_TEMPLATE_FALLBACK=true
# The guard: the tiny Qwen3Guard in process, asked about every image prompt. Random weights answer noise,
# so the interface only observes (counts and logs verdicts, refuses nothing) and the LLM does not guard its
# own captions and replies; the pods run INTERFACE_GUARD=enforce (DEPLOYMENT.md, "Content safety").
export LLM_GUARD_BACKEND=transformers LLM_GUARD_MODEL_ID="$MODELS/qwen3guard-gen-tiny" LLM_GUARD_OUTPUTS=false
export INTERFACE_GUARD=observe

# Selfie worker: nudenet's pretrained face detector through ultralytics, and the tiny Qwen2-VL.
export SELFIE_DETECTOR_BACKEND=yolo SELFIE_DETECTOR_WEIGHTS=nudenet SELFIE_VLM_MODEL="$MODELS/qwen2-vl-tiny"

INTERFACE_PROFILE_WORKER_URLS=$(url profile)
INTERFACE_SELFIE_FEATURE_WORKER_URLS=$(url selfie_feature)
INTERFACE_CHAT1TO1_WORKER_URLS=$(url chat1to1)
INTERFACE_SHORTS_WORKER_URLS=$(url shorts)
INTERFACE_SCENES_WORKER_URLS=$(url scenes)
INTERFACE_TEXT2IMG_WORKER_URLS="$(url chat1to1),$(url shorts),$(url scenes),$(url profile)"
INTERFACE_LLM_URLS=$(url llm)
export INTERFACE_PROFILE_WORKER_URLS INTERFACE_SELFIE_FEATURE_WORKER_URLS INTERFACE_CHAT1TO1_WORKER_URLS
export INTERFACE_SHORTS_WORKER_URLS INTERFACE_SCENES_WORKER_URLS INTERFACE_TEXT2IMG_WORKER_URLS INTERFACE_LLM_URLS
