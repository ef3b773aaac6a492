#!/usr/bin/env bash
# Delete the slice (run directories in the bucket are kept).
source "$(dirname "$0")/common.sh"
log "deleting $TPU_NAME"
tpu delete "$TPU_NAME" --quiet
