# shellcheck shell=bash disable=SC2034 # sourced: its variables are for the scripts that source it
# Shared by every tpu_scripts/ command: the configuration, its validation (before any gcloud call), gcloud
# with retries, per-worker remote commands, and --dry-run. Sourced, not run.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(dirname "$HERE")"
# shellcheck source=tpu.env
source "${TPU_ENV:-$HERE/tpu.env}"

DRY_RUN="${DRY_RUN:-false}"
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=true ;;
    -h|--help) sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;;
    *) echo "$(basename "$0"): unknown argument '$arg' (only --dry-run)" >&2; exit 2 ;;
  esac
done

log() { printf '[%s %s] %s\n' "$(date -u +%H:%M:%S)" "${TPU_NAME:-}" "$*" >&2; }
die() { printf '%s: error: %s\n' "$(basename "$0")" "$*" >&2; exit 2; }

# -- configuration, checked before anything touches the cloud ----------------------------------------------
for name in PROJECT ZONE BUCKET TPU_NAME ACCELERATOR_TYPE; do
  [[ -n "${!name:-}" ]] || die "$name is not set (set it in ${TPU_ENV:-$HERE/tpu.env} or the environment)"
done
[[ "$BUCKET" =~ ^[a-z0-9][-_.a-z0-9]{1,220}[a-z0-9]$ ]] || die "BUCKET='$BUCKET' is not a bucket name (no gs://)"
case "$CAPACITY" in spot|best-effort|reserved) ;; *) die "CAPACITY='$CAPACITY': use spot, best-effort or reserved" ;; esac
case "$JOB" in train|sweep) ;; *) die "JOB='$JOB': use train or sweep" ;; esac
[[ -x "$GPTJAX_PYTHON" ]] || die "GPTJAX_PYTHON='$GPTJAX_PYTHON' is not an executable (install gptjax: README, Set-up)"
# The slice's facts come from gptjax.tpu, the one table of slice types: TPU_ACCELERATOR_TYPE, TPU_HOSTS, ...
# (exported, so the scripts resume_loop.sh runs do not ask again).
if [[ "${TPU_FACTS_FOR:-}" != "$ACCELERATOR_TYPE" ]]; then
  facts="$("$GPTJAX_PYTHON" -m gptjax.tpu "$ACCELERATOR_TYPE" 2>&1)" || die "ACCELERATOR_TYPE='$ACCELERATOR_TYPE': ${facts#error: }"
  eval "$facts"
  export TPU_SLICE TPU_ACCELERATOR_TYPE TPU_GENERATION TPU_CHIPS TPU_HOSTS TPU_TOPOLOGY TPU_RUNTIME_VERSION \
    TPU_LIBTPU_INIT_ARGS TPU_FACTS_FOR="$ACCELERATOR_TYPE"
fi
: "${RUNTIME_VERSION:=$TPU_RUNTIME_VERSION}"
: "${LIBTPU_INIT_ARGS:=$TPU_LIBTPU_INIT_ARGS}"
QUEUED_RESOURCE="$TPU_NAME"

# Where the job lives in the bucket, and the files gptjax writes there (names from gptjax/rundir.py).
DATA_URL="gs://$BUCKET/data"
if [[ "$JOB" == train ]]; then
  JOB_NAME="$RUN_NAME"
  JOB_URL="gs://$BUCKET/runs/$RUN_NAME"
  HEARTBEAT_URL="$JOB_URL/heartbeat.json"
else
  JOB_NAME="$SWEEP_NAME"
  JOB_URL="gs://$BUCKET/sweeps/$SWEEP_NAME"
  HEARTBEAT_URL="$JOB_URL/heartbeats/$TPU_NAME.json"
fi
DONE_URL="$JOB_URL/DONE"
LOGS_URL="$JOB_URL/logs"

# -- gcloud ---------------------------------------------------------------------------------------------------
run_gcloud() {  # gcloud ARGS...; with --dry-run only printed, shell-quoted, on stdout
  if [[ "$DRY_RUN" == true ]]; then
    printf 'gcloud'; printf ' %q' "$@"; printf '\n'
    return 0
  fi
  gcloud "$@"
}

# gcloud ARGS..., retried with exponential backoff on errors that may pass (network, 5xx, quota); a resource
# that does not exist is no such error: it returns 44 at once. For `tpu-vm ssh` only ssh's own failure (255)
# is retried: the remote command's status is its own and is returned as it is. stdout is the command's.
NOT_FOUND=44
SSH_FAILED=255
gcloud_retry() {
  local attempt=0 delay="$BACKOFF_SECONDS" err status ssh=false
  [[ " $* " != *" ssh "* ]] || ssh=true
  err="$(mktemp)"
  while true; do
    status=0
    if [[ "$ssh" == true ]]; then run_gcloud "$@" || status=$?; else run_gcloud "$@" 2>"$err" || status=$?; fi
    if (( status == 0 )) || { [[ "$ssh" == true ]] && (( status != SSH_FAILED )); }; then
      rm -f "$err"; return "$status"
    fi
    if grep -qiE 'NOT_FOUND|was not found|matched no objects' "$err"; then rm -f "$err"; return "$NOT_FOUND"; fi
    attempt=$((attempt + 1))
    if (( attempt > GCLOUD_RETRIES )); then
      log "gcloud $1 $2 failed $attempt times: $(tail -n 1 "$err")"; rm -f "$err"; return "$status"
    fi
    log "gcloud $1 $2 failed (attempt $attempt of $((GCLOUD_RETRIES + 1))), retrying in ${delay}s: $(tail -n 1 "$err")"
    sleep "$delay"
    delay=$(( delay * 2 ))
  done
}

