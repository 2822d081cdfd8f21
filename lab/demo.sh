#!/bin/bash
# The stemcell lab demo: one machine, from power-on to Debian 12 with its role applied.
#
#   1. builds stemcell (cargo build --release), the stem cell, the small kernel and initrd
#      every machine netboots (stemcell image build, into target/stemcell), and the lab's
#      Debian 12 image from Debian's packages (stemcell os build debian-12, with mmdebstrap,
#      into target/os-images; cached: rebuilt only when its spec or Debian's package lists
#      change, about 2 minutes when they do);
#   2. makes a private network namespace with a bridge (br0, 198.18.0.1/24) and a tap
#      device, the lab's network: nothing here touches the host's own network;
#   3. starts stemcell there with the example lab (examples/lab: authoritative DHCP, TFTP,
#      HTTP, the OS image, the Puppet code in examples/lab/puppet; its state in a scratch
#      folder);
#   4. powers on web01 (52:54:00:12:34:56), a QEMU machine with SeaBIOS, an e1000 NIC with
#      its iPXE ROM and an empty disk, network first: it netboots the stem cell, which
#      streams Debian 12 onto the disk and reboots; Debian boots to a login prompt, phones
#      home and applies its role with Puppet (nginx serving a page);
#   5. prints what to watch meanwhile (the machine's events and the key lines of its serial
#      console), then fetches web01's page from outside the machine and how long each
#      phase took: firmware, stem cell, image stream, first boot, Puppet.
# Everything it makes is removed at the end, also on Ctrl-C or failure; KEEP=1 keeps the
# work folder (serial console, server log). Run as root on Debian 12. Takes about 10
# minutes (QEMU emulates the machine: KVM is not used).
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
# A fixed epoch: the image's cache key holds from run to run (same spec, same package lists).
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1735689600} \
	"$BIN" os build debian-12 --config examples/lab/stemcell.yaml --out "$TARGET/os-images" ||
	die "stemcell os build debian-12 failed"

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
	-e "s#^os: [^ ]*#os: $ROOT/examples/lab/os#" \
	-e "s#^images: [^ ]*#images: $TARGET/os-images#" \
	-e "s#^puppet: [^ ]*#puppet: $ROOT/examples/lab/puppet#" \
	-e "s#^  kernel: .*#  kernel: $TARGET/stemcell/vmlinuz#" \
	-e "s#^  initrd: .*#  initrd: $TARGET/stemcell/initrd.img#" \
	examples/lab/stemcell.yaml >"$D/stemcell.yaml"
lab_check "$BIN" "$D" || die "stemcell check failed" "$D/check.txt"
lab_serve "$NS" "$BIN" "$D" || die "stemcell did not start" "$D/server.log"
sed -n 's/.*INFO //p' "$D/server.log" | sed 's/^/    /'
echo "    the inventory page, from inside the lab: ip netns exec $NS curl -s $LAB_URL/"

# ---------------------------------------------------------------------------------------
step "power on web01 ($MAC): SeaBIOS, e1000 + iPXE ROM, 2 GiB, an empty 4 GB disk, network first"
DISK=$W/web01.img
truncate -s 4G "$DISK"
SERIAL=$W/web01-console.log
ON=$SECONDS
ON_MS=$(date +%s%3N)
LAB_DISK_BUS=virtio lab_qemu "$NS" bios tap0 "$MAC" "$DISK" "$SERIAL" -m 2048 -smp 2 || die "QEMU did not start"
QEMU=$LAB_PID
cat <<EOF
    What to watch (each line: seconds since power-on, then who speaks):
      console  the machine's serial console: firmware, iPXE, the stem cell, the install,
               Debian booting, its login prompt
      event    what stemcell recorded for it (GET /api/v1/machines/$MAC): DHCP, boot script,
               kernel and initrd, install script, the install's log lines, done, the next
               boot, then the installed system's reports: booted, Puppet's run, configured
    Its whole console is in $SERIAL.

EOF

