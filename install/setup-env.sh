#!/usr/bin/env bash
# One command per backend: create (or update) the conda environment for a backend, install tortoise-xpu
# into it, and check with `tortoise-xpu devices --json` that the backend is usable there.
#
# usage: install/setup-env.sh [--backend auto|cpu|cuda|rocm|xpu|mps|directml] [--name ENV] [--python X.Y]
#                             [--ipex] [--tool conda|mamba|micromamba] [--force] [--ignore-platform]
#                             [--dry-run]
#
#   --backend B        auto (default): the repository's environment.yml (CPU, CUDA when an NVIDIA driver
#                      is present); otherwise backends/B/environment.yml.
#   --name ENV         environment name (default: the file's `name:`, e.g. tortoise-xpu-xpu).
#   --python X.Y       use this Python instead of the file's pin.
#   --ipex             with --backend xpu: the LEGACY torch 2.8 + IPEX stack (install/envs/xpu/environment-ipex.yml).
#   --tool T           which of conda, mamba, micromamba to use (default: the first one on PATH, in that order;
#                      or $TORTOISE_CONDA).
#   --force            update the environment and reinstall the package even when nothing changed.
#   --ignore-platform  set up a backend on an OS it does not support (e.g. to prepare files).
#   --dry-run          print the environment file and the commands, run nothing that changes anything.
#
# Idempotent: after a successful run it stores a stamp (a hash of the environment file, pyproject.toml,
# the extras and the package version) in <env>/etc/tortoise-xpu/setup-env.stamp; when a later run finds
# the same stamp and the package installed from this checkout, it changes nothing and says so.
# Creating/updating the environment and installing the package need network access (conda channels,
# PyPI and the PyTorch wheel index); the stamp check and the device check do not.
#
# Exit status: 0 ready and the backend is available; 3 ready but the backend is not available here (the
# reason is printed); 2 bad usage or wrong platform; 1 any other failure.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BACKENDS="auto cpu cuda rocm xpu mps directml"

# say, warn, die, usage, show_cmd
# shellcheck disable=SC1091  # install/lib.sh, checked on its own
source "$REPO/install/lib.sh"

sha256_file() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum "$1" | cut -d' ' -f1
    else
        shasum -a 256 "$1" | cut -d' ' -f1
    fi
}

host_os() {
    case "$(uname -s)" in
        Linux) echo linux ;;
        Darwin) echo macos ;;
        MINGW* | MSYS* | CYGWIN*) echo windows ;;
        *) echo other ;;
    esac
}

# The operating systems a backend's wheels exist for (one line, for messages).
backend_platforms() {
    case "$1" in
        auto | cpu) echo "linux macos windows" ;;
        cuda | xpu) echo "linux windows" ;;
        rocm) echo "linux" ;;
        mps) echo "macos" ;;
        directml) echo "windows linux-wsl2" ;;
    esac
}

platform_ok() {
    local backend=$1 os=$2
    case " $(backend_platforms "$backend") " in
        *" $os "*) return 0 ;;
    esac
    # torch-directml also runs under WSL2, where the GPU appears as /dev/dxg.
    [ "$backend" = directml ] && [ "$os" = linux ] && [ -e /dev/dxg ] && return 0
    return 1
}

# --- arguments --------------------------------------------------------------------------------------
BACKEND=auto NAME="" PYVER="" IPEX=0 TOOL="${TORTOISE_CONDA:-}" FORCE=0 IGNORE_PLATFORM=0 DRY_RUN=0
while [ $# -gt 0 ]; do
    case "$1" in
        --backend) [ $# -ge 2 ] || die 2 "--backend needs a value"; BACKEND=$2; shift 2 ;;
        --backend=*) BACKEND=${1#*=}; shift ;;
        --name) [ $# -ge 2 ] || die 2 "--name needs a value"; NAME=$2; shift 2 ;;
        --name=*) NAME=${1#*=}; shift ;;
        --python) [ $# -ge 2 ] || die 2 "--python needs a value"; PYVER=$2; shift 2 ;;
        --python=*) PYVER=${1#*=}; shift ;;
        --tool) [ $# -ge 2 ] || die 2 "--tool needs a value"; TOOL=$2; shift 2 ;;
        --tool=*) TOOL=${1#*=}; shift ;;
        --ipex) IPEX=1; shift ;;
        --force) FORCE=1; shift ;;
        --ignore-platform) IGNORE_PLATFORM=1; shift ;;
        --dry-run) DRY_RUN=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) die 2 "unknown option '$1' (see --help)" ;;
    esac
