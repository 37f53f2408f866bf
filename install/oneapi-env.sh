#!/usr/bin/env bash
# Find and source the Intel oneAPI environment scripts that a FROM-SOURCE build of the XPU stack needs
# (install/compile/build-xpu-wheels.sh does this for you, per component).
#
# You do NOT need this to run tortoise-xpu on an Intel GPU: PyTorch's binary XPU wheels bring the oneAPI
# runtime as pip packages and need only the GPU driver (install/envs/xpu/README.md).
#
# usage:
#   source install/oneapi-env.sh [--root DIR] [--components compiler,mkl,pti[,ccl,mpi]] [--setvars] [--quiet]
#   install/oneapi-env.sh --print [--root DIR] [--components LIST]   # show what would be sourced
#
# It sources, for each component, <root>/<component>/latest/env/vars.sh (or the newest versioned folder
# when there is no `latest` link), and prints every file it sourced. With --setvars it sources the
# all-in-one <root>/setvars.sh (or <root>/oneapi-vars.sh of the 2025+ unified layout) instead.
# The root is --root, else $ONEAPI_ROOT, else /opt/intel/oneapi, else ~/intel/oneapi.
# Exit/return status: 0 sourced (or, with --print, everything found), 1 something missing, 2 bad usage.

# Runs both sourced and executed, so: no `set -e`/`exit` at top level, everything inside functions.

_oneapi_default_components="compiler,mkl,pti"

_oneapi_say() {
    [ "${_oneapi_quiet:-0}" = 1 ] || printf 'oneapi-env: %s\n' "$*" >&2
}

# How to get each component, as one line (for "missing" messages).
_oneapi_hint() {
    case "$1" in
        compiler) echo "the DPC++/C++ compiler: apt package intel-oneapi-compiler-dpcpp-cpp" ;;
        mkl) echo "oneMKL: apt package intel-oneapi-mkl-devel" ;;
        pti) echo "Profiling Tools Interfaces: apt package intel-pti-dev" ;;
        ccl) echo "oneCCL: apt package intel-oneapi-ccl-devel" ;;
        mpi) echo "Intel MPI: apt package intel-oneapi-mpi-devel" ;;
        *) echo "oneAPI component '$1'" ;;
    esac
}

# Print the root to use, or nothing.
_oneapi_find_root() {
    local candidate
    for candidate in "${1:-}" "${ONEAPI_ROOT:-}" /opt/intel/oneapi "${HOME:-/nonexistent}/intel/oneapi"; do
        if [ -n "$candidate" ] && [ -d "$candidate" ]; then
            printf '%s\n' "$candidate"
            return 0
        fi
    done
    return 1
}

# Print the vars.sh of one component under a root, or nothing.
_oneapi_component_vars() {
    local root=$1 comp=$2 newest
    if [ -f "$root/$comp/latest/env/vars.sh" ]; then
        printf '%s\n' "$root/$comp/latest/env/vars.sh"
        return 0
    fi
    # No `latest` link: take the highest version folder that has env/vars.sh.
    newest=$(find "$root/$comp" -mindepth 3 -maxdepth 3 -path '*/env/vars.sh' 2>/dev/null | sort -V | tail -n 1)
    [ -n "$newest" ] || return 1
    printf '%s\n' "$newest"
}

# Print the all-in-one script under a root, or nothing.
_oneapi_setvars_file() {
    local root=$1 newest
    if [ -f "$root/setvars.sh" ]; then
        printf '%s\n' "$root/setvars.sh"
        return 0
    fi
    newest=$(find "$root" -mindepth 2 -maxdepth 2 -name oneapi-vars.sh 2>/dev/null | sort -V | tail -n 1)
    [ -n "$newest" ] || return 1
    printf '%s\n' "$newest"
}