where=(--project="$PROJECT" --zone="$ZONE")

queued_resource_state() {  # ACCEPTED, PROVISIONING, WAITING_FOR_RESOURCES, ACTIVE, SUSPENDED, FAILED, ... or NOT_FOUND
  local status=0 state
  state="$(gcloud_retry compute tpus queued-resources describe "$QUEUED_RESOURCE" "${where[@]}" \
    --format='value(state.state)')" || status=$?
  if (( status == NOT_FOUND )); then echo NOT_FOUND; elif (( status )); then return "$status"; else echo "$state"; fi
}

node_state() {  # READY, CREATING, PREEMPTED, ... or NOT_FOUND
  local status=0 state
  state="$(gcloud_retry compute tpus tpu-vm describe "$TPU_NAME" "${where[@]}" --format='value(state)')" || status=$?
  if (( status == NOT_FOUND )); then echo NOT_FOUND; elif (( status )); then return "$status"; else echo "$state"; fi
}

# -- the code every worker runs: one commit, resolved once per job -----------------------------------------
resolve_commit() {  # prints the commit; the first call per job resolves REPO_REF and records it in STATE_DIR
  local file="$STATE_DIR/$JOB_NAME.commit" sha
  if [[ -n "${COMMIT:-}" ]]; then
    [[ "$COMMIT" =~ ^[0-9a-f]{40}$ ]] || die "COMMIT='$COMMIT' is not a full 40-hex git commit"
    echo "$COMMIT"; return
  fi
  if [[ -s "$file" ]]; then cat "$file"; return; fi
  if [[ "$REPO_REF" =~ ^[0-9a-f]{40}$ ]]; then
    sha="$REPO_REF"
  else
    sha="$(git ls-remote "$REPO_URL" "$REPO_REF" | awk 'NR == 1 {print $1}')"
    [[ -n "$sha" ]] || die "REPO_REF='$REPO_REF' names no branch or tag of $REPO_URL"
  fi
  mkdir -p "$STATE_DIR"
  echo "$sha" > "$file"
  log "code: $REPO_URL at $sha (recorded in $file; delete it to move the job to newer code)"
  echo "$sha"
}

# -- commands on the workers -------------------------------------------------------------------------------
# on_workers COMMAND: run COMMAND (a shell string; WORKER_ID is set to the worker's index) on every worker at
# once, one ssh each (with --dry-run: printed in worker order); fails naming every worker whose command
# failed. Output is prefixed "worker I: ".
on_worker() {
  local i="$1" command="$2"
  set -o pipefail
  gcloud_retry compute tpus tpu-vm ssh "$TPU_NAME" "${where[@]}" --worker="$i" \
    --command="export WORKER_ID=$i; $command" 2>&1 | sed "s/^/worker $i: /"
}

on_workers() {
  local command="$1" i status failed=() pids=()
  if [[ "$DRY_RUN" == true ]]; then
    for (( i = 0; i < TPU_HOSTS; i++ )); do on_worker "$i" "$command"; done
    return 0
  fi
  for (( i = 0; i < TPU_HOSTS; i++ )); do
    on_worker "$i" "$command" &
    pids+=("$!")
  done
  for (( i = 0; i < TPU_HOSTS; i++ )); do
    status=0
    wait "${pids[$i]}" || status=$?
    (( status == 0 )) || failed+=("$i")
  done
  (( ${#failed[@]} == 0 )) || { log "failed on worker(s) ${failed[*]}"; return 1; }
}

# `export NAME=value ...;` (shell-quoted) carrying variables "$@" of this configuration to a remote command.
remote_env() {
  local name out="export"
  for name in "$@"; do out+=" $name=$(printf '%q' "${!name}")"; done
  printf '%s;' "$out"
}

# -- what the job wrote into the bucket ------------------------------------------------------------------------
job_done() {  # 0 if the job wrote DONE, 1 if not; another status if the bucket could not be read
  local status=0
  gcloud_retry storage ls "$DONE_URL" > /dev/null || status=$?
  if (( status == NOT_FOUND )); then return 1; fi
  return "$status"
}

heartbeat_time() {  # the unix time of the trainer's last heartbeat, 0 if there is none yet
  local status=0 beat
  beat="$(gcloud_retry storage cat "$HEARTBEAT_URL")" || status=$?
  if (( status == NOT_FOUND )); then echo 0; return 0; fi
  (( status == 0 )) || return "$status"
  "$GPTJAX_PYTHON" -c 'import json, sys; print(int(json.loads(sys.argv[1])["time"]))' "$beat"
}

worker_status() {  # worker.sh status on every worker; fails if the trainer is down on any
  # shellcheck disable=SC2016 # expanded on the worker
  on_workers "$(remote_env REMOTE_DIR) cd \"\$HOME/\$REMOTE_DIR\" && tpu_scripts/worker.sh status"
}
