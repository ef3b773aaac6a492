#!/usr/bin/env bash
# Show the slice (queued resource and TPU state), the job's heartbeat and last metrics record, and every
# worker: whether its trainer runs, and its last log line.
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"
echo "queued resource $QUEUED_RESOURCE: $(queued_resource_state); TPU $TPU_NAME: $(node_state)"
if job_done; then echo "$JOB $JOB_NAME: DONE ($DONE_URL)"; fi
beat="$(heartbeat_time)"
if (( beat )); then echo "heartbeat: $(( $(date +%s) - beat ))s ago ($HEARTBEAT_URL)"; else echo "heartbeat: none yet"; fi
if [[ "$JOB" == train ]]; then
  echo "last metrics: $(gcloud_retry storage cat "$JOB_URL/metrics.jsonl" 2>/dev/null | tail -n 1)"
fi
worker_status || echo "(the trainer is not running on every worker)"
