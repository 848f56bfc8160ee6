#!/usr/bin/env bash
# Start (or keep) a vLLM OpenAI-compatible server for the LLM pod, bound to loopback only.
# vLLM lives in its own venv: it pins torch/transformers/fastapi versions the rest of the stack cannot share.
# deploy_service.sh runs it once for the chat model and, with LLM_GUARD_BACKEND=vllm, once more for the guard
# (VLLM_NAME=vllm-guard, its own model, port and memory share).
#
#   VLLM_VENV (default ./.venv-vllm), VLLM_PORT (8001), VLLM_MODEL (default LLM_MODEL_ID, itself default
#   Qwen/Qwen2.5-7B-Instruct), VLLM_REVISION (default LLM_MODEL_REVISION; empty: the main branch),
#   VLLM_NAME (vllm: names the pid and log files), VLLM_MAX_MODEL_LEN,
#   VLLM_GPU_MEMORY_UTILIZATION, VLLM_MAX_NUM_SEQS (unset: chosen from the GPU's memory by
#   scripts/vllm_flags.py, which explains each number), VLLM_EXTRA_ARGS (last, so its flags win), RUN_DIR,
#   LOG_DIR
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/lib/services.sh
source "$repo/scripts/lib/services.sh"

venv=${VLLM_VENV:-$repo/.venv-vllm}
port=${VLLM_PORT:-8001}
model=${VLLM_MODEL:-${LLM_MODEL_ID:-Qwen/Qwen2.5-7B-Instruct}}
name=${VLLM_NAME:-vllm}
# Set but empty (the guard's server when its revision is unset) means no pin, not the chat model's.
revision=${VLLM_REVISION-${LLM_MODEL_REVISION:-}}
revision_flag=()
if [ -n "$revision" ]; then revision_flag=(--revision "$revision"); fi
run_dir=${RUN_DIR:-/tmp}
log_file="${LOG_DIR:-/tmp}/$name-$port.log"
pid_file="$run_dir/img_pod-$name.pid"

if curl -fsS --max-time 2 "http://127.0.0.1:$port/health" >/dev/null 2>&1; then
  echo "vLLM already serving on 127.0.0.1:$port"
  exit 0
fi
if [ ! -x "$venv/bin/vllm" ] && [ "${IMG_POD_SKIP_INSTALL:-0}" != 1 ]; then
  python_bin=${PYTHON:-python3}
  "$python_bin" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q -r "$repo/requirements.llm.txt"
fi
# Flags by the GPU found; env overrides win. The guard's own server (VLLM_NAME=vllm-guard) is the guest:
# only the chat model's server leaves room for it.
gpu_mib=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits 2>/dev/null | head -n 1 || true)
guard_flag=()
if [ "$name" != vllm-guard ] && [ "${LLM_GUARD_BACKEND:-vllm}" = vllm ]; then guard_flag=(--guard); fi
read -r auto_len auto_share auto_seqs < <(
  cd "$repo" && "${PYTHON:-python3}" -m scripts.vllm_flags --gpu-mem-mib "$gpu_mib" "${guard_flag[@]}"
)
max_model_len=${VLLM_MAX_MODEL_LEN:-$auto_len}
share=${VLLM_GPU_MEMORY_UTILIZATION:-$auto_share}
max_num_seqs=${VLLM_MAX_NUM_SEQS:-$auto_seqs}
echo "starting vLLM ($model) on 127.0.0.1:$port (GPU ${gpu_mib:-unknown} MiB: max-model-len $max_model_len," \
  "gpu-memory-utilization $share, max-num-seqs $max_num_seqs), log $log_file"
# Prefix caching: every request repeats the same system prompt, whose KV blocks are then computed once.
# shellcheck disable=SC2086
setsid nohup "$venv/bin/python" -m vllm.entrypoints.openai.api_server \
  --model "$model" "${revision_flag[@]}" --served-model-name "$model" --host 127.0.0.1 --port "$port" \
  --dtype bfloat16 --max-model-len "$max_model_len" --gpu-memory-utilization "$share" \
  --max-num-seqs "$max_num_seqs" --enable-prefix-caching ${VLLM_EXTRA_ARGS:-} \
  >>"$log_file" 2>&1 </dev/null &
echo $! >"$pid_file"
deadline=$((SECONDS + ${VLLM_HEALTH_TIMEOUT_S:-1200}))
until curl -fsS --max-time 2 "http://127.0.0.1:$port/health" >/dev/null 2>&1; do
  if ! kill -0 "$(cat "$pid_file")" 2>/dev/null; then
    echo "vLLM exited; last log lines:" >&2
    tail -n 30 "$log_file" >&2
    exit 1
  fi
  if [ "$SECONDS" -ge "$deadline" ]; then echo "vLLM not healthy in time" >&2; exit 1; fi
  sleep 2
done
echo "vLLM ready on 127.0.0.1:$port"
