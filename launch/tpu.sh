#!/usr/bin/env bash
# Train nin_jax on a Cloud TPU VM or pod slice: create it, install, train, follow, delete.
#
#   launch/tpu.sh [OPTIONS] COMMAND... [-- MAIN_FLAGS...]
#
# Commands run in the order given:
#   create    create the TPU VM (a pod slice when the accelerator type spans several hosts)
#   install   copy this checkout's HEAD commit to every worker, pip install -e '.[tpu]' there
#   train     start the same training command on every worker, in the background
#   logs      follow worker 0's training log (Ctrl-C stops following, not training)
#   delete    delete the TPU VM
#   up        create install train
#
# Options (each also read from the environment variable in brackets):
#   --name NAME             TPU VM name [TPU_NAME] (default nin-jax)
#   --zone ZONE             [ZONE] (default us-central2-b)
#   --project PROJECT       [PROJECT] (default: gcloud's configured project)
#   --accelerator-type T    v4-8, v4-32, v5litepod-16, ... [ACCELERATOR_TYPE] (default v4-8)
#   --version V             TPU software version [TPU_VERSION] (default tpu-ubuntu2204-base)
#   --spot                  create a Spot (preemptible) VM [SPOT=1]
#   --config FILE           [CONFIG] (default configs/svhn.py)
#   --workdir gs://...      checkpoints and results, required by train [WORKDIR]
#   --data-dir gs://...     prepared TFDS data, passed as --config.data_dir [DATA_DIR]
#   --dry-run               print the commands instead of running them [DRY_RUN=1]
# Flags after -- go to nin_jax.main unchanged (e.g. -- --config.num_epochs=40).
#
# Training runs `python3 -m nin_jax.main --distributed` on all workers: JAX finds
# the other hosts itself. After a preemption, recreate the VM and run
# `up` again with the same --workdir: training resumes from the last checkpoint.
set -euo pipefail

TPU_NAME=${TPU_NAME:-nin-jax}
ZONE=${ZONE:-us-central2-b}
PROJECT=${PROJECT:-}
ACCELERATOR_TYPE=${ACCELERATOR_TYPE:-v4-8}
TPU_VERSION=${TPU_VERSION:-tpu-ubuntu2204-base}
SPOT=${SPOT:-0}
CONFIG=${CONFIG:-configs/svhn.py}
WORKDIR=${WORKDIR:-}
DATA_DIR=${DATA_DIR:-}
DRY_RUN=${DRY_RUN:-0}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ARCHIVE=${TMPDIR:-/tmp}/nin_jax.tar.gz

# shellcheck source=launch/common.sh
source "$REPO/launch/common.sh"

tpu() {
  local project=()
  [[ -n $PROJECT ]] && project=(--project="$PROJECT")
  run gcloud compute tpus tpu-vm "$@" --zone="$ZONE" "${project[@]}"
}

create() {
  local spot=()
  [[ $SPOT == 1 ]] && spot=(--spot)
  tpu create "$TPU_NAME" --accelerator-type="$ACCELERATOR_TYPE" --version="$TPU_VERSION" \
    "${spot[@]}"
}

install() {
  pack_head
  tpu scp "$ARCHIVE" "$TPU_NAME:nin_jax.tar.gz" --worker=all
  tpu ssh "$TPU_NAME" --worker=all --command="$(install_command tpu)"
}

train() {
  [[ $WORKDIR == gs://* ]] || die "train needs --workdir=gs://BUCKET/PATH (every worker writes there)"
  local flags=(--config="$CONFIG" --workdir="$WORKDIR" --distributed)
  [[ -n $DATA_DIR ]] && flags+=(--config.data_dir="$DATA_DIR")
  tpu ssh "$TPU_NAME" --worker=all --command="$(train_command "${flags[@]}" "${MAIN_FLAGS[@]}")"
}

logs() {
  tpu ssh "$TPU_NAME" --worker=0 --command="tail -n 100 -F ~/nin_jax_train.log"
}

delete() {
  tpu delete "$TPU_NAME" --quiet
}

COMMANDS=()
MAIN_FLAGS=()
while (($#)); do
  case $1 in
    --name) TPU_NAME=${2:?--name needs a value}; shift ;;
    --name=*) TPU_NAME=${1#*=} ;;
    --zone) ZONE=${2:?--zone needs a value}; shift ;;
    --zone=*) ZONE=${1#*=} ;;
    --project) PROJECT=${2:?--project needs a value}; shift ;;
    --project=*) PROJECT=${1#*=} ;;
    --accelerator-type) ACCELERATOR_TYPE=${2:?--accelerator-type needs a value}; shift ;;
    --accelerator-type=*) ACCELERATOR_TYPE=${1#*=} ;;
    --version) TPU_VERSION=${2:?--version needs a value}; shift ;;
    --version=*) TPU_VERSION=${1#*=} ;;
    --spot) SPOT=1 ;;
    --config) CONFIG=${2:?--config needs a value}; shift ;;
    --config=*) CONFIG=${1#*=} ;;
    --workdir) WORKDIR=${2:?--workdir needs a value}; shift ;;
    --workdir=*) WORKDIR=${1#*=} ;;
    --data-dir) DATA_DIR=${2:?--data-dir needs a value}; shift ;;
    --data-dir=*) DATA_DIR=${1#*=} ;;
    --dry-run) DRY_RUN=1 ;;
    -h | --help) usage ;;
    --) shift; MAIN_FLAGS=("$@"); break ;;
    create | install | train | logs | delete) COMMANDS+=("$1") ;;
    up) COMMANDS+=(create install train) ;;
    *) echo "error: unknown argument '$1'" >&2; usage 2 >&2 ;;
  esac
  shift
done
((${#COMMANDS[@]})) || usage 2 >&2

for command in "${COMMANDS[@]}"; do
  "$command"
done