done

case " $BACKENDS " in
    *" $BACKEND "*) ;;
    *) die 2 "unknown backend '$BACKEND': choose one of ${BACKENDS// /, }" ;;
esac
if [ -n "$PYVER" ] && ! printf '%s' "$PYVER" | grep -Eq '^3\.[0-9]+(\.[0-9]+)?$'; then
    die 2 "--python wants a version like 3.11, not '$PYVER'"
fi
[ "$IPEX" = 0 ] || [ "$BACKEND" = xpu ] || die 2 "--ipex goes with --backend xpu"

EXTRAS=""
if [ "$BACKEND" = auto ]; then
    ENV_FILE="$REPO/environment.yml"
elif [ "$IPEX" = 1 ]; then
    ENV_FILE="$REPO/install/envs/xpu/environment-ipex.yml"
    EXTRAS="ipex"
else
    ENV_FILE="$REPO/install/envs/$BACKEND/environment.yml"
fi
[ "$BACKEND" = directml ] && EXTRAS="directml"
[ -f "$ENV_FILE" ] || die 1 "missing environment file $ENV_FILE"

FILE_NAME=$(sed -n 's/^name:[[:space:]]*//p' "$ENV_FILE" | head -n 1 | tr -d '"'"'"'[:space:]')
NAME=${NAME:-$FILE_NAME}
[ -n "$NAME" ] || die 1 "$ENV_FILE has no 'name:' and no --name was given"
PKG_VERSION=$(sed -n 's/^version[[:space:]]*=[[:space:]]*"\(.*\)"/\1/p' "$REPO/pyproject.toml" | head -n 1)

OS=$(host_os)
if ! platform_ok "$BACKEND" "$OS"; then
    msg="the $BACKEND backend needs $(backend_platforms "$BACKEND"), this is $OS"
    case "$BACKEND" in
        directml) msg="$msg; on Windows use install\\setup-env.ps1 -Backend directml" ;;
        mps) msg="$msg (Apple silicon)" ;;
    esac
    if [ "$DRY_RUN" = 1 ] || [ "$IGNORE_PLATFORM" = 1 ]; then
        warn "$msg"
    else
        die 2 "$msg (pass --ignore-platform to set it up anyway)"
    fi
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/tortoise-setup-env.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# The environment file actually used: the backend's file, with the Python pin replaced by --python.
EFFECTIVE="$ENV_FILE"
if [ -n "$PYVER" ]; then
    EFFECTIVE="$WORK/environment.yml"
    sed -E "s/^([[:space:]]*-[[:space:]]*python)([=<>!~ ].*)?\$/\\1=$PYVER/" "$ENV_FILE" >"$EFFECTIVE"
    grep -Eq "^[[:space:]]*-[[:space:]]*python=$PYVER\$" "$EFFECTIVE" || die 1 "$ENV_FILE has no '- python=...' line to replace"
fi

# The stamp: everything that decides what the environment contains.
{
    printf 'backend=%s\nextras=%s\npackage_version=%s\n' "$BACKEND" "$EXTRAS" "$PKG_VERSION"
    printf -- '--- environment file\n'
    cat "$EFFECTIVE"
    printf -- '--- pyproject.toml\n'
    cat "$REPO/pyproject.toml"
} >"$WORK/stamp-input"
STAMP=$(sha256_file "$WORK/stamp-input")

