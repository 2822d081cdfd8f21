#!/bin/bash
# End to end through real firmware: a QEMU machine with an empty disk netboots through
# stemcell into the stem cell, which installs Debian 12 from the image `stemcell os build`
# made (kickstarts/debian.sh.j2); the machine reboots by itself and boots Debian from its
# own disk to a login prompt that shows its hostname on the serial console.
#
#   tests/netns/debian.sh SCENARIO [STEMCELL]     # as root; STEMCELL: the binary
#
# SCENARIO:
#   bios     SeaBIOS, e1000 with its iPXE ROM, virtio disk; GPT with a BIOS boot partition
#   uefi     OVMF, virtio-net with its iPXE EFI ROM, virtio disk; GPT with an EFI system
#            partition, GRUB on the removable path
#   corrupt  as bios, but the role names a wrong sha256: the install must end failed, with
#            the mismatch in the machine's events, and never be reported done
#
# Each check prints PASS: or FAIL: with the seconds since the start, and the phases'
# durations (firmware to stem cell, image stream, install, first boot to login) are printed
# as "PHASE name seconds" lines. Exit 1 if any check failed; 77 (with the reason, loudly)
# when this machine cannot run it (not root, no QEMU, OVMF, iPXE or mmdebstrap). Every
# namespace, process and the work folder are removed on exit, also on failure and on
# INT/TERM/HUP; KEEP=1 keeps the work folder (serial console, server log, events).
#
# Environment:
#   STEMCELL_IMAGE  a folder with the stem cell's vmlinuz and initrd.img; without it
#                   `stemcell image build` makes one (cache STEMCELL_CACHE, default
#                   <target>/stemcell-cache)
#   OS_CACHE        the images folder for `stemcell os build` (default <target>/os-cache):
#                   the Debian image is built once and reused while its spec and Debian's
#                   package lists are unchanged
#   OS_SPEC         the OS spec (default examples/lab/os/debian-12.yaml)
set -u
export PATH="$PATH:/usr/sbin:/sbin"
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY no_proxy NO_PROXY
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=../../lab/lib.sh
. "$ROOT/lab/lib.sh"

SCENARIO=${1:-}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
STEMCELL=${2:-${STEMCELL:-$TARGET/debug/stemcell}}
case "$SCENARIO" in
bios | corrupt) FW=bios MAC=52:54:00:de:b1:01 ;;
uefi) FW=uefi-ipxe MAC=52:54:00:de:b1:02 ;;
*)
	echo "usage: $0 bios|uefi|corrupt [STEMCELL]" >&2
	exit 2
	;;
esac
[ "$SCENARIO" = corrupt ] && MAC=52:54:00:de:b1:03

skip() {
	if [ "${CI:-}" = true ]; then
		echo "FAIL: ($SCENARIO) cannot run here under CI=true: $*"
		exit 1
	fi
	echo "!!!!!!!! SKIP ($SCENARIO): $* !!!!!!!!"
	exit 77
}
[ "$(id -u)" = 0 ] || skip "not root (network namespaces, tap devices and mmdebstrap need root)"
command -v qemu-system-x86_64 >/dev/null || skip "no qemu-system-x86_64 (Debian's qemu-system-x86)"
command -v mmdebstrap >/dev/null || skip "no mmdebstrap (scripts/setup-debian.sh installs it)"
for f in /usr/lib/ipxe/undionly.kpxe /usr/lib/ipxe/snponly.efi /usr/lib/ipxe/qemu/efi-e1000.rom /usr/lib/ipxe/qemu/efi-virtio.rom; do
	[ -r $f ] || skip "no $f (Debian's ipxe, ipxe-qemu)"
done
[ "$FW" = bios ] || [ -r /usr/share/ovmf/OVMF.fd ] || skip "no /usr/share/ovmf/OVMF.fd (Debian's ovmf)"
[ -c /dev/net/tun ] || skip "no /dev/net/tun"
[ -x "$STEMCELL" ] || {
	echo "FAIL: no stemcell binary at $STEMCELL"
	exit 1
}

