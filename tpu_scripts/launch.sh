#!/usr/bin/env bash
# Start the job on every worker at once (`tpu_scripts/worker.sh start`: a stale trainer is stopped through
# its pid file, the TPU waited for, a stale libtpu lockfile removed, then JAX_PLATFORMS=tpu and JAX's own
# discovery of the slice's workers). A run or sweep directory that exists is resumed.
# --dry-run prints the gcloud commands instead.
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"
COMMIT="$(resolve_commit)"
log "launching $JOB $JOB_NAME at $COMMIT on the $TPU_HOSTS worker(s) of $TPU_NAME -> $JOB_URL"
# shellcheck disable=SC2016 # expanded on the worker
on_workers "$(remote_env JOB JOB_URL LOGS_URL PRESET OVERRIDES SWEEP_FILE TPU_NAME LIBTPU_INIT_ARGS COMMIT REMOTE_DIR) cd \"\$HOME/\$REMOTE_DIR\" && tpu_scripts/worker.sh start"
