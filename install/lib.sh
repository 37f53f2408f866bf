# shellcheck shell=bash
# Helpers shared by install/setup-env.sh and install/compile/build-xpu-wheels.sh (sourced, not run).

say() { printf '%s\n' "$*"; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() {
    local code=$1
    shift
    printf 'error: %s\n' "$*" >&2
    exit "$code"
}
# The comment block at the top of the running script is its help text.
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

# Quote a command line for display, so that it can be pasted into a shell: words with shell-special
# characters go in single quotes. With SHOW_CMD_BARE_STAR=1, `*` stays bare (a build plan uses it
# for a file name known only after the build).
show_cmd() {
    local out="" word pattern='*[!A-Za-z0-9_./:=,+@%^-]*'
    [ "${SHOW_CMD_BARE_STAR:-0}" = 1 ] && pattern='*[!A-Za-z0-9_./:=,+@%^*-]*'
    for word in "$@"; do
        # shellcheck disable=SC2254  # $pattern is a glob pattern on purpose
        case "$word" in
            $pattern|"") word="'${word//\'/\'\\\'\'}'" ;;
        esac
        out="$out${out:+ }$word"
    done
    printf '%s\n' "$out"
}
