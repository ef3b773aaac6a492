#!/usr/bin/env bash
# Keep a spot run going: whenever the slice is preempted or gone, recreate it, set it up and launch again
# (training resumes from the last checkpoint in the bucket). Stops when the run wrote its final
# checkpoint (config steps reached) or after MAX_RESTARTS restarts.
source "$(dirname "$0")/common.sh"
restarts=0
while true; do
  state="$(tpu_state)"
  case "$state" in
    READY)
      if tpu ssh "$TPU_NAME" --worker=0 --command="test -f $RUN_DIR/DONE" >/dev/null 2>&1; then
        log "run $RUN_NAME finished"; exit 0
      fi ;;
    CREATING|STARTING|RESTARTING|REPAIRING) ;;
    *)
      if (( restarts >= ${MAX_RESTARTS:-100} )); then log "giving up after $restarts restarts"; exit 1; fi
      restarts=$((restarts + 1))
      log "slice is $state: restart $restarts"
      [[ "$state" == NOT_FOUND ]] || "$HERE/teardown.sh"
      "$HERE/create.sh" && "$HERE/setup.sh" && "$HERE/launch.sh" ;;
  esac
  sleep "$POLL_SECONDS"
done
