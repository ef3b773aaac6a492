#!/usr/bin/env bash
# Runs ON a TPU worker, from the checkout of the job's commit (setup.sh and launch.sh call it over ssh):
#   worker.sh setup      Python 3.11 + the exact versions of tpu_scripts/tpu.lock in .venv; staged data
#   worker.sh start      stop a stale trainer (pid file), wait until the TPU is free, clear a stale libtpu
#                        lockfile, start the job in the background, copy its log to the bucket
#   worker.sh stop       stop the trainer: SIGTERM to its process group, SIGKILL after STOP_SECONDS
#   worker.sh status     exit 0 if the trainer runs (printing its pid and last log line), 3 if not
# Configuration comes from the environment launch.sh/setup.sh export (JOB, JOB_URL, PRESET, OVERRIDES,
# COMMIT, ...). JAX_PLATFORMS (default tpu) and GPTJAX_COORDINATOR/_NUM_PROCESSES/_PROCESS_ID (default: JAX
# discovers the slice's workers, GPTJAX_DISTRIBUTED=auto) may be preset, which is how tests start workers
# on CPU exactly as a slice does.
set -euo pipefail
CHECKOUT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${GPTJAX_STATE_DIR:-$HOME/.gptjax}"
PIDFILE="$STATE/trainer.pid"
LOG="$STATE/trainer.log"
: "${WORKER_ID:=0}" "${STOP_SECONDS:=120}" "${TPU_FREE_SECONDS:=300}" "${LOG_COPY_SECONDS:=60}"
: "${DATA_DIR:=$HOME/gptjax-data}"
# The files a process driving the TPU holds open: v4/v5p chips, v5e/v6e chips, and libtpu's lockfile.
TPU_DEVICE_GLOBS="${TPU_DEVICE_GLOBS:-/dev/accel* /dev/vfio/[0-9]*}"
LOCKFILE="${TMPDIR:-/tmp}/libtpu_lockfile"

say() { printf '%s\n' "$*"; }  # on_workers prefixes "worker I: "

alive() {  # process $1 runs; a zombie does not (kill -0 succeeds on one, and init may never reap it)
  grep -q '^State:[[:space:]]*[^Z]' "/proc/$1/status" 2>/dev/null
}

trainer_pid() {  # the running trainer's pid, or nothing
  local pid
  [[ -s "$PIDFILE" ]] || return 0
  pid="$(cat "$PIDFILE")"
  if alive "$pid"; then echo "$pid"; fi
}