# --- the conda-like tool ----------------------------------------------------------------------------
if [ -n "$TOOL" ]; then
    command -v "$TOOL" >/dev/null 2>&1 || die 1 "--tool/\$TORTOISE_CONDA '$TOOL' is not on PATH"
else
    for candidate in conda mamba micromamba; do
        if command -v "$candidate" >/dev/null 2>&1; then
            TOOL=$candidate
            break
        fi
    done
fi
TOOL_FOUND=1
if [ -z "$TOOL" ]; then
    TOOL_FOUND=0
    nomsg="no conda, mamba or micromamba on PATH: install Miniforge (https://conda-forge.org/download/) or micromamba, open a new shell, and run this again"
    [ "$DRY_RUN" = 1 ] || die 1 "$nomsg"
    warn "$nomsg (showing conda commands)"
    TOOL=conda
fi
TOOL_KIND=$(basename "$TOOL")
TOOL_KIND=${TOOL_KIND%.exe}

# The commands as arrays are built by these functions (names and paths may contain spaces).
run_create() {
    case "$TOOL_KIND" in
        micromamba) "$TOOL" create -y -n "$NAME" -f "$EFFECTIVE" ;;
        *) "$TOOL" env create -n "$NAME" -f "$EFFECTIVE" ;;
    esac
}
run_update() {
    case "$TOOL_KIND" in
        micromamba) "$TOOL" install -y -n "$NAME" -f "$EFFECTIVE" ;;
        *) "$TOOL" env update -n "$NAME" -f "$EFFECTIVE" --prune ;;
    esac
}
show_create() {
    case "$TOOL_KIND" in
        micromamba) show_cmd "$TOOL" create -y -n "$NAME" -f "$EFFECTIVE" ;;
        *) show_cmd "$TOOL" env create -n "$NAME" -f "$EFFECTIVE" ;;
    esac
}
show_update() {
    case "$TOOL_KIND" in
        micromamba) show_cmd "$TOOL" install -y -n "$NAME" -f "$EFFECTIVE" ;;
        *) show_cmd "$TOOL" env update -n "$NAME" -f "$EFFECTIVE" --prune ;;
    esac
}
# Run a command inside the environment. conda buffers `run` output unless told not to.
in_env() {
    case "$TOOL_KIND" in
        conda) "$TOOL" run --no-capture-output -n "$NAME" "$@" ;;
        *) "$TOOL" run -n "$NAME" "$@" ;;
    esac
}
show_in_env() {
    case "$TOOL_KIND" in
        conda) show_cmd "$TOOL" run --no-capture-output -n "$NAME" "$@" ;;
        *) show_cmd "$TOOL" run -n "$NAME" "$@" ;;
    esac
}

# The probe that runs inside the environment (a file, because `conda run` mangles multi-line -c code);
# install/setup-env.ps1 uses the same one.
HELPER="$REPO/install/setup_env_helper.py"

PIP_TARGET="$REPO${EXTRAS:+[$EXTRAS]}"
STAMP_REL="etc/tortoise-xpu/setup-env.stamp"

# --- what is there now ------------------------------------------------------------------------------
ENV_EXISTS=0 PREFIX="" PKG_LOC="" OLD_STAMP=""
probe_env() {
    local out
    if out=$(in_env python "$HELPER" probe 2>/dev/null) && [ -n "$out" ]; then
        ENV_EXISTS=1
        PREFIX=$(printf '%s\n' "$out" | sed -n 1p)
        PKG_LOC=$(printf '%s\n' "$out" | sed -n 2p)
        OLD_STAMP=""
        if [ -f "$PREFIX/$STAMP_REL" ]; then
            OLD_STAMP=$(sed -n 's/^stamp=//p' "$PREFIX/$STAMP_REL" | head -n 1)
        fi
    else
        ENV_EXISTS=0
    fi
}
[ "$TOOL_FOUND" = 0 ] || probe_env

ACTION=create
if [ "$ENV_EXISTS" = 1 ]; then
    ACTION=update
    if [ "$FORCE" = 0 ] && [ "$OLD_STAMP" = "$STAMP" ] && [ "$PKG_LOC" = "$REPO" ]; then
        ACTION=none
    fi
