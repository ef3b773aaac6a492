#!/usr/bin/env bash
# Delete the slice and its queued resource (the bucket keeps runs, sweeps and logs). --dry-run prints it.
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"
log "deleting queued resource $QUEUED_RESOURCE and its TPU $TPU_NAME"
status=0
gcloud_retry compute tpus queued-resources delete "$QUEUED_RESOURCE" "${where[@]}" --force --quiet >&2 || status=$?
(( status == 0 || status == NOT_FOUND )) || exit "$status"
