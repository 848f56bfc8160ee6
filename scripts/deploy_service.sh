#!/usr/bin/env bash
# Deploy one img_pod service on this pod: install, fetch models, restart the server, wait for /healthz.
#
#   bash scripts/deploy_service.sh NAME      (NAME: interface llm selfie_feature profile chat1to1 shorts scenes)
#
# The top-level deploy_<name>.sh scripts call this. Safe to run twice: the previous instance is stopped by
# its pid file (never by a name match) and one healthy instance is left.
#
# Environment (all optional):
#   IMG_POD_ENV_FILE   env file to read first (default: ./deploy.env, then /workspace/img_pod.env)
#   PYTHON             interpreter used to make the venv (default python3.11, else python3)
#   IMG_POD_VENV       virtualenv to install into and run from (default: ./.venv)
#   IMG_POD_SKIP_INSTALL=1  skip pip (the venv must already have everything)
#   IMG_POD_SKIP_FETCH=1    skip model download
#   IMG_POD_SKIP_PREFLIGHT=1  skip the check that the role fits the GPU (scripts/preflight.py)
#   IMG_POD_GPU_MEM_GB GPU memory (GiB) the preflight sizes against (default: nvidia-smi's; neither: skipped)
#   PORT               port to listen on (default: the service's pod port, DEPLOYMENT.md)
#   HOST               bind address (default 0.0.0.0: pods are reached through their proxy)
#   RUN_DIR            where pid files go (default /tmp)
#   LOG_DIR            where logs go (default /tmp): LOG_DIR/<service>-<port>.log
#   HEALTH_TIMEOUT_S   how long to wait for /healthz (default 900: a 7B model loads in minutes)
#   STOP_TIMEOUT_S     how long the previous instance may drain before it is killed (default 340)
set -euo pipefail

name=${1:?usage: deploy_service.sh NAME}
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
# shellcheck source=scripts/lib/services.sh
source "$repo/scripts/lib/services.sh"

env_file=${IMG_POD_ENV_FILE:-}
if [ -z "$env_file" ]; then
  for candidate in "$repo/deploy.env" /workspace/img_pod.env; do
    if [ -f "$candidate" ]; then env_file=$candidate; break; fi
  done
fi
if [ -n "$env_file" ]; then
  if [ ! -f "$env_file" ]; then echo "env file $env_file not found" >&2; exit 1; fi
  echo "reading $env_file"
  set -a
  # shellcheck disable=SC1090
  source "$env_file"
  set +a
fi

module=$(service_module "$name")
port=${PORT:-$(service_port "$name")}
host=${HOST:-0.0.0.0}
run_dir=${RUN_DIR:-/tmp}
log_dir=${LOG_DIR:-/tmp}
venv=${IMG_POD_VENV:-$repo/.venv}
pid_file="$run_dir/img_pod-$name.pid"
log_file="$log_dir/$name-$port.log"
mkdir -p "$run_dir" "$log_dir"

# --- install -----------------------------------------------------------------------------------------
if [ "${IMG_POD_SKIP_INSTALL:-0}" != 1 ]; then
  python_bin=${PYTHON:-python3.11}
  command -v "$python_bin" >/dev/null 2>&1 || python_bin=python3
  if ! "$python_bin" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "img_pod needs Python >= 3.11; $python_bin is $("$python_bin" --version 2>&1). Set PYTHON=..." >&2
    exit 1
  fi
  [ -x "$venv/bin/python" ] || "$python_bin" -m venv "$venv"
  read -r -a req_files <<<"$(service_requirements "$name")"
  stamp="$venv/.img_pod-$name.sha256"
  want=$(cat "${req_files[@]}" requirements.nodeps.txt | sha256sum | cut -d' ' -f1)
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "installing ${req_files[*]} into $venv"
    "$venv/bin/python" -m pip install -q --upgrade pip
    for f in "${req_files[@]}"; do "$venv/bin/python" -m pip install -q -r "$f"; done
    if [ "$name" = selfie_feature ]; then
      "$venv/bin/python" -m pip install -q --no-deps -r requirements.nodeps.txt
    fi
    echo "$want" >"$stamp"
  fi
fi
py="$venv/bin/python"
[ -x "$py" ] || py=${PYTHON:-python3}

