#!/bin/bash
# The stemcell lab demo: one machine, from power-on to its installed system.
#
#   1. builds stemcell (cargo build --release) and the stem cell, the small kernel and
#      initrd every machine netboots (stemcell image build, into target/stemcell);
#   2. makes a private network namespace with a bridge (br0, 198.18.0.1/24) and a tap
#      device, the lab's network: nothing here touches the host's own network;
#   3. starts stemcell there with the example lab (examples/lab: authoritative DHCP, TFTP,
#      HTTP; its state in a scratch folder);
#   4. powers on web01 (52:54:00:12:34:56), a QEMU machine with SeaBIOS, an e1000 NIC with
#      its iPXE ROM and an empty disk, network first; it netboots the stem cell, which
#      installs it, reboots, and boots its own disk;
#   5. prints what to watch meanwhile: the machine's events as stemcell records them, and
#      the key lines of its serial console.
# Everything it makes is removed at the end, also on Ctrl-C or failure; KEEP=1 keeps the
# work folder (serial console, server log). Run as root on Debian 12. Takes a few minutes
# (QEMU emulates the machine: KVM is not used).
set -u
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
# shellcheck source=lib.sh
. lab/lib.sh
# curl talks to the lab's 198.18.0.1 directly, never through a proxy.
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY

[ "$(id -u)" = 0 ] || { echo "lab/demo.sh: run it as root (namespaces and tap devices need root)" >&2; exit 1; }

NS=stemcell-demo-$$
MAC=52:54:00:12:34:56
W=$(mktemp -d "/tmp/stemcell-demo-$$.XXXXXX")
chmod 755 "$W"
T0=$SECONDS

cleanup() {
	trap '' INT TERM HUP PIPE
	step "cleaning up: stopping stemcell and the machine, deleting namespace $NS"
	lab_cleanup
	if [ "${KEEP:-}" = 1 ]; then echo "work folder kept: $W"; else rm -rf "$W"; fi
}
trap cleanup EXIT
trap 'echo; echo "interrupted"; exit 130' INT TERM HUP

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
die() {
	printf '\033[31mdemo failed: %s\033[0m\n' "$1"
	[ -n "${2:-}" ] && [ -f "$2" ] && tail -n 30 "$2" | sed 's/^/    | /'
	exit 1
}

# ---------------------------------------------------------------------------------------
step "building: what the lab needs (Debian packages), stemcell, the stem cell"
bash scripts/setup-debian.sh || die "scripts/setup-debian.sh failed"
export PATH="$HOME/.cargo/bin:$PATH:/usr/sbin:/sbin"
cargo build --release --locked || die "cargo build failed"
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET/release/stemcell
# Debian's kernel package is downloaded once into the cache.
"$BIN" image build --out "$TARGET/stemcell" --cache "$TARGET/stemcell-cache" || die "stemcell image build failed"

# ---------------------------------------------------------------------------------------
step "the lab's network: namespace $NS, bridge br0 at 198.18.0.1/24, tap0 on it for the machine"
{ lab_netns "$NS" && lab_bridge "$NS" && lab_tap "$NS" tap0; } || die "cannot set up the namespace"
ip -n "$NS" -br addr show br0

step "stemcell serve, inside $NS, with examples/lab (its state in a scratch folder)"
D=$W/lab
mkdir -p "$D"
sed -e "s#^state_dir: .*#state_dir: $D/state#" \
	-e "s#^inventory: .*#inventory: $ROOT/examples/lab/inventory.yaml#" \
	-e "s#^kickstarts: .*#kickstarts: $ROOT/kickstarts#" \
	-e "s#^admin_token_file: .*#admin_token_file: $ROOT/examples/lab/admin.token#" \
	-e "s#^  kernel: .*#  kernel: $TARGET/stemcell/vmlinuz#" \
	-e "s#^  initrd: .*#  initrd: $TARGET/stemcell/initrd.img#" \
	examples/lab/stemcell.yaml >"$D/stemcell.yaml"
