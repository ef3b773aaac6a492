#!/usr/bin/env bash
# On every worker at once: check out the job's one commit of REPO_URL (resolved once, see resolve_commit;
# a checkout that is not exactly that commit fails the worker), then `tpu_scripts/worker.sh setup` from
# it: Python 3.11 and the exact versions of tpu_scripts/tpu.lock in .venv, and the data staged in the bucket.
# --dry-run prints the gcloud commands instead.
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"
COMMIT="$(resolve_commit)"
log "setting up the $TPU_HOSTS worker(s) of $TPU_NAME at $COMMIT"
# shellcheck disable=SC2016 # expanded on the worker
checkout='set -e; checkout="$HOME/$REMOTE_DIR"; if [ ! -d "$checkout/.git" ]; then git init -q "$checkout"; git -C "$checkout" remote add origin "$REPO_URL"; fi; git -C "$checkout" fetch -q --depth=1 origin "$COMMIT"; git -C "$checkout" checkout -q --force --detach FETCH_HEAD; test "$(git -C "$checkout" rev-parse HEAD)" = "$COMMIT"; "$checkout/tpu_scripts/worker.sh" setup'
on_workers "$(remote_env REPO_URL REMOTE_DIR COMMIT DATA_URL) $checkout"
