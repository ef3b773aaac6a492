#!/usr/bin/env bash
# Create the TPU VM slice described in tpu.env.
source "$(dirname "$0")/common.sh"
spot=()
[[ "$SPOT" == true ]] && spot=(--spot)
log "creating $TPU_NAME ($ACCELERATOR_TYPE, $RUNTIME_VERSION) in $ZONE"
tpu create "$TPU_NAME" --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION" "${spot[@]}"
