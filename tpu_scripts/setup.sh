#!/usr/bin/env bash
# On every worker: mount the bucket, fetch the code at REPO_REF, install gptjax with JAX for TPU.
source "$(dirname "$0")/common.sh"
log "setting up $TPU_NAME: $REPO_URL@$REPO_REF, bucket $BUCKET at $MOUNT"
on_all_workers "set -e
sudo mkdir -p $MOUNT && sudo chown \$USER $MOUNT
mountpoint -q $MOUNT || gcsfuse --implicit-dirs $BUCKET $MOUNT
if [ -d $REMOTE_DIR/.git ]; then git -C $REMOTE_DIR fetch -q origin; else git clone -q $REPO_URL $REMOTE_DIR; fi
git -C $REMOTE_DIR checkout -q $REPO_REF && git -C $REMOTE_DIR pull -q --ff-only || true
cd $REMOTE_DIR && python3 -m venv .venv && .venv/bin/pip install -q -e . 'jax[tpu]==0.10.2'
mkdir -p $REMOTE_DIR/logs"
