#!/usr/bin/env bash
# Start training on every worker at once. JAX discovers the slice's hosts itself (GPTJAX_DISTRIBUTED=auto);
# an existing run directory is resumed from its latest complete checkpoint.
source "$(dirname "$0")/common.sh"
log "launching $RUN_NAME ($PRESET) on $TPU_NAME -> $RUN_DIR"
on_all_workers "cd $REMOTE_DIR && pkill -f 'gptjax train' || true
export GPTJAX_DISTRIBUTED=auto LIBTPU_INIT_ARGS='$LIBTPU_INIT_ARGS'
nohup .venv/bin/gptjax train --preset $PRESET --run-dir $RUN_DIR $OVERRIDES >> $LOG_FILE 2>&1 &"