fi

say "backend:          $BACKEND"
if [ "$ENV_EXISTS" = 1 ]; then
    say "environment:      $NAME (exists at $PREFIX)"
elif [ "$TOOL_FOUND" = 1 ]; then
    say "environment:      $NAME (does not exist yet)"
else
    say "environment:      $NAME"
fi
say "environment file: $ENV_FILE${PYVER:+ (with python=$PYVER)}"
say "tool:             $TOOL"
say "package:          tortoise-xpu $PKG_VERSION from $REPO${EXTRAS:+ (extras: $EXTRAS)}"
say "stamp:            $STAMP"

if [ "$DRY_RUN" = 1 ]; then
    say ""
    say "--- $EFFECTIVE"
    cat "$EFFECTIVE"
    say "---"
    say ""
    say "Plan (dry run: nothing is changed):"
    if [ "$ACTION" = none ]; then
        say "  nothing to change: $NAME already matches this environment file and package (same stamp)"
    else
        if [ "$ACTION" = create ]; then
            say "  [network] $(show_create)"
        else
            say "  [network] $(show_update)"
        fi
        say "  [network] $(show_in_env python -m pip install -e "$PIP_TARGET")"
        say "            write <env>/$STAMP_REL (stamp=$STAMP)"
    fi
    say "            $(show_in_env tortoise-xpu devices --json)   # is the $BACKEND backend available?"
    exit 0
fi

# --- create or update -------------------------------------------------------------------------------
if [ "$ACTION" = none ]; then
    say "nothing changed: environment $NAME already matches $(basename "$ENV_FILE") and tortoise-xpu $PKG_VERSION (stamp ${STAMP:0:12})"
else
    if [ "$ACTION" = create ]; then
        say "creating environment $NAME (needs network) ..."
        say "+ $(show_create)"
        run_create || die 1 "creating environment $NAME failed (see the $TOOL_KIND output above)"
    else
        say "updating environment $NAME (needs network) ..."
        say "+ $(show_update)"
        run_update || die 1 "updating environment $NAME failed (see the $TOOL_KIND output above)"
    fi
    probe_env
    [ "$ENV_EXISTS" = 1 ] || die 1 "environment $NAME still cannot run python after $ACTION"
    say "+ $(show_in_env python -m pip install -e "$PIP_TARGET")"
    in_env python -m pip install -e "$PIP_TARGET" || die 1 "pip install -e $PIP_TARGET failed in $NAME (see above)"
    mkdir -p "$PREFIX/$(dirname "$STAMP_REL")"
    {
        printf 'stamp=%s\n' "$STAMP"
        printf 'backend=%s\nenv_file=%s\npython=%s\nextras=%s\npackage_version=%s\nrepo=%s\n' \
            "$BACKEND" "$ENV_FILE" "${PYVER:-from file}" "$EXTRAS" "$PKG_VERSION" "$REPO"
    } >"$PREFIX/$STAMP_REL"
    if [ "$ACTION" = create ]; then
        say "changed: created environment $NAME and installed tortoise-xpu $PKG_VERSION"
    else
        say "changed: updated environment $NAME and reinstalled tortoise-xpu $PKG_VERSION"
    fi
fi

# --- is the backend usable there? -------------------------------------------------------------------
say "+ $(show_in_env tortoise-xpu devices --json)"
set +e
in_env python "$HELPER" check "$BACKEND"
rc=$?
set -e
case "$rc" in
    0) say "ready: $TOOL_KIND activate $NAME" ;;
    3)
        hint="install/envs/$BACKEND/README.md"
        [ "$BACKEND" = auto ] && hint="docs/install.md"
        say "environment $NAME is ready, but the $BACKEND backend is not available on this machine: see $hint for what it needs"
        ;;
    *) die 1 "could not check the $BACKEND backend in $NAME (see above)" ;;
esac
exit "$rc"