# Source one file with no positional arguments (Intel's scripts parse "$@", and a function's arguments
# would leak into them) and with `set -e`/`set -u` off (they are not written for either); restore the
# caller's options afterwards.
_oneapi_source() {
    local file=$1 had_e=0 had_u=0 rc=0
    case $- in *e*) had_e=1 ;; esac
    case $- in *u*) had_u=1 ;; esac
    set +e +u
    set --
    # shellcheck disable=SC1090  # the path is only known at run time
    . "$file"
    rc=$?
    if [ "$had_u" = 1 ]; then set -u; fi
    if [ "$had_e" = 1 ]; then set -e; fi
    return "$rc"
}

oneapi_env_main() {
    local root_arg="" components=$_oneapi_default_components use_setvars=0 print_only=0
    _oneapi_quiet=0
    while [ $# -gt 0 ]; do
        case "$1" in
            --root) root_arg=${2:-}; shift 2 || return 2 ;;
            --root=*) root_arg=${1#*=}; shift ;;
            --components) components=${2:-}; shift 2 || return 2 ;;
            --components=*) components=${1#*=}; shift ;;
            --setvars) use_setvars=1; shift ;;
            --print) print_only=1; shift ;;
            --quiet) _oneapi_quiet=1; shift ;;
            -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; return 0 ;;
            *) printf 'oneapi-env: unknown option %s (see --help)\n' "$1" >&2; return 2 ;;
        esac
    done

    local root
    if ! root=$(_oneapi_find_root "$root_arg"); then
        printf 'oneapi-env: no oneAPI installation found (looked at %s%s, /opt/intel/oneapi, ~/intel/oneapi): install Intel Deep Learning Essentials or the oneAPI Base Toolkit, or pass --root DIR\n' \
            "${root_arg:+$root_arg, }" "\$ONEAPI_ROOT" >&2
        return 1
    fi
    if [ -n "$root_arg" ] && [ "$root" != "$root_arg" ]; then
        printf 'oneapi-env: --root %s is not a directory\n' "$root_arg" >&2
        return 1
    fi

    local files=() missing=0 comp file
    if [ "$use_setvars" = 1 ]; then
        if file=$(_oneapi_setvars_file "$root"); then
            files+=("$file")
        else
            printf 'oneapi-env: missing %s/setvars.sh (or <version>/oneapi-vars.sh): is %s a oneAPI root?\n' "$root" "$root" >&2
            missing=1
        fi
    else
        local comp_list=()
        IFS=, read -r -a comp_list <<<"$components"
        for comp in "${comp_list[@]}"; do
            [ -n "$comp" ] || continue
            if file=$(_oneapi_component_vars "$root" "$comp"); then
                files+=("$file")
            else
                printf 'oneapi-env: missing %s: no %s/%s/*/env/vars.sh; install %s (all of them come with Intel Deep Learning Essentials)\n' \
                    "$comp" "$root" "$comp" "$(_oneapi_hint "$comp")" >&2
                missing=1
            fi
        done
    fi
    [ "$missing" = 0 ] || return 1

    if [ "$print_only" = 1 ]; then
        for file in "${files[@]}"; do
            printf '%s\n' "$file"
        done
        return 0
    fi
    if [ "${SETVARS_COMPLETED:-}" = 1 ] && [ "$use_setvars" = 1 ]; then
        _oneapi_say "setvars.sh already ran in this shell (SETVARS_COMPLETED=1): nothing sourced"
        return 0
    fi
    for file in "${files[@]}"; do
        if ! _oneapi_source "$file"; then
            printf 'oneapi-env: sourcing %s failed\n' "$file" >&2
            return 1
        fi
        _oneapi_say "sourced $file"
    done
    return 0
}

if (return 0 2>/dev/null); then
    # Sourced: set up the caller's shell.
    oneapi_env_main "$@"
else
    # Executed: a child process cannot change the caller's environment, so only --print makes sense.
    case " $* " in
        *" --print "*|*" -h "*|*" --help "*) oneapi_env_main "$@"; exit $? ;;
        *)
            echo "oneapi-env: run it with 'source' to change your shell (source install/oneapi-env.sh $*)," >&2
            echo "oneapi-env: or with --print to see what would be sourced. Binary XPU wheels need none of this." >&2
            oneapi_env_main --print "$@"
            exit $?
            ;;
    esac
fi
