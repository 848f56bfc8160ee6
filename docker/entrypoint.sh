#!/usr/bin/env bash
# Container entrypoint of both images: start one img_pod service in the foreground.
#
#   IMG_POD_SERVICE  interface | llm | selfie_feature | profile | chat1to1 | shorts | scenes
#   PORT             listen port (default: the service's pod port from scripts/lib/services.sh)
#   IMG_POD_FETCH_MODELS=1  before serving, as deploy_service.sh does: the preflight (does the role fit
#                    this GPU? skipped without nvidia-smi) and the model fetch into the cache volume
#                    (HF_HOME); both read the same settings env as the service, so nothing is repeated.
#
# The module and port come from scripts/lib/services.sh, the table every deploy script reads, so a
# Kubernetes pod and a RunPod pod of the same role listen on the same port. Weights are never baked into
# the image: they are on the model-cache volume (fetched by the pod's initContainer, scripts.fetch_models).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
# shellcheck source=scripts/lib/services.sh
source "$repo/scripts/lib/services.sh"

name=${IMG_POD_SERVICE:?set IMG_POD_SERVICE (interface llm selfie_feature profile chat1to1 shorts scenes)}
module=$(service_module "$name")
port=${PORT:-$(service_port "$name")}

if [ "${IMG_POD_FETCH_MODELS:-0}" = 1 ] && [ "$name" != interface ]; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    python -m scripts.preflight "$name"
  fi
  python -m scripts.fetch_models "$name"
fi

if [ "$name" = llm ]; then
  # The vllm backend talks to OpenAI-compatible servers beside the service on loopback, as on a RunPod
  # pod (deploy_service.sh). They start in the background: the service answers /livez at once and its
  # /healthz stays 503 until the model answers, so the pod is not Ready before vLLM is. tini (PID 1)
  # reaps them. The in-process backend (LLM_BACKEND=transformers, local-cpu overlay) needs none.
  if [ "${LLM_BACKEND:-vllm}" = vllm ]; then
    IMG_POD_SKIP_INSTALL=1 bash "$repo/scripts/start_vllm.sh" &
  fi
  if [ "${LLM_GUARD_BACKEND:-vllm}" = vllm ]; then
    VLLM_NAME=vllm-guard VLLM_MODEL=${LLM_GUARD_MODEL_ID:-Qwen/Qwen3Guard-Gen-0.6B} \
      VLLM_REVISION=${LLM_GUARD_MODEL_REVISION:-} VLLM_PORT=${GUARD_VLLM_PORT:-8008} \
      VLLM_MAX_MODEL_LEN=${GUARD_VLLM_MAX_MODEL_LEN:-8192} \
      VLLM_GPU_MEMORY_UTILIZATION=${GUARD_VLLM_GPU_MEMORY_UTILIZATION:-0.10} \
      VLLM_EXTRA_ARGS=${GUARD_VLLM_EXTRA_ARGS:-} IMG_POD_SKIP_INSTALL=1 bash "$repo/scripts/start_vllm.sh" &
  fi
fi

# shared/serve.py: uvicorn with uvloop, httptools and the edge bounds, as in every other launcher. exec:
# SIGTERM from the kubelet reaches the service itself, which drains (shared/drain.py).
exec python -m shared.serve "$module" --host 0.0.0.0 --port "$port"