T0=$SECONDS
NS=scdeb-$$
W=$(mktemp -d "/tmp/$NS-$SCENARIO.XXXXXX")
chmod 755 "$W"
D=$W/srv
HOST=deb-$SCENARIO
DISK=$W/disk.img
FAILS=0 PASSES=0 QEMU_PID='' SERIAL=$W/console.log

cleanup() {
	trap '' PIPE INT TERM HUP
	lab_cleanup
	if [ "${KEEP:-}" = 1 ]; then echo "work folder kept: $W" >&3; else rm -rf "$W"; fi
}
exec 3>&1
trap cleanup EXIT
trap 'echo "FAIL: interrupted" >&3; exit 130' INT TERM HUP

t() { printf "%4ds" $((SECONDS - T0)); }
pass() {
	echo "PASS: $(t) $SCENARIO: $*" >&3
	PASSES=$((PASSES + 1))
}
fail() {
	echo "FAIL: $(t) $SCENARIO: $*" >&3
	FAILS=$((FAILS + 1))
}
phase() { echo "PHASE $SCENARIO $1 $2" >&3; }
show() {
	[ -f "$1" ] || return 0
	echo "    ---- last lines of ${1#"$W"/}" >&3
	tail -n "${2:-30}" "$1" | tr -d '\r' | sed 's/\x1b\[[0-9;?=]*[A-Za-z]//g' | tr -c '\11\12\40-\176' '?' | cut -c1-200 | sed 's/^/    | /' >&3
}
die() {
	fail "$1"
	shift
	local f
	for f in "$@"; do show "$f"; done
	echo "== $SCENARIO: $PASSES passed, $((FAILS)) failed, $((SECONDS - T0)) s" >&3
	exit 1
}
events() { lab_events "$NS" "$MAC" >"$W/events.txt"; }
state_is() { [ "$(lab_state "$NS" "$MAC")" = "$1" ]; }
# seen REGEX SECONDS: wait for REGEX on the console (QEMU exiting ends the wait); sets AT
# to the seconds since power-on.
seen() {
	local re=$1
	# A failure the stem cell prints ends the wait early (unless it is what we wait for).
	[[ $re == *failed* ]] || re="$re|^stemcell: install failed"
	if lab_wait "$2" "$QEMU_PID" lab_seen "$SERIAL" "$re" && lab_seen "$SERIAL" "$1"; then
		AT=$((SECONDS - ON))
		return 0
	fi
	return 1
}

# ---- the stem cell and the OS image ----------------------------------------------------------
IMAGE=${STEMCELL_IMAGE:-}
if [ -z "$IMAGE" ]; then
	IMAGE=$W/image
	"$STEMCELL" image build --out "$IMAGE" --cache "${STEMCELL_CACHE:-$TARGET/stemcell-cache}" \
		>"$W/image-build.txt" 2>&1 || die "stemcell image build failed" "$W/image-build.txt"
	pass "stem cell built: $(sed -n 's/^ *\(.*initrd.img.*\)/\1/p' "$W/image-build.txt" | head -n 1)"
fi
OS_CACHE=${OS_CACHE:-$TARGET/os-cache}
# A fixed epoch: the image is rebuilt only when its spec or Debian's package lists change.
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1735689600}
t1=$SECONDS
"$STEMCELL" os build --spec "${OS_SPEC:-$ROOT/examples/lab/os/debian-12.yaml}" --out "$OS_CACHE" \
	>"$W/os-build.txt" 2>&1 || die "stemcell os build failed" "$W/os-build.txt"
