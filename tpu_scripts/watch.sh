#!/usr/bin/env bash
# Show the slice's state, the last metrics record and the tail of worker 0's log.
source "$(dirname "$0")/common.sh"
echo "state: $(tpu_state)"
tpu ssh "$TPU_NAME" --worker=0 --command="tail -n 1 $RUN_DIR/metrics.jsonl 2>/dev/null; tail -n ${LINES_SHOWN:-20} $LOG_FILE"
