#!/usr/bin/env bash
# Ask for the slice as a queued resource (CAPACITY spot / best-effort / reserved) and wait until it is
# ACTIVE. A queued resource left FAILED or SUSPENDED (a spot slice after preemption) is deleted first.
# --dry-run prints the gcloud commands instead.
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"
case "$CAPACITY" in
  spot) api=(compute) capacity=--spot ;;
  reserved) api=(compute) capacity=--reserved ;;
  best-effort) api=(alpha compute) capacity=--best-effort ;;  # only gcloud alpha has --best-effort
esac
create=("${api[@]}" tpus queued-resources create "$QUEUED_RESOURCE" "${where[@]}" --node-id="$TPU_NAME"
  --accelerator-type="$TPU_ACCELERATOR_TYPE" --runtime-version="$RUNTIME_VERSION" "$capacity")
delete=(compute tpus queued-resources delete "$QUEUED_RESOURCE" "${where[@]}" --force --quiet)

if [[ "$DRY_RUN" == true ]]; then
  run_gcloud "${create[@]}"
  exit 0
fi
log "asking for $TPU_ACCELERATOR_TYPE ($TPU_CHIPS chips on $TPU_HOSTS hosts, $CAPACITY, $RUNTIME_VERSION)"
attempts=0
while true; do
  state="$(queued_resource_state)"
  case "$state" in
    ACTIVE) log "queued resource $QUEUED_RESOURCE is ACTIVE"; exit 0 ;;
    NOT_FOUND)
      attempts=$((attempts + 1))
      (( attempts <= MAX_RESTARTS )) || die "gave up after $MAX_RESTARTS attempts to create $QUEUED_RESOURCE"
      gcloud_retry "${create[@]}" >&2 ;;
    FAILED|SUSPENDED|SUSPENDING)
      log "queued resource $QUEUED_RESOURCE is $state: deleting it"
      gcloud_retry "${delete[@]}" >&2 ;;
    DELETING|ACCEPTED|PROVISIONING|WAITING_FOR_RESOURCES|CREATING) log "queued resource is $state" ;;
    *) die "queued resource $QUEUED_RESOURCE is in unexpected state '$state'" ;;
  esac
  sleep "$POLL_SECONDS"
done