pass "OS image: $(grep -a '^os ' "$W/os-build.txt" | cut -c1-60) ($((SECONDS - t1)) s)"
CUR=$OS_CACHE/debian-12/current.json
SHA=$(sed -n 's/.*"sha256": "\([0-9a-f]*\)".*/\1/p' "$CUR")
SIZE=$(sed -n 's/.*"size": \([0-9]*\).*/\1/p' "$CUR")
[ ${#SHA} = 64 ] || die "no sha256 in $CUR"
echo "    image sha256 $SHA, $SIZE bytes" >&3

# ---- stemcell, with the image under /assets/ -----------------------------------------------------
lab_config "$D" authoritative "$IMAGE"
cp "$ROOT/kickstarts/debian.sh.j2" "$D/kickstarts/"
mkdir -p "$D/assets/os/debian-12"
ln "$OS_CACHE/debian-12/$SHA.tar.zst" "$D/assets/os/debian-12/" 2>/dev/null ||
	cp "$OS_CACHE/debian-12/$SHA.tar.zst" "$D/assets/os/debian-12/"
echo "assets: assets" >>"$D/stemcell.yaml"
WANT_SHA=$SHA
if [ "$SCENARIO" = corrupt ]; then
	# One digit off: the stream itself is fine, so only the check can catch it.
	case "$SHA" in *0) WANT_SHA=${SHA%?}1 ;; *) WANT_SHA=${SHA%?}0 ;; esac
fi
cat >"$D/inventory.yaml" <<EOF
defaults:
  unknown: ignore
roles:
  debian:
    template: debian.sh.j2
    vars:
      os_url: /assets/os/debian-12/$SHA.tar.zst
      os_sha256: "$WANT_SHA"
      os_size: "$SIZE"
      console: ttyS0,115200
      ssh_keys:
        - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHN0ZW1jZWxsLWxhYi10ZXN0LWtleS1ub3QtcmVhbA lab@stemcell
machines:
  "$MAC":
    hostname: $HOST
    role: debian
    vars: { disk: /dev/vda }
EOF
lab_netns "$NS" && lab_bridge "$NS" && lab_tap "$NS" tap0 || die "cannot set up namespace $NS"
lab_serve "$NS" "$STEMCELL" "$D" || die "stemcell did not come up" "$D/check.txt" "$D/server.log"
pass "stemcell serves (authoritative DHCP, TFTP, HTTP with /assets/ in $NS)"
code=$(lab_api "$NS" "/assets/os/debian-12/$SHA.tar.zst" -o /dev/null -I -w '%{http_code}')
[ "$code" = 200 ] || die "the image is not served at /assets/os/debian-12/ (HTTP $code)" "$D/server.log"

# ---- power on: install ------------------------------------------------------------------------
truncate -s 4G "$DISK"
ON=$SECONDS
LAB_DISK_BUS=virtio lab_qemu "$NS" "$FW" tap0 "$MAC" "$DISK" "$SERIAL" -m 1536 -smp 2 || die "QEMU did not start"
QEMU_PID=$LAB_PID
echo "== power-on: $FW, empty 4 GiB disk, network first" >&3

seen "^stemcell: stem cell starting" 300 || die "no stem cell within 300 s" "$SERIAL"
phase firmware_to_stemcell "$AT"
STEM=$AT
pass "the stem cell starts ($AT s after power-on)"

if [ "$SCENARIO" = corrupt ]; then
	seen "^stemcell: install failed" 1200 || die "the install did not fail" "$SERIAL" "$D/server.log"
	pass "the install fails ($AT s after power-on): $(grep -a '^stemcell: install failed' "$SERIAL" | tr -d '\r' | cut -c1-160)"
	if lab_wait 30 "" state_is failed; then pass "state failed"; else fail "state is $(lab_state "$NS" "$MAC"), not failed"; fi
	events
	if grep -qE $'^failed\t.*sha256 mismatch: got [0-9a-f]{64}, want '"$WANT_SHA" "$W/events.txt"; then
		pass "the failed event names the reason: $(grep -a $'^failed\t' "$W/events.txt" | cut -f2 | cut -c1-140)"
	else
		fail "no 'sha256 mismatch' in a failed event"
		show "$W/events.txt" 20
	fi
	n=$(grep -c $'^done\t' "$W/events.txt")
	if [ "$n" = 0 ]; then pass "never reported done"; else fail "$n done events"; fi
	echo "== $SCENARIO: $PASSES passed, $FAILS failed, $((SECONDS - T0)) s" >&3
	[ "$FAILS" = 0 ]
	exit
fi

