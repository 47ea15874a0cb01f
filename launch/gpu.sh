#!/usr/bin/env bash
# Train nin_jax on a Compute Engine VM with NVIDIA GPUs: create it, install, train, follow, delete.
#
#   launch/gpu.sh [OPTIONS] COMMAND... [-- MAIN_FLAGS...]
#
# Commands run in the order given:
#   create    create the VM (Deep Learning VM image, NVIDIA driver installed at first boot)
#   install   copy this checkout's HEAD commit to the VM, pip install -e '.[cuda]' there
#   train     start training in the background (one process drives all the VM's GPUs)
#   logs      follow the training log (Ctrl-C stops following, not training)
#   delete    delete the VM
#   up        create install train
#
# Options (each also read from the environment variable in brackets):
#   --name NAME             VM name [VM_NAME] (default nin-jax-gpu)
#   --zone ZONE             [ZONE] (default us-central1-a)
#   --project PROJECT       [PROJECT] (default: gcloud's configured project)
#   --machine-type T        [MACHINE_TYPE] (default g2-standard-8)
#   --accelerator SPEC      [ACCELERATOR] (default type=nvidia-l4,count=1)
#   --image-family F        [IMAGE_FAMILY] (default common-cu124-debian-11-py310; list them with
#                           gcloud compute images list --project=deeplearning-platform-release)
#   --spot                  create a Spot VM, stopped (not deleted) on preemption [SPOT=1]
#   --config FILE           [CONFIG] (default configs/svhn.py)
#   --workdir DIR           gs://BUCKET/PATH or a path on the VM, required by train [WORKDIR]
#   --data-dir DIR          prepared TFDS data, passed as --config.data_dir [DATA_DIR]
#   --dry-run               print the commands instead of running them [DRY_RUN=1]
# Flags after -- go to nin_jax.main unchanged (e.g. -- --config.num_epochs=40).
#
# After a preemption: gcloud compute instances start NAME --zone=ZONE, then `train`
# again with the same --workdir: training resumes from the last checkpoint.
set -euo pipefail

VM_NAME=${VM_NAME:-nin-jax-gpu}
ZONE=${ZONE:-us-central1-a}
PROJECT=${PROJECT:-}
MACHINE_TYPE=${MACHINE_TYPE:-g2-standard-8}
ACCELERATOR=${ACCELERATOR:-type=nvidia-l4,count=1}
IMAGE_FAMILY=${IMAGE_FAMILY:-common-cu124-debian-11-py310}
SPOT=${SPOT:-0}
CONFIG=${CONFIG:-configs/svhn.py}
WORKDIR=${WORKDIR:-}
DATA_DIR=${DATA_DIR:-}
DRY_RUN=${DRY_RUN:-0}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ARCHIVE=${TMPDIR:-/tmp}/nin_jax.tar.gz

# shellcheck source=launch/common.sh
source "$REPO/launch/common.sh"

vm() {
  local project=()
  [[ -n $PROJECT ]] && project=(--project="$PROJECT")
  run gcloud compute "$@" --zone="$ZONE" "${project[@]}"
}

create() {
  local spot=()
  [[ $SPOT == 1 ]] && spot=(--provisioning-model=SPOT --instance-termination-action=STOP)
  vm instances create "$VM_NAME" --machine-type="$MACHINE_TYPE" --accelerator="$ACCELERATOR" \
    --maintenance-policy=TERMINATE --image-project=deeplearning-platform-release \
    --image-family="$IMAGE_FAMILY" --boot-disk-size=200GB \
    --metadata=install-nvidia-driver=True --scopes=cloud-platform "${spot[@]}"
}

install() {
  pack_head
  vm scp "$ARCHIVE" "$VM_NAME:nin_jax.tar.gz"
  vm ssh "$VM_NAME" --command="$(install_command cuda)"
}

train() {
  [[ -n $WORKDIR ]] || die "train needs --workdir (gs://BUCKET/PATH or a path on the VM)"
  local flags=(--config="$CONFIG" --workdir="$WORKDIR")
  [[ -n $DATA_DIR ]] && flags+=(--config.data_dir="$DATA_DIR")
  vm ssh "$VM_NAME" --command="$(train_command "${flags[@]}" "${MAIN_FLAGS[@]}")"
}

logs() {
  vm ssh "$VM_NAME" --command="tail -n 100 -F ~/nin_jax_train.log"
}

delete() {
  vm instances delete "$VM_NAME" --quiet
}

COMMANDS=()
MAIN_FLAGS=()
while (($#)); do
  case $1 in
    --name) VM_NAME=${2:?--name needs a value}; shift ;;
    --name=*) VM_NAME=${1#*=} ;;
    --zone) ZONE=${2:?--zone needs a value}; shift ;;
    --zone=*) ZONE=${1#*=} ;;
    --project) PROJECT=${2:?--project needs a value}; shift ;;
    --project=*) PROJECT=${1#*=} ;;
    --machine-type) MACHINE_TYPE=${2:?--machine-type needs a value}; shift ;;
    --machine-type=*) MACHINE_TYPE=${1#*=} ;;
    --accelerator) ACCELERATOR=${2:?--accelerator needs a value}; shift ;;
    --accelerator=*) ACCELERATOR=${1#*=} ;;
    --image-family) IMAGE_FAMILY=${2:?--image-family needs a value}; shift ;;
    --image-family=*) IMAGE_FAMILY=${1#*=} ;;
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
