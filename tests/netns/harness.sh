# shellcheck shell=bash
# The QEMU scenario scripts' shared reporting, sourced once W (the work folder) and T0
# (SECONDS at the start) are set: the cleanup on exit (lab_cleanup, then the work folder
# unless KEEP=1) also on INT/TERM/HUP, our own output on fd 3, and the PASS:/FAIL: lines
# the Rust tests read. LABEL names the lines (default: $SCENARIO); SHOW_WIDTH cuts shown
# log lines (default 200).
FAILS=0 PASSES=0

cleanup() {
	trap '' PIPE INT TERM HUP # finish the cleanup whatever happens to our stdout
	lab_cleanup
	if [ "${KEEP:-}" = 1 ]; then echo "work folder kept: $W" >&3; else rm -rf "$W"; fi
}
# Our own output goes to fd 3 (stdout), also while a function's output is redirected.
exec 3>&1
trap cleanup EXIT
trap 'echo "FAIL: interrupted" >&3; exit 130' INT TERM HUP

t() { printf "%4ds" $((SECONDS - T0)); }
pass() {
	echo "PASS: $(t) ${LABEL:-$SCENARIO}: $*" >&3
	PASSES=$((PASSES + 1))
}
fail() {
	echo "FAIL: $(t) ${LABEL:-$SCENARIO}: $*" >&3
	FAILS=$((FAILS + 1))
}
# show FILE [LINES]: its last lines, printable (terminal escapes of consoles removed)
show() {
	[ -f "$1" ] || return 0
	echo "    ---- last lines of ${1#"$W"/}" >&3
	tail -n "${2:-30}" "$1" | tr -d '\r' | sed 's/\x1b\[[0-9;?=]*[A-Za-z]//g' | tr -c '\11\12\40-\176' '?' |
		cut -c1-"${SHOW_WIDTH:-200}" | sed 's/^/    | /' >&3
}
# die MESSAGE [FILE...]: a failure the rest cannot go on from
die() {
	fail "$1"
	shift
	local f
	for f in "$@"; do show "$f"; done
	exit 1
}
check() { if "${@:2}"; then pass "$1"; else fail "$1"; fi; }
# expect DESCRIPTION GOT WANT
expect() { if [ "$2" = "$3" ]; then pass "$1"; else fail "$1: got '$2', want '$3'"; fi; }