holders() {  # pids of the processes that hold any of the files "$@" open (no lsof/fuser on every image)
  local fd target file
  for fd in /proc/[0-9]*/fd/*; do
    target="$(readlink "$fd" 2>/dev/null)" || continue
    for file in "$@"; do
      if [[ "$target" == "$file" ]]; then fd="${fd#/proc/}"; echo "${fd%%/*}"; fi
    done
  done | sort -u
}

stop() {
  local pid waited=0
  pid="$(trainer_pid)"
  [[ -n "$pid" ]] || { rm -f "$PIDFILE"; return 0; }
  say "stopping trainer $pid"
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"
  while alive "$pid" && (( waited < STOP_SECONDS )); do sleep 1; waited=$((waited + 1)); done
  if alive "$pid"; then
    say "trainer $pid ignored SIGTERM for ${STOP_SECONDS}s: SIGKILL"
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid"
    while alive "$pid"; do sleep 0.2; done
  fi
  rm -f "$PIDFILE"
}

wait_for_tpu() {
  local devices=() busy waited=0
  shopt -s nullglob
  # shellcheck disable=SC2206 # the globs are meant to expand
  devices=($TPU_DEVICE_GLOBS)
  shopt -u nullglob
  (( ${#devices[@]} )) || return 0
  while busy="$(holders "${devices[@]}")" && [[ -n "$busy" ]]; do
    (( waited < TPU_FREE_SECONDS )) || { say "the TPU is still held by pid(s) $(echo "$busy" | xargs)"; exit 1; }
    (( waited % 10 )) || say "waiting for pid(s) $(echo "$busy" | xargs) to release the TPU"
    sleep 1; waited=$((waited + 1))
  done
}

clear_stale_lockfile() {
  local busy
  [[ -e "$LOCKFILE" ]] || return 0
  busy="$(holders "$LOCKFILE")"
  [[ -z "$busy" ]] || { say "libtpu's lockfile $LOCKFILE is held by pid(s) $(echo "$busy" | xargs)"; exit 1; }
  say "removing stale $LOCKFILE"
  rm -f "$LOCKFILE"
}

setup() {
  cd "$CHECKOUT"
  export PATH="$HOME/.local/bin:$PATH"
  command -v uv >/dev/null || python3 -m pip install --user --quiet "uv==0.13.8"
  if ! { [[ -x .venv/bin/python ]] && .venv/bin/python -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; }; then
    uv venv --quiet --python 3.11 .venv  # uv fetches Python 3.11 itself: the TPU image's python3 is 3.10
  fi
  uv pip sync --quiet --python .venv/bin/python tpu_scripts/tpu.lock
  uv pip install --quiet --python .venv/bin/python --no-deps -e .
  mkdir -p "$DATA_DIR"
  gcloud storage rsync --recursive --quiet "$DATA_URL" "$DATA_DIR"
  say "set up at $(git rev-parse HEAD) with $(.venv/bin/python --version)"
}

start() {
  local command words
  stop
  wait_for_tpu
  clear_stale_lockfile
  cd "$CHECKOUT"
  export JAX_PLATFORMS="${JAX_PLATFORMS:-tpu}" LIBTPU_INIT_ARGS GPTJAX_DATA_DIR="$DATA_DIR"
  [[ -n "${GPTJAX_COORDINATOR:-}" ]] || export GPTJAX_DISTRIBUTED=auto
  read -r -a words <<< "$OVERRIDES"  # key=value overrides
  case "$JOB" in
    train) command=(.venv/bin/gptjax train --preset "$PRESET" --run-dir "$JOB_URL" "code_commit=$COMMIT" "${words[@]}") ;;
    sweep) command=(.venv/bin/gptjax sweep "$SWEEP_FILE" --out "$JOB_URL" --holder "$TPU_NAME" --no-progress) ;;
    *) say "JOB='$JOB' is neither train nor sweep"; exit 2 ;;
  esac
  mkdir -p "$STATE"
  rm -f "$PIDFILE"
  # A session of its own (so `stop` signals the trainer and its children, and not this shell); the pid is
  # written by the process that then becomes the trainer.
  # shellcheck disable=SC2016 # $$ and $@ belong to the inner shell
  setsid bash -c 'echo $$ > "$0"; exec "$@"' "$PIDFILE" "${command[@]}" > "$LOG" 2>&1 < /dev/null &
  while [[ ! -s "$PIDFILE" ]]; do sleep 0.1; done
  setsid "$CHECKOUT/tpu_scripts/worker.sh" copy-logs "$(cat "$PIDFILE")" > /dev/null 2>&1 < /dev/null &
  sleep 1
  [[ -n "$(trainer_pid)" ]] || { say "the trainer exited at once:"; tail -n 20 "$LOG"; exit 1; }
  say "started ${command[*]:0:2} as pid $(cat "$PIDFILE") (log $LOG)"
}

copy_logs() {  # copy the log to the bucket every LOG_COPY_SECONDS while trainer $1 runs, and once after
  local pid="$1" target="$LOGS_URL/$TPU_NAME-worker-$WORKER_ID.log"
  local waited
  while alive "$pid"; do
    gcloud storage cp --quiet "$LOG" "$target" || say "could not copy the log to $target (will retry)"
    waited=0  # wake each second, so the final copy follows the trainer's exit at once
    while alive "$pid" && (( waited < LOG_COPY_SECONDS )); do sleep 1; waited=$((waited + 1)); done
  done
  gcloud storage cp --quiet "$LOG" "$target"
}

status() {
  local pid
  pid="$(trainer_pid)"
  if [[ -n "$pid" ]]; then
    say "running pid $pid: $(tail -n 1 "$LOG" 2>/dev/null | tr '\r' '\n' | tail -n 1 | cut -c1-160)"
  else
    say "not running; log ends: $(tail -n 1 "$LOG" 2>/dev/null | cut -c1-160)"
    return 3
  fi
}

case "${1:-}" in
  setup) setup ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  copy-logs) copy_logs "$2" ;;
  *) echo "usage: worker.sh setup|start|stop|status" >&2; exit 2 ;;
esac
