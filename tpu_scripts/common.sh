# Shared by every tpu_scripts/ command: loads the configuration and wraps gcloud.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=tpu.env
source "${TPU_ENV:-$HERE/tpu.env}"

RUN_DIR="$MOUNT/$RUN_NAME"
LOG_FILE="$REMOTE_DIR/logs/$RUN_NAME.log"

log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

tpu() {  # gcloud compute tpus tpu-vm SUBCOMMAND ... with the project and zone filled in
  local sub="$1"; shift
  gcloud compute tpus tpu-vm "$sub" "$@" --project="$PROJECT" --zone="$ZONE"
}

on_all_workers() {  # run one shell command on every host of the slice, in parallel
  tpu ssh "$TPU_NAME" --worker=all --command="$1"
}

tpu_state() {  # READY, CREATING, PREEMPTED, TERMINATED, ... or NOT_FOUND
  tpu describe "$TPU_NAME" --format='value(state)' 2>/dev/null || echo NOT_FOUND
}
