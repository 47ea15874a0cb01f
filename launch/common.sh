# Helpers shared by the launch scripts (sourced, not run).

# Prints the calling script's header comment as its help.
usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
  exit "${1:-0}"
}

die() {
  echo "error: $*" >&2
  exit 2
}

# One word of a command line as a shell reads it: --flag='value with spaces'.
quote() {
  local word=$1
  if [[ $word =~ ^[][A-Za-z0-9_./:=@%+,~-]*$ ]]; then
    printf '%s' "$word"
  elif [[ $word =~ ^(--[a-z-]+=)(.*)$ ]]; then
    printf "%s'%s'" "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]//\'/\'\\\'\'}"
  else
    printf "'%s'" "${word//\'/\'\\\'\'}"
  fi
}

# Runs a command, or prints it on one line with --dry-run.
run() {
  if [[ $DRY_RUN == 1 ]]; then
    local words=() word
    for word in "$@"; do words+=("$(quote "$word")"); done
    echo "${words[*]}"
  else
    "$@"
  fi
}


# Packs the checked-out commit (HEAD) into $ARCHIVE, for copying to the machines.
pack_head() {
  if [[ $DRY_RUN != 1 && -n $(git -C "$REPO" status --porcelain --untracked-files=no) ]]; then
    echo "warning: uncommitted changes are not installed (install copies HEAD)" >&2
  fi
  run git -C "$REPO" archive --format=tar.gz --output="$ARCHIVE" HEAD
}

# Remote shell command: unpack nin_jax.tar.gz into ~/nin_jax, pip install it with extra $1.
install_command() {
  echo "rm -rf nin_jax && mkdir nin_jax && tar xzf nin_jax.tar.gz -C nin_jax && cd nin_jax" \
    "&& python3 -m pip install -q -e \".[$1]\""
}

# Remote shell command: start nin_jax.main with the given flags in the background,
# logging to ~/nin_jax_train.log (it survives the end of the ssh session).
train_command() {
  local quoted=() flag
  for flag in "$@"; do quoted+=("$(quote "$flag")"); done
  echo "cd nin_jax && nohup python3 -m nin_jax.main ${quoted[*]}" \
    "> ~/nin_jax_train.log 2>&1 < /dev/null &"
}
