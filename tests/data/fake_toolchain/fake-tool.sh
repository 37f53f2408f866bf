#!/usr/bin/env bash
# A stand-in for the tools that scripts/setup-env.sh and compile/build-xpu-wheels.sh call, for the tests.
#
# usage: fake-tool.sh TOOL [ARGS...]   (the stubs on a test's PATH are one-line wrappers: see fake_tool.py)
#
# Every call is recorded as one file in $FAKE_LOG.d/ (NUL-separated: tool, cwd, argc, argv..., then the
# whole environment), so a test can check the order of the steps and what each build saw. Then the
# tool acts just enough for the scripts to go on: `git clone` makes a tree, `python -m pip wheel` writes
# a wheel file, `conda env create` makes an environment folder, and so on. Written in bash, not Python,
# because a Python start-up per call would make the end-to-end tests too slow on a small machine.
#
# Knobs (environment variables):
#   FAKE_LOG           where calls are recorded (required)
#   FAKE_STATE         a folder for state that outlives a call (default: $FAKE_LOG.state)
#   FAKE_TORCH         the build Python's torch as VERSION:XPU, e.g. 2.13.0+xpu:1; `none` = not installed
#   FAKE_PY_VERSION    what the build Python reports (default 3.11.9)
#   FAKE_GCC_VERSION   default 13.2.0
#   FAKE_DF_AVAIL_KB   the free space df reports (default 500 GB)
#   FAKE_FAIL_BUILD    comma-separated components whose `pip wheel` fails
#   FAKE_DEVICES       what `tortoise-xpu devices --json` prints
#   FAKE_DEVICES_FAIL  when set, `tortoise-xpu devices` fails
#   FAKE_REAL_PYTHON   the real interpreter an environment's python runs (for setup-env's helper)
#   FAKE_REPO          the checkout an environment's python imports tortoise_xpu from
set -u

tool=$1
shift
state=${FAKE_STATE:-$FAKE_LOG.state}

