#!/usr/bin/env bash
# Upload the data gptjax reads (corpora, the GPT-2 BPE files, benchmarks: LOCAL_DATA_DIR, by default
# ../shared/data) to gs://$BUCKET/data, from where `worker.sh setup` copies it onto every worker.
# --dry-run prints the gcloud command instead.
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"
[[ -d "$LOCAL_DATA_DIR" ]] || die "LOCAL_DATA_DIR='$LOCAL_DATA_DIR' is not a directory"
log "staging $LOCAL_DATA_DIR to $DATA_URL"
gcloud_retry storage rsync --recursive "$LOCAL_DATA_DIR" "$DATA_URL"
