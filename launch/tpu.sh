#!/usr/bin/env bash
# Train nin_jax on a Cloud TPU VM or pod slice: create it, install, train, follow, delete.
#
#   launch/tpu.sh [OPTIONS] COMMAND... [-- MAIN_FLAGS...]
#
# Commands run in the order given, once every input they need has been checked:
#   check     on this machine: does the config compile and fit on the accelerator type?
#             (python3 -m nin_jax.aot --config=CONFIG --topology=TYPE [--config.* flags])
#   create    create the TPU VM (a pod slice when the accelerator type spans several hosts)
#   install   copy this checkout's HEAD commit to every worker, pip install -e '.[tpu]' there
#   train     start the same training command on every worker, in the background
#   logs      follow worker 0's training log (Ctrl-C stops following, not training)
#   delete    delete the TPU VM
#   up        check create install train (check left out with --skip-check)
#
# Options (each also read from the environment variable in brackets):
#   --name NAME             TPU VM name [TPU_NAME] (default nin-jax)
#   --zone ZONE             [ZONE] (default us-central2-b)
#   --project PROJECT       [PROJECT] (default: gcloud's configured project)
#   --accelerator-type T    v4-8, v4-32, v5litepod-16, v5p-8, v6e-8, ... [ACCELERATOR_TYPE]
#                           (default v4-8)
#   --version V             TPU software version [TPU_VERSION] (default tpu-ubuntu2204-base)
#   --spot                  create a Spot (preemptible) VM [SPOT=1]
#   --config FILE           a config of this checkout [CONFIG] (default configs/svhn.py)
#   --workdir gs://...      checkpoints and results, required by train [WORKDIR]
#   --data-dir gs://...     prepared TFDS data, passed as --config.data_dir [DATA_DIR]
#   --skip-check            up without check [SKIP_CHECK=1]
#   --dry-run               print the commands instead of running them [DRY_RUN=1]
# Flags after -- go to nin_jax.main unchanged (e.g. -- --config.num_epochs=40); check
# passes it the --config.* ones. Nothing is created before every input has been checked.
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
SKIP_CHECK=${SKIP_CHECK:-0}
DRY_RUN=${DRY_RUN:-0}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ARCHIVE=${TMPDIR:-/tmp}/nin_jax.tar.gz

# shellcheck source=launch/common.sh
source "$REPO/launch/common.sh"

# TPU generations `gcloud compute tpus tpu-vm create --accelerator-type` knows: NAME-CHIPS.
KNOWN_ACCELERATORS='^(v2|v3|v4|v5litepod|v5p|v6e)-[0-9]+$'

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

# Stops (exit 2) on any input a command asked for would fail on, before anything runs.
check_inputs() {
  [[ $ACCELERATOR_TYPE =~ $KNOWN_ACCELERATORS ]] \
    || die "--accelerator-type=$ACCELERATOR_TYPE is not a TPU type (v4-8, v4-32, v5litepod-16, v5p-8, v6e-8, ...)"
  if wants train; then
    [[ $WORKDIR == gs://?* ]] || die "train needs --workdir=gs://BUCKET/PATH (every worker writes there)"
    [[ -z $DATA_DIR || $DATA_DIR == gs://?* ]] \
      || die "--data-dir=$DATA_DIR: give a gs://BUCKET/PATH (every worker reads it)"
  fi
  if wants train || wants check; then
    check_config_file
  fi
}

# The --config.* flags among MAIN_FLAGS (those nin_jax.aot takes too).
config_overrides() {
  local flag
  for flag in "${MAIN_FLAGS[@]}"; do
    [[ $flag == --config.* ]] && printf '%s\0' "$flag"
  done
  return 0
}

check() {
  local overrides=()
  mapfile -d '' overrides < <(config_overrides)
  (cd "$REPO" && run python3 -m nin_jax.aot --config="$CONFIG" \
    --topology="$ACCELERATOR_TYPE" "${overrides[@]}")
}

check_unless_skipped() {
  [[ $SKIP_CHECK == 1 ]] || check
}

train() {
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

VALUE_OPTIONS=(--name=TPU_NAME --zone=ZONE --project=PROJECT --accelerator-type=ACCELERATOR_TYPE
  --version=TPU_VERSION --config=CONFIG --workdir=WORKDIR --data-dir=DATA_DIR)
SWITCH_OPTIONS=(--spot=SPOT --skip-check=SKIP_CHECK --dry-run=DRY_RUN)
COMMAND_NAMES=(check create install train logs delete)
UP_COMMANDS=(check_unless_skipped create install train)
parse_args "$@"
check_inputs

for command in "${COMMANDS[@]}"; do
  "$command"
done