record() {
    local dir="$FAKE_LOG.d" files n
    [ -d "$dir" ] || mkdir -p "$dir"
    shopt -s nullglob
    files=("$dir"/*)
    shopt -u nullglob
    n=$(printf '%06d' "${#files[@]}")
    { printf '%s\0' "$tool" "$PWD" "$#" "$@"; env -0; } >"$dir/$n"
}

# The value after a flag in "$@": opt -w "$@".
opt() {
    local flag=$1
    shift
    while [ $# -gt 1 ]; do
        if [ "$1" = "$flag" ]; then
            printf '%s\n' "$2"
            return 0
        fi
        shift
    done
    return 1
}

dist_name() {
    case "$1" in
        torch | pytorch) echo torch ;;
        torchaudio | audio) echo torchaudio ;;
        ipex | intel-extension-for-pytorch | intel_extension_for_pytorch) echo intel_extension_for_pytorch ;;
        *) echo "$1" ;;
    esac
}

fake_git() {
    case "${1:-}" in
        --version) echo "git version 2.43.0 (fake)" ;;
        clone)
            local url dest
            url=${*: -2:1}
            dest=${*: -1:1}
            mkdir -p "$dest/.git" || return 1
            echo "# fake" >"$dest/setup.py"
            echo "numpy" >"$dest/requirements.txt"
            basename "$url" >"$dest/.fake_component"
            opt --branch "$@" >"$dest/.fake_tag"
            ;;
        -C)
            if [ "${3:-}" = rev-parse ]; then
                [ -d "$2/.git" ] || return 128
                printf '%s' "$2" | sha1sum | cut -d' ' -f1
            fi
            ;;
    esac
    return 0
}

fake_pip_wheel() {
    local comp out version
    if [ -f .fake_component ]; then comp=$(dist_name "$(cat .fake_component)"); else comp=$(dist_name "$(basename "$PWD")"); fi
    echo "building $comp in $PWD ..."
    local failing
    local fail_list=${FAKE_FAIL_BUILD:-}
    for failing in ${fail_list//,/ }; do
        if [ "$(dist_name "$failing")" = "$comp" ]; then
            echo "fake compiler: error: $comp/csrc/broken.cpp:42: something went wrong" >&2
            return 2
        fi
    done
    version=${PYTORCH_BUILD_VERSION:-${BUILD_VERSION:-2.8.10+xpu}}
    out=$(opt -w "$@")
    mkdir -p "$out"
    echo "$comp $version arch=${TORCH_XPU_ARCH_LIST:-}" >"$out/$comp-$version-cp311-cp311-linux_x86_64.whl"
    echo "Created wheel $comp-$version-cp311-cp311-linux_x86_64.whl"
}

fake_python() {
    if [ "${1:-}" = -c ]; then
        case "$2" in
            *sys.version_info*) echo "${FAKE_PY_VERSION:-3.11.9}" ;;
            *"import torch"*)
                local spec=${FAKE_TORCH:-none}
                [ -f "$state/installed_torch" ] && spec=$(cat "$state/installed_torch")
                if [ "$spec" = none ]; then
                    echo "ModuleNotFoundError: No module named 'torch'" >&2
                    return 1
                fi
                echo "${spec%%:*}"
                echo "${spec#*:}"
                ;;
        esac
        return 0
    fi
    case "${1:-} ${2:-} ${3:-}" in
        "-m pip wheel") fake_pip_wheel "$@" ;;
        "-m pip install")
            local arg name
            for arg in "$@"; do
                name=$(basename "$arg")
                case "$name" in
                    torch-*.whl)
                        mkdir -p "$state"
                        name=${name#torch-}
                        echo "${name%%-*}:1" >"$state/installed_torch"
                        ;;
                esac
            done
            ;;
        "-m wheel unpack")
            local wheel dest base lib
            wheel=$4
            dest=$(opt -d "$@")
            base=$(basename "$wheel")
            base=$(printf '%s' "$base" | cut -d- -f1,2)
            lib="$dest/$base/${base%%-*}/lib"
            mkdir -p "$lib"
            printf 'fake' >"$lib/libfake_a.so"
            printf 'fake' >"$lib/libfake_b.so.1"
            ;;
        "-m wheel pack")
            local tree dest
            tree=$4
            dest=$(opt -d "$@")
            { echo packed; (cd "$tree" && find . | sort); } >"$dest/$(basename "$tree")-cp311-cp311-linux_x86_64.whl"
            ;;
        *)
            echo "fake python: unexpected call: $*" >&2
            return 3
            ;;
    esac
}

fake_simple() {
    case "$tool" in
        gcc) echo "${FAKE_GCC_VERSION:-13.2.0}" ;;
        cmake) echo "cmake version 3.30.2" ;;
        ninja) echo "1.12.1" ;;
        patchelf)
            if [ "${1:-}" = --version ]; then
                echo "patchelf 0.18.0"
            elif [ "${1:-}" = --add-rpath ]; then
                [ -f "${3:-}" ] || return 1
            fi
            ;;
        df)
            local avail=${FAKE_DF_AVAIL_KB:-524288000}
            echo "Filesystem 1024-blocks Used Available Capacity Mounted on"
            echo "fakefs $((avail * 2)) $avail $avail 50% /"
            ;;
    esac
    return 0
}

# --- conda, mamba, micromamba, and what lives in an environment --------------------------------------
make_env_stub() {
    printf '#!/usr/bin/env bash\nexec bash %q %s "$@"\n' "${BASH_SOURCE[0]}" "$2" >"$1"
    chmod +x "$1"
}

fake_conda() {
    if [ "${1:-}" = --version ]; then
        echo "$tool 24.9.2 (fake)"
        return 0
    fi
    local words=() w
    for w in "$@"; do
        case "$w" in -y | --yes | --no-capture-output | --prune) ;; *) words+=("$w") ;; esac
    done
    local name env_dir file
    name=$(opt -n "${words[@]}") || { echo "fake $tool: no -n NAME in: $*" >&2; return 3; }
    env_dir="$state/envs/$name"
    case "${words[0]}" in
        run)
            if [ ! -d "$env_dir" ]; then
                echo "EnvironmentLocationNotFound: Not a conda environment: $env_dir" >&2
                return 1
            fi
            local i=0
            while [ "${words[$i]}" != -n ]; do i=$((i + 1)); done
            CONDA_PREFIX=$env_dir PATH="$env_dir/bin:$PATH" "${words[@]:$((i + 2))}"
            return $?
            ;;
    esac
    file=$(opt -f "${words[@]}")
    case "${words[0]} ${words[1]:-}" in
        "env create" | "create "*)
            if [ -d "$env_dir" ]; then
                echo "fake $tool: prefix already exists: $env_dir" >&2
                return 1
            fi
            mkdir -p "$env_dir/conda-meta" "$env_dir/bin"
            cp "$file" "$env_dir/environment.yml"
            make_env_stub "$env_dir/bin/python" envpython
            make_env_stub "$env_dir/bin/tortoise-xpu" tortoise-xpu
            ;;
        "env update" | "install "*)
            if [ ! -d "$env_dir" ]; then
                echo "fake $tool: no environment $name" >&2
                return 1
            fi
            cp "$file" "$env_dir/environment.yml"
            ;;
        *)
            echo "fake $tool: unexpected call: $*" >&2
            return 3
            ;;
    esac
}

fake_envpython() {
    if [ "${1:-}" = -m ] && [ "${2:-}" = pip ]; then
        return 0
    fi
    # Import tortoise_xpu from the checkout, as the editable install would.
    PYTHONPATH="${FAKE_REPO:-}${PYTHONPATH:+:$PYTHONPATH}" exec "${FAKE_REAL_PYTHON:-python3}" "$@"
}

fake_tortoise_xpu() {
    if [ -n "${FAKE_DEVICES_FAIL:-}" ]; then
        echo "error: RuntimeError: fake driver crash" >&2
        return 1
    fi
    local cpu_only='[{"name": "cpu", "available": true, "reason": null, "device_name": "fake CPU"}]'
    printf '%s\n' "${FAKE_DEVICES:-$cpu_only}"
}

record "$@"
case "$tool" in
    git) fake_git "$@" ;;
    python) fake_python "$@" ;;
    conda | mamba | micromamba) fake_conda "$@" ;;
    envpython) fake_envpython "$@" ;;
    tortoise-xpu) fake_tortoise_xpu "$@" ;;
    *) fake_simple "$@" ;;
esac