# --- preflight: does the role fit the GPU? Before any weight is downloaded --------------------------
if [ "$name" != interface ] && [ "${IMG_POD_SKIP_PREFLIGHT:-0}" != 1 ]; then
  gpu_args=()
  [ -n "${IMG_POD_GPU_MEM_GB:-}" ] && gpu_args=(--gpu-mem-gb "$IMG_POD_GPU_MEM_GB")
  if [ ${#gpu_args[@]} -eq 0 ] && ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "preflight skipped: no nvidia-smi here and no IMG_POD_GPU_MEM_GB to size $name against"
  elif ! "$py" -m scripts.preflight "$name" "${gpu_args[@]}"; then
    echo "stopping: $name does not fit this GPU as configured (the preflight above says which setting it" \
      "needs, if any); nothing was downloaded. IMG_POD_SKIP_PREFLIGHT=1 deploys anyway." >&2
    exit 1
  fi
fi

# --- models ------------------------------------------------------------------------------------------
if [ "${IMG_POD_SKIP_FETCH:-0}" != 1 ]; then
  "$py" -m scripts.fetch_models "$name"
fi
if [ "$name" = llm ]; then
  guard_on_vllm=0
  [ "${LLM_GUARD_BACKEND:-vllm}" = vllm ] && guard_on_vllm=1
  if [ "${LLM_BACKEND:-vllm}" = vllm ]; then
    # With the guard on the same GPU, the chat model leaves it room (DEPLOYMENT.md, "Content safety").
    default_share=0.90
    [ "$guard_on_vllm" = 1 ] && default_share=0.80
    VLLM_GPU_MEMORY_UTILIZATION=${VLLM_GPU_MEMORY_UTILIZATION:-$default_share} bash "$repo/scripts/start_vllm.sh"
  fi
  if [ "$guard_on_vllm" = 1 ]; then
    # The guard's port must match LLM_GUARD_VLLM_BASE_URL (default http://127.0.0.1:8008).
    VLLM_NAME=vllm-guard VLLM_MODEL=${LLM_GUARD_MODEL_ID:-Qwen/Qwen3Guard-Gen-0.6B} \
      VLLM_REVISION=${LLM_GUARD_MODEL_REVISION:-} \
      VLLM_PORT=${GUARD_VLLM_PORT:-8008} VLLM_MAX_MODEL_LEN=${GUARD_VLLM_MAX_MODEL_LEN:-8192} \
      VLLM_GPU_MEMORY_UTILIZATION=${GUARD_VLLM_GPU_MEMORY_UTILIZATION:-0.10} \
      VLLM_EXTRA_ARGS=${GUARD_VLLM_EXTRA_ARGS:-} bash "$repo/scripts/start_vllm.sh"
  fi
fi

# --- stop the previous instance ----------------------------------------------------------------------
if [ -f "$pid_file" ]; then
  old=$(cat "$pid_file")
  # Only a pid that is still this service's server: a stale file must not kill an unrelated process.
  if [ -n "$old" ] && kill -0 "$old" 2>/dev/null && tr '\0' ' ' <"/proc/$old/cmdline" 2>/dev/null | grep -q "$module"; then
    # SIGTERM drains: it exits as soon as the requests it accepted are done (at once when idle), at the
    # latest after its drain timeout; only then is the port free for the new instance.
    stop_timeout=${STOP_TIMEOUT_S:-340}
    echo "stopping previous $name (pid $old; draining, up to ${stop_timeout}s)"
    kill -TERM "$old"
    for _ in $(seq 1 "$stop_timeout"); do kill -0 "$old" 2>/dev/null || break; sleep 1; done
    kill -0 "$old" 2>/dev/null && kill -KILL "$old"
  fi
  rm -f "$pid_file"
fi

# --- start -------------------------------------------------------------------------------------------
echo "starting $name on $host:$port, log $log_file"
export HF_HUB_DISABLE_TELEMETRY=1 PYTHONUNBUFFERED=1
# shared/serve.py: uvicorn with uvloop, httptools and the connection bounds (EDGE_*, shared/edge_limits.py).
setsid nohup "$py" -m shared.serve "$module" --host "$host" --port "$port" >>"$log_file" 2>&1 </dev/null &
pid=$!
echo "$pid" >"$pid_file"

if health=$(wait_healthy "http://127.0.0.1:$port" "${HEALTH_TIMEOUT_S:-900}" "$pid"); then
  echo "$name is healthy at http://$host:$port (pid $pid): $health"
else
  echo "$name did not become healthy; last log lines:" >&2
  tail -n 30 "$log_file" >&2 || true
  exit 1
fi
