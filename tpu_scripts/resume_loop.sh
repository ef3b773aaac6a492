#!/usr/bin/env bash
# Keep the job going until it writes DONE. Every POLL_SECONDS: a slice that is preempted, gone, FAILED or
# SUSPENDED is deleted, created again, set up and launched (training resumes from the bucket's latest
# checkpoint, the same run or sweep directory, the same commit); on a READY slice, a trainer that is not
# running on some worker, or whose heartbeat is older than STALL_SECONDS, is relaunched. gcloud errors other
# than NOT_FOUND are retried (gcloud_retry), and a failed health check only backs off: it never recreates.
# Gives up after MAX_RESTARTS recreations or relaunches; deletes the slice when done (TEARDOWN_WHEN_DONE).
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"
[[ "$DRY_RUN" != true ]] || die "--dry-run applies to create/setup/launch/teardown, not to the loop"
restarts=0
launched_at=0

count_restart() {
  restarts=$((restarts + 1))
  (( restarts <= MAX_RESTARTS )) || { log "giving up after $MAX_RESTARTS restarts"; exit 1; }
}

# (Inside `if check` bash ignores set -e, so every step says what its failure means.)
relaunch() {
  count_restart
  log "relaunch $restarts: $1"
  "$HERE/launch.sh" || return 1
  launched_at="$(date +%s)"
}

recreate() {
  count_restart
  log "recreate $restarts: $1"
  "$HERE/teardown.sh" && "$HERE/create.sh" && "$HERE/setup.sh" && "$HERE/launch.sh" || return 1
  launched_at="$(date +%s)"
}

check_trainer() {
  local beat now
  if ! worker_status > /dev/null; then
    relaunch "the trainer is not running on every worker"
    return
  fi
  (( launched_at )) || launched_at="$(date +%s)"  # a trainer found running: its heartbeat counts from now
  beat="$(heartbeat_time)" || return 1
  now="$(date +%s)"
  (( beat > launched_at )) || beat="$launched_at"
  if (( now - beat > STALL_SECONDS )); then
    relaunch "no heartbeat for $(( now - beat ))s (STALL_SECONDS=$STALL_SECONDS)"
  fi
}

check() {  # one health check; fails (to be retried after a back-off) when gcloud could not tell
  local done_status=0 queued node
  job_done || done_status=$?
  if (( done_status == 0 )); then
    log "$JOB $JOB_NAME is done"
    if [[ "$TEARDOWN_WHEN_DONE" == true ]]; then "$HERE/teardown.sh" || return 1; fi
    exit 0
  fi
  (( done_status == 1 )) || return "$done_status"
  queued="$(queued_resource_state)" || return 1
  case "$queued" in
    NOT_FOUND|FAILED|SUSPENDED|SUSPENDING) recreate "queued resource $QUEUED_RESOURCE is $queued" ;;
    ACTIVE)
      node="$(node_state)" || return 1
      case "$node" in
        READY) check_trainer ;;
        NOT_FOUND|PREEMPTED|TERMINATED|STOPPED|STOPPING) recreate "TPU $TPU_NAME is $node" ;;
        *) log "TPU $TPU_NAME is $node: waiting" ;;
      esac ;;
    *) log "queued resource $QUEUED_RESOURCE is $queued: waiting" ;;
  esac
}

backoff="$POLL_SECONDS"
while true; do
  if check; then
    backoff="$POLL_SECONDS"
    sleep "$POLL_SECONDS"
  else
    backoff=$(( backoff * 2 > POLL_SECONDS * 16 ? POLL_SECONDS * 16 : backoff * 2 ))
    log "health check failed: next one in ${backoff}s"
    sleep "$backoff"
  fi
done
