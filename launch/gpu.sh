#!/usr/bin/env bash
# Train nin_jax on a Compute Engine VM with NVIDIA GPUs: create it, install, train, follow, delete.
#
#   launch/gpu.sh [OPTIONS] COMMAND... [-- MAIN_FLAGS...]
#
# Commands run in the order given, once every input they need has been checked:
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
#   --accelerator SPEC      type=nvidia-GPU,count=N [ACCELERATOR] (default type=nvidia-l4,count=1)
#   --image-family F        [IMAGE_FAMILY] (default common-cu124-debian-11-py310; list them with
#                           gcloud compute images list --project=deeplearning-platform-release)
#   --spot                  create a Spot VM, stopped (not deleted) on preemption [SPOT=1]
#   --config FILE           a config of this checkout [CONFIG] (default configs/svhn.py)
#   --workdir DIR           gs://BUCKET/PATH or a path on the VM, required by train [WORKDIR]
#   --data-dir DIR          prepared TFDS data, passed as --config.data_dir [DATA_DIR]
#   --dry-run               print the commands instead of running them [DRY_RUN=1]
# Flags after -- go to nin_jax.main unchanged (e.g. -- --config.num_epochs=40).
# Nothing is created before every input has been checked.
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

# GPU names of `gcloud compute instances create --accelerator=type=NAME,count=N`.
KNOWN_ACCELERATORS='^type=nvidia-(tesla-t4|tesla-p4|tesla-p100|tesla-v100|l4|tesla-a100|a100-80gb|h100-80gb|h100-mega-80gb|h200-141gb|b200|gb200|rtx-pro-6000),count=[1-9][0-9]*$'

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

# Stops (exit 2) on any input a command asked for would fail on, before anything runs.
check_inputs() {
  [[ $ACCELERATOR =~ $KNOWN_ACCELERATORS ]] \
    || die "--accelerator=$ACCELERATOR is not type=GPU,count=N with a GPU gcloud knows (type=nvidia-l4,count=1, type=nvidia-tesla-a100,count=8, ...)"
  if wants train; then
    [[ -n $WORKDIR ]] || die "train needs --workdir (gs://BUCKET/PATH or a path on the VM)"
    check_config_file
  fi
}

train() {
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

VALUE_OPTIONS=(--name=VM_NAME --zone=ZONE --project=PROJECT --machine-type=MACHINE_TYPE
  --accelerator=ACCELERATOR --image-family=IMAGE_FAMILY --config=CONFIG --workdir=WORKDIR
  --data-dir=DATA_DIR)
SWITCH_OPTIONS=(--spot=SPOT --dry-run=DRY_RUN)
COMMAND_NAMES=(create install train logs delete)
UP_COMMANDS=(create install train)
parse_args "$@"
check_inputs

for command in "${COMMANDS[@]}"; do
  "$command"
done