seen "^install: streaming the image" 600 || die "the install did not reach the image" "$SERIAL"
S0=$AT
seen "^install: image ok" 1500 || die "the image did not unpack" "$SERIAL" "$D/server.log"
phase image_stream $((AT - S0))
pass "image streamed and checked ($((AT - S0)) s): $(grep -a '^install: image ok' "$SERIAL" | tr -d '\r' | cut -c1-120)"
seen "^stemcell: install done" 900 || die "the install did not finish" "$SERIAL" "$D/server.log"
phase install $((AT - STEM))
DONE=$AT
pass "install done ($AT s after power-on; $((AT - STEM)) s in the stem cell)"
if lab_wait 30 "" state_is installed; then pass "state installed"; else fail "state is $(lab_state "$NS" "$MAC"), not installed"; fi
if [ "$FW" != bios ]; then
	# An NVRAM entry exists, and the network stays first: stemcell decides every boot.
	nv=$(grep -a '^install: NVRAM: ' "$SERIAL" | tr -d '\r' | tail -n 1)
	entry=$(echo "$nv" | sed -n 's/^install: NVRAM: Boot\([0-9A-Fa-f]\{4\}\) debian;.*/\1/p')
	order=$(echo "$nv" | sed -n 's/.*BootOrder \([0-9A-Fa-f,]*\).*/\1/p')
	if [ -n "$entry" ] && [ "${order##*,}" = "$entry" ] && [ "${order%%,*}" != "$entry" ]; then
		pass "UEFI: NVRAM entry Boot$entry (debian), last in BootOrder $order"
	else
		fail "UEFI: no NVRAM entry last in the boot order: '${nv:-no NVRAM line}'"
	fi
fi

# ---- the reboot: Debian from the disk ------------------------------------------------------------
if seen "^$HOST login:" 900; then
	phase first_boot_to_login $((AT - DONE))
	pass "Debian boots from its disk to a login prompt ($((AT - DONE)) s after the install; $AT s after power-on): $(grep -a "$HOST login:" "$SERIAL" | tail -n 1 | tr -d '\r' | cut -c1-80)"
else
	die "no '$HOST login:' on the serial console within 900 s of the install" "$SERIAL"
fi
if lab_seen "$SERIAL" "Debian GNU/Linux 12 $HOST ttyS0"; then
	pass "the console's banner: $(grep -a "Debian GNU/Linux 12 $HOST" "$SERIAL" | tail -n 1 | tr -d '\r' | cut -c1-80)"
else
	fail "no 'Debian GNU/Linux 12 $HOST ttyS0' banner"
fi
if [ "$(lab_count "$SERIAL" '^stemcell: stem cell starting')" = 1 ]; then
	pass "the second boot did not start the stem cell again"
else
	fail "the stem cell started $(lab_count "$SERIAL" '^stemcell: stem cell starting') times"
fi
events
if grep -q $'^boot\t.*installed, boot from local disk' "$W/events.txt"; then
	pass "the reboot was told to boot from the local disk"
else
	fail "no 'boot from local disk' boot script after the install"
fi
# Debian asks DHCP for its own address on the boot NIC (systemd-networkd, matched by MAC):
# after the install's `done`, a DHCPACK with no boot file (firmware and iPXE get one).
debian_lease() {
	events
	sed '1,/^done	/d' "$W/events.txt" | grep -E $'^dhcp	.*DHCPACK' | grep -qv 'boot file'
}
if lab_wait 120 "" debian_lease; then
	pass "the installed Debian took a DHCP lease on its boot NIC (systemd-networkd): $(sed '1,/^done	/d' "$W/events.txt" | grep -E $'^dhcp	.*DHCPACK' | grep -v 'boot file' | tail -n 1 | cut -f2)"
else
	fail "no DHCP lease from the installed Debian within 120 s"
	show "$W/events.txt" 15
fi
lab_stop "$QEMU_PID"
if [ "${KEEP:-}" = 1 ]; then cp "$DISK" "$W/disk-after.img" 2>/dev/null || true; fi
echo "== $SCENARIO: $PASSES passed, $FAILS failed, $((SECONDS - T0)) s" >&3
[ "$FAILS" = 0 ]