# Console lines worth showing; the rest (kernel messages, menus) stays in the file.
KEY='SeaBIOS \(version|iPXE initialising|^Configuring \(net0.*ok|^Filename:|^http://[^ ]*\.\.\. ok|^stemcell|^install: (partitioning|streaming|image ok|GRUB for|.* installed:)|^Booting from|^Welcome to |login:|stemcell-converge:'
shown_events=0 shown_lines=0
show_new() {
	local n
	lab_events "$NS" "$MAC" >"$W/events.txt" 2>/dev/null
	n=$(wc -l <"$W/events.txt")
	if [ "$n" -gt "$shown_events" ]; then
		tail -n +$((shown_events + 1)) "$W/events.txt" | head -n $((n - shown_events)) |
			while IFS=$'\t' read -r kind msg; do
				printf '%4ds  event    %-8s %s\n' $((SECONDS - ON)) "$kind" "${msg:0:150}"
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
# Until Puppet has reported: the machine's state says configured (or config-failed).
state=
until [ "$state" = configured ] || [ "$state" = config-failed ] || [ "$state" = failed ]; do
	kill -0 "$QEMU" 2>/dev/null || die "the machine (QEMU) stopped" "$SERIAL.qemu"
	[ $((SECONDS - ON)) -lt 1800 ] || die "web01 did not reach configured in 30 minutes (state ${state:-none})" "$SERIAL"
	show_new
	sleep 1
	state=$(lab_state "$NS" "$MAC")
done
show_new
[ "$state" = configured ] || die "web01 ended $state" "$W/events.txt"

# ---------------------------------------------------------------------------------------
step "web01 runs Debian 12, configured by Puppet ($((SECONDS - ON)) s from power-on)"
API=$(lab_api "$NS" "/api/v1/machines/$MAC")
IP=$(jq -r '.ip // empty' <<<"$API")
echo "    console: $(grep -a 'login:' "$SERIAL" | tail -n 1 | tr -d '\r' | sed 's/login:.*/login:/')"
echo "    state:   $state; Puppet: $(jq -r '.last_run | "exit \(.exit), \(.changed) changed, \(.failed) failed of \(.total) resources"' <<<"$API")"
echo "    OS:      image $(jq -r '.os_image[0:16]' <<<"$API")…, Puppet bundle $(jq -r '.last_run.bundle[0:16]' <<<"$API")…"
page=$(ip netns exec "$NS" curl -sf --max-time 10 "http://$IP/") || die "web01's page at http://$IP/ does not answer"
echo "    from outside the machine: curl http://$IP/ -> $page"

step "how long each phase took"
# The API's timestamps (ms) of each phase's start; power-on is this script's clock.
read -r nb im in bo co < <(jq -r '.phases | [.netboot, .image, .installed, .booted, .configured] | map(. // 0) | @tsv' <<<"$API")
phase() { awk -v a="$2" -v b="$3" -v what="$1" -v why="$4" 'BEGIN { printf "    %-13s %6.1f s   %s\n", what, (b - a) / 1000, why }'; }
phase firmware "$ON_MS" "$nb" "power-on, SeaBIOS, iPXE, DHCP, until stemcell's boot script"
phase "stem cell" "$nb" "$im" "kernel and initrd, the stem cell boots, DHCP, install script, partitions"
phase "image stream" "$im" "$in" "$(grep -a '^install: image ok' "$SERIAL" | tr -d '\r' | sed -n 's/.*unpacked \([0-9]*\) MiB in \([0-9.]*\) s.*/\1 MiB streamed, checked and unpacked in \2 s; then GRUB/p')"
phase "first boot" "$in" "$bo" "reboot, GRUB, Debian up, its network, phoning home"
phase Puppet "$bo" "$co" "the bundle fetched, Puppet applies role web ($(jq -r '.last_run.millis / 1000' <<<"$API") s of Puppet's own)"
phase total "$ON_MS" "$co" "power-on to configured"
cat <<EOF

    From here web01 boots its own disk on every power-on, and Puppet keeps it converged
    (at every boot and every 30 minutes), until an operator re-arms it:
      stemcell reinstall $MAC --config examples/lab/stemcell.yaml
    tests/netns/debian.sh checks all of that (and UEFI, a failing role, a replacement
    machine that comes back as the same host, a corrupt and a truncated image).
EOF
echo "    demo took $((SECONDS - T0)) s"
