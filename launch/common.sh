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

# The value of option $1 in a list of OPTION=VARIABLE specs ($2...), or nothing.
_variable_of() {
  local option=$1 spec
  shift
  for spec in "$@"; do
    [[ ${spec%%=*} == "$option" ]] && { echo "${spec#*=}"; return; }
  done
  return 0
}

_is_one_of() {
  local word=$1 item
  shift
  for item in "$@"; do [[ $item == "$word" ]] && return 0; done
  return 1
}

_unknown() {
  echo "error: unknown argument '$1'" >&2
  usage 2 >&2
}

# Parses a launch script's command line into its variables, COMMANDS and MAIN_FLAGS. The
# script declares VALUE_OPTIONS (--flag=VARIABLE: takes a value, as --flag V or --flag=V),
# SWITCH_OPTIONS (--flag=VARIABLE: sets VARIABLE=1), COMMAND_NAMES and UP_COMMANDS (what
# `up` stands for). Everything after -- goes to MAIN_FLAGS unchanged.
parse_args() {
  COMMANDS=()
  MAIN_FLAGS=()
  local arg variable
  while (($#)); do
    arg=$1
    case $arg in
      -h | --help) usage ;;
      --) shift; MAIN_FLAGS=("$@"); break ;;
      --*=*)
        variable=$(_variable_of "${arg%%=*}" "${VALUE_OPTIONS[@]}")
        [[ -n $variable ]] || _unknown "$arg"
        printf -v "$variable" '%s' "${arg#*=}"
        ;;
      --*)
        variable=$(_variable_of "$arg" "${VALUE_OPTIONS[@]}")
        if [[ -n $variable ]]; then
          (($# > 1)) || die "$arg needs a value"
          printf -v "$variable" '%s' "$2"
          shift
        else
          variable=$(_variable_of "$arg" "${SWITCH_OPTIONS[@]}")
          [[ -n $variable ]] || _unknown "$arg"
          printf -v "$variable" '%s' 1
        fi
        ;;
      up) COMMANDS+=("${UP_COMMANDS[@]}") ;;
      *) _is_one_of "$arg" "${COMMAND_NAMES[@]}" || _unknown "$arg"; COMMANDS+=("$arg") ;;
    esac
    shift
  done
  ((${#COMMANDS[@]})) || usage 2 >&2
}

# Whether command $1 is among those asked for (COMMANDS).
wants() {
  _is_one_of "$1" "${COMMANDS[@]}"
}

# Checks --config names a file of this checkout's HEAD (what install copies to the machines),
# relative to the repository root as nin_jax.main reads it there.
check_config_file() {
  [[ $CONFIG != /* ]] || die "--config=$CONFIG: give the path in this checkout, e.g. configs/svhn.py (the machines get the checkout, not this file)"
  [[ -f $REPO/$CONFIG ]] || die "--config=$CONFIG: no such file in $REPO"
  if git -C "$REPO" rev-parse --git-dir > /dev/null 2>&1; then
    local root directory  # The path in git's tree: configs/ is a link to nin_jax/configs/.
    root=$(cd "$REPO" && pwd -P)
    directory=$(cd "$REPO/$(dirname "$CONFIG")" && pwd -P)
    directory=${directory#"$root"}
    git -C "$REPO" cat-file -e "HEAD:${directory#/}${directory:+/}$(basename "$CONFIG")" 2> /dev/null \
      || die "--config=$CONFIG is not committed: install copies HEAD, so the machines would not have it"
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
