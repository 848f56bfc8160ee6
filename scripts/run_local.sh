#!/usr/bin/env bash
# The whole stack on one machine, on the tiny models: all seven services on loopback.
#
#   bash scripts/run_local.sh          serve until Ctrl-C (interface on http://127.0.0.1:8000)
#   bash scripts/run_local.sh --demo   one profile creation from a real photo and one 1:1 chat image,
#                                      saved under testing/selfies_output/, then stop and exit 0
#   bash scripts/run_local.sh --replicas 2   two interface replicas (8000, 8010) sharing jobs and queues
#                                      through a redis-server on loopback (installed when missing)
#
# IMG_POD_PORT_OFFSET shifts every port (e.g. 100 -> interface on 8100). Logs: .local/logs/.
set -euo pipefail
demo=0
replicas=1
while [ $# -gt 0 ]; do
  case "$1" in
    --demo) demo=1 ;;
    --replicas) replicas=${2:?--replicas takes a number}; shift ;;
    *) echo "usage: $0 [--demo] [--replicas N]" >&2; exit 2 ;;
  esac
  shift
done
case "$replicas" in [1-9]) ;; *) echo "--replicas: 1 to 9" >&2; exit 2 ;; esac
# shellcheck source=scripts/prepare_local.sh
source "$(dirname "$0")/prepare_local.sh"

declare -A pids=()
cleanup() {
  trap - EXIT INT TERM
  for svc in "${!pids[@]}"; do kill -TERM "${pids[$svc]}" 2>/dev/null || true; done
  for svc in "${!pids[@]}"; do wait "${pids[$svc]}" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'echo; echo "stopping"; exit 130' INT TERM

if [ "$replicas" -gt 1 ]; then
  # Replicas share jobs, queues and their bounds through Redis (DEPLOYMENT.md, "Jobs on Redis").
  bash "$REPO/scripts/install_redis.sh"
  redis_port=$((6390 + PORT_OFFSET))
  redis-server --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no \
    >"$STATE/logs/redis-$redis_port.log" 2>&1 &
  pids[redis]=$!
  export INTERFACE_JOBS_REDIS_URL="redis://127.0.0.1:$redis_port/0"
  until redis-cli -p "$redis_port" ping >/dev/null 2>&1; do sleep 0.1; done
  for i in $(seq 2 "$replicas"); do
    port=$(($(lp interface) + 10 * (i - 1)))
    "$PY" -m shared.serve "$(service_module interface)" --host 127.0.0.1 --port "$port" \
      >"$STATE/logs/interface-$port.log" 2>&1 &
    pids[interface$i]=$!
    echo "  interface replica $i on http://127.0.0.1:$port"
  done
fi

for svc in "${IMG_POD_SERVICES[@]}"; do
  port=$(lp "$svc")
  if curl -fsS --max-time 1 "http://127.0.0.1:$port/healthz" >/dev/null 2>&1; then
    echo "port $port is already serving something; stop it or set IMG_POD_PORT_OFFSET" >&2
    exit 1
  fi
  "$PY" -m shared.serve "$(service_module "$svc")" --host 127.0.0.1 --port "$port" \
    >"$STATE/logs/$svc-$port.log" 2>&1 &
  pids[$svc]=$!
done

echo "waiting for the services (logs in $STATE/logs/)"
for svc in "${IMG_POD_SERVICES[@]}"; do
  if ! wait_healthy "$(url "$svc")" "${HEALTH_TIMEOUT_S:-300}" "${pids[$svc]}" >/dev/null; then
    echo "$svc failed to start; last log lines:" >&2
    tail -n 20 "$STATE/logs/$svc-$(lp "$svc").log" >&2
    exit 1
  fi
  printf '  %-15s %s  ok\n' "$svc" "$(url "$svc")"
done

# The interface polls its pools every couple of seconds: wait until it sees every worker.
deadline=$((SECONDS + 60))
until curl -fsS --max-time 2 "$(url interface)/healthz" | grep -q '"status":"ok"'; do
  if [ "$SECONDS" -ge "$deadline" ]; then echo "interface does not see all workers healthy" >&2; exit 1; fi
  sleep 0.5
done

guard=$(curl -fsS --max-time 2 "$(url interface)/healthz" | "$PY" -c 'import json, sys; print(json.load(sys.stdin)["guard"])')
echo "content guard: $guard (INTERFACE_GUARD; the local stack observes, the pods enforce)"

if [ "$demo" = 1 ]; then
  cfg="$STATE/config.json"
  "$PY" testing/generate_test_selfies.py --out "$STATE/selfies" --only astronaut >/dev/null
  "$PY" testing/profile_create_and_save.py --config "$cfg" --selfies "$STATE/selfies"
  "$PY" testing/chat_imagegen.py --config "$cfg" --kinds 1to1 \
    --persona "$REPO/testing/selfies_output/astronaut_features.json"
  echo "demo done: outputs in $REPO/testing/selfies_output/"
  exit 0
fi

[ "$replicas" -gt 1 ] && echo "replicas: $replicas interfaces (every 10th port from $(lp interface)) on $INTERFACE_JOBS_REDIS_URL"
echo "stack ready: interface $(url interface), API key in $STATE/api_key, client config $STATE/config.json"
echo "Ctrl-C stops everything"
while true; do
  for svc in "${!pids[@]}"; do
    if ! kill -0 "${pids[$svc]}" 2>/dev/null; then
      echo "$svc exited; stopping the stack (log: $STATE/logs/)" >&2
      exit 1
    fi
  done
  sleep 1
done