lab_check "$BIN" "$D" || die "stemcell check failed" "$D/check.txt"
lab_serve "$NS" "$BIN" "$D" || die "stemcell did not start" "$D/server.log"
sed -n 's/.*INFO //p' "$D/server.log" | sed 's/^/    /'
echo "    the inventory page, from inside the lab: ip netns exec $NS curl -s $LAB_URL/"

# ---------------------------------------------------------------------------------------
step "power on web01 ($MAC): SeaBIOS, e1000 + iPXE ROM, an empty 1 GB disk, network first"
DISK=$W/web01.img
truncate -s 1G "$DISK"
SERIAL=$W/web01-console.log
LAB_DISK_BUS=virtio lab_qemu "$NS" bios tap0 "$MAC" "$DISK" "$SERIAL" || die "QEMU did not start"
QEMU=$LAB_PID
cat <<EOF
    What to watch (each line: seconds since power-on, then who speaks):
      console  the machine's serial console: firmware, iPXE, the stem cell, the installed system
      event    what stemcell recorded for it (GET /api/v1/machines/$MAC): DHCP, boot script,
               kernel and initrd, install script, the install's log lines, done, the next boot
    The machine installs, reboots by itself, is told to boot its own disk, and prints
    "stemcell-installed: host=web01 role=web". Its whole console is in $SERIAL.

EOF

# Console lines worth showing; the rest (kernel messages, menus) stays in the file.
KEY='SeaBIOS \(version|iPXE initialising|^Configuring \(net0.*ok|^Filename:|^http://[^ ]*\.\.\. ok|^stemcell|^Booting from'
ON=$SECONDS
shown_events=0 shown_lines=0
show_new() {
	local n
	lab_events "$NS" "$MAC" >"$W/events.txt" 2>/dev/null
	n=$(wc -l <"$W/events.txt")
	if [ "$n" -gt "$shown_events" ]; then
		tail -n +$((shown_events + 1)) "$W/events.txt" | head -n $((n - shown_events)) |
			while IFS=$'\t' read -r kind msg; do
				printf '%4ds  event    %-8s %s\n' $((SECONDS - ON)) "$kind" "$msg"
			done
		shown_events=$n
	fi
	[ -f "$SERIAL" ] || return 0
	n=$(wc -l <"$SERIAL") # complete lines only
	if [ "$n" -gt "$shown_lines" ]; then
		sed -n "$((shown_lines + 1)),${n}p" "$SERIAL" | tr -d '\r' | sed 's/\x1b\[[0-9;?=]*[A-Za-z]//g; s/\x1bc//g' |
			grep -aE "$KEY" | cut -c1-140 | while IFS= read -r line; do
			printf '%4ds  console  %s\n' $((SECONDS - ON)) "$line"
		done
		shown_lines=$n
	fi
}
until lab_seen "$SERIAL" "^stemcell-installed:"; do
	kill -0 "$QEMU" 2>/dev/null || die "the machine (QEMU) stopped" "$SERIAL.qemu"
	[ $((SECONDS - ON)) -lt 900 ] || die "no installed system after 15 minutes" "$SERIAL"
	show_new
	sleep 1
done
show_new

# ---------------------------------------------------------------------------------------
step "web01 runs its installed system ($((SECONDS - ON)) s from power-on)"
echo "    state: $(lab_state "$NS" "$MAC")"
echo "    console: $(grep -a '^stemcell-installed:' "$SERIAL" | tr -d '\r')"
cat <<EOF
    From here the machine boots its own disk on every power-on (stemcell's boot script
    says so) until an operator re-arms it:
      curl -X POST -H "Authorization: Bearer \$(cat examples/lab/admin.token)" \\
           $LAB_URL/api/v1/machines/$MAC/reinstall
    tests/netns/pxe.sh checks all of that (and UEFI, proxy mode, a failing install).
EOF
echo "    demo took $((SECONDS - T0)) s"
