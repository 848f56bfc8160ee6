# shellcheck shell=bash
# The one table of services: module, port, requirement files. Sourced by deploy_service.sh, run_local.sh
# and run_service.sh, so a port or module is written down once.

# shellcheck disable=SC2034 # used by the scripts that source this file
IMG_POD_SERVICES=(interface llm selfie_feature profile chat1to1 shorts scenes)

service_module() {
  case "$1" in
    interface) echo "services.interface.main" ;;
    llm) echo "services.llm_service.main" ;;
    selfie_feature) echo "services.selfie_feature_worker.main" ;;
    profile) echo "services.profile_worker.main" ;;
    chat1to1) echo "services.chat1to1_worker.main" ;;
    shorts) echo "services.shorts_worker.main" ;;
    scenes) echo "services.scenes_worker.main" ;;
    *) echo "unknown service: $1" >&2; return 1 ;;
  esac
}

# Pod ports (DEPLOYMENT.md). On one machine the profile worker moves to 8004: see local_port.
service_port() {
  case "$1" in
    interface) echo 8000 ;;
    llm) echo 8002 ;;
    selfie_feature | profile) echo 8003 ;;
    chat1to1) echo 8005 ;;
    shorts) echo 8006 ;;
    scenes) echo 8007 ;;
    *) echo "unknown service: $1" >&2; return 1 ;;
  esac
}

local_port() {
  if [ "$1" = profile ]; then echo 8004; else service_port "$1"; fi
}

# Requirement files, in install order. ultralytics comes separately with --no-deps (see the file).
service_requirements() {
  case "$1" in
    interface) echo "requirements.interface.txt" ;;
    selfie_feature) echo "requirements.gpu.txt requirements.selfie_feature.txt" ;;
    llm | profile | chat1to1 | shorts | scenes) echo "requirements.gpu.txt" ;;
    *) echo "unknown service: $1" >&2; return 1 ;;
  esac
}

# Wait until URL/healthz answers 200; print the last body. Returns 1 on timeout or if PID dies.
wait_healthy() {
  local url=$1 timeout_s=$2 pid=${3:-} body="" deadline=$((SECONDS + $2))
  while [ "$SECONDS" -lt "$deadline" ]; do
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
      echo "process $pid exited before $url became healthy" >&2
      return 1
    fi
    if body=$(curl -fsS --max-time 2 "$url/healthz" 2>/dev/null); then
      echo "$body"
      return 0
    fi
    sleep 1
  done
  echo "timed out after ${timeout_s}s waiting for $url/healthz" >&2
  curl -sS --max-time 2 "$url/healthz" >&2 2>/dev/null || true
  return 1
}
