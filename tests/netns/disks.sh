#!/bin/bash
# The target disk by a stable rule, in a real stem cell: a QEMU machine (SeaBIOS, e1000 with
# its iPXE ROM) with three disks netboots through stemcell's DHCP and HTTP into the stem
# cell, whose install script (a test template that includes kickstarts/snippets/disk.sh.j2
# and writes nothing) applies the machine's `disk:` rule to what the stem cell's disk lister
# sees:
#   - virtio-blk "BIG" (2 GiB, serial BIG-PID) in PCI slot 4: the kernel calls it vda
#   - virtio-blk "SMALL" (1 GiB, serial SMALL-PID) in slot 5: vdb
#   - a USB stick (256 MiB, usb-storage on qemu-xhci, removable): sda, the name the old
#     default `vars.disk: /dev/sda` would have wiped
# Power-on 1, no `disk:` rule (the default: exactly one non-removable disk): the install
# refuses; the machine is failed, and its failed event lists all three disks (name, size,
# model, serial, by_path). Then the inventory gets `disk: { serial: SMALL-PID }` (hot
# reload), the machine is re-armed, and power-on 2 picks vdb, not vda (the first disk) nor
# sda: the install's log line names it and why, and the machine is installed. Power-on 3,
# `disk: { raid1: true }`: both virtio disks (not the stick), partitioned and made into an
# md RAID 1 by the stem cell's sfdisk and mdadm, without udev (the debian template's steps
# up to the array).
#
#   tests/netns/disks.sh [STEMCELL]      # as root; STEMCELL: the binary
#
# Each check prints PASS: or FAIL:; exit 1 if any failed, 77 (with the reason, loudly) when
# this machine cannot run it (not root, no QEMU or iPXE). Everything it makes (namespace,
# processes, the work folder) is removed on exit, also on failure and on INT/TERM/HUP;
# KEEP=1 keeps the work folder.
#
# Environment:
#   STEMCELL_IMAGE     a folder with the stem cell's vmlinuz and initrd.img (else built into
#                      the work folder with STEMCELL_CACHE)
#   DISKS_PREFLIGHT=1  only check that it can run here: exit 0, or 77 with the reason
set -u
export PATH="$PATH:/usr/sbin:/sbin"
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY no_proxy NO_PROXY
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=../../lab/lib.sh
. "$ROOT/lab/lib.sh"

STEMCELL=${1:-${STEMCELL:-${CARGO_TARGET_DIR:-$ROOT/target}/debug/stemcell}}

skip() {
	echo "!!!!!!!! SKIP (disks): $* !!!!!!!!"
	exit 77
}
[ "$(id -u)" = 0 ] || skip "not root (network namespaces and tap devices need root)"
command -v qemu-system-x86_64 >/dev/null || skip "no qemu-system-x86_64 (Debian's qemu-system-x86)"
[ -r /usr/lib/ipxe/qemu/efi-e1000.rom ] || skip "no /usr/lib/ipxe/qemu/efi-e1000.rom (Debian's ipxe-qemu)"
for t in curl ip; do command -v $t >/dev/null || skip "no $t"; done
[ -c /dev/net/tun ] || skip "no /dev/net/tun"
[ "${DISKS_PREFLIGHT:-}" = 1 ] && exit 0
[ -x "$STEMCELL" ] || {
	echo "FAIL: no stemcell binary at $STEMCELL" >&2
	exit 1
}

T0=$SECONDS
P=scdk-$$
SRV=$P-srv
W=$(mktemp -d "/tmp/$P.XXXXXX")
chmod 755 "$W"
D=$W/srv
MAC=52:54:00:5e:0d:01
BIG=BIG-$$
SMALL=SMALL-$$
QEMU_PID='' SERIAL='' LABEL=disks SHOW_WIDTH=400

# shellcheck source=harness.sh
. "$ROOT/tests/netns/harness.sh"

events() { lab_events "$SRV" "$MAC" >"$W/events.txt"; }
has_event() { events && grep -qE "^$1"$'\t'"$2" "$W/events.txt"; }
state_is() { [ "$(lab_state "$SRV" "$MAC")" = "$1" ]; }

# power_on N: the machine, its serial console in $W/power-on-N.log. Disks in an order that
# makes the kernel's names differ from the rule's: BIG first (vda), SMALL second (vdb),
# and the USB stick (sda).
power_on() {
	ON=$SECONDS
	SERIAL=$W/power-on-$1.log
	lab_bg "$SRV" "$SERIAL.qemu" qemu-system-x86_64 -accel tcg -m 512 -nographic -monitor none \
		-serial "file:$SERIAL" -boot n \
		-netdev tap,id=n0,ifname=tap0,script=no,downscript=no \
		-device "e1000,netdev=n0,mac=$MAC,addr=0x3" \
		-drive "if=none,id=big,file=$W/big.img,format=raw" \
		-device "virtio-blk-pci,drive=big,serial=$BIG,addr=0x4" \
		-drive "if=none,id=small,file=$W/small.img,format=raw" \
		-device "virtio-blk-pci,drive=small,serial=$SMALL,addr=0x5" \
		-device qemu-xhci,id=xhci,addr=0x6 \
		-drive "if=none,id=stick,file=$W/stick.img,format=raw" \
		-device usb-storage,bus=xhci.0,drive=stick,removable=on
	QEMU_PID=$LAB_PID
}
power_off() {
	lab_stop "$QEMU_PID"
	QEMU_PID=
}
# serial REGEX SECONDS WHAT
serial() {
	if lab_wait "$2" "$QEMU_PID" lab_seen "$SERIAL" "$1"; then
		pass "$3 ($((SECONDS - ON)) s after power-on)"
	else
		kill -0 "$QEMU_PID" 2>/dev/null || echo "    QEMU exited" >&3
		die "$3: no /$1/ on the serial console within $2 s" "$SERIAL" "$SERIAL.qemu" "$D/server.log"
	fi
}

# ---- the image ---------------------------------------------------------------------------
IMAGE=${STEMCELL_IMAGE:-}
if [ -z "$IMAGE" ]; then
	IMAGE=$W/image
	lab_build_image "$STEMCELL" "$IMAGE" "${STEMCELL_CACHE:-${CARGO_TARGET_DIR:-$ROOT/target}/stemcell-cache}" \
		>"$W/image-build.txt" 2>&1 || die "stemcell image build failed" "$W/image-build.txt"
fi
{ [ -r "$IMAGE/vmlinuz" ] && [ -r "$IMAGE/initrd.img" ]; } || die "no vmlinuz and initrd.img in $IMAGE"

# ---- the network and stemcell ------------------------------------------------------------
lab_netns "$SRV" || die "cannot create namespace $SRV"
{ lab_bridge "$SRV" && lab_tap "$SRV" tap0; } || die "cannot set up br0 and tap0 in $SRV"
lab_config "$D" authoritative "$IMAGE"
cat >"$D/kickstarts/disktest.sh.j2" <<'EOF'
#!/bin/sh
# The disk rule in a real stem cell, writing nothing (tests/netns/disks.sh).
set -eu
say() { echo "install: $*"; }
die() {
	echo "install: FAILED: $*"
	exit 1
}
{% include "snippets/disk.sh.j2" %}
pick_disks
if [ "${DISK_RULE_RAID1}" = 1 ]; then
	# what debian.sh.j2 does for raid1, up to the array: the stem cell's sfdisk, mdadm and
	# md modules, without udev
	for d in ${DISKS}; do
		printf 'label: gpt\ntype=A19D880F-05FC-4D3B-A006-743F0F84911E, name="root"\n' |
			/usr/sbin/sfdisk --quiet --wipe always "${d}" || die "sfdisk ${d}"
	done
	i=0
	until [ -b "${DISK}1" ] && [ -b "${DISK2}1" ]; do
		i=$((i + 1))
		[ "${i}" -gt 10 ] && die "no partitions ${DISK}1 ${DISK2}1"
		sleep 1
	done
	modprobe -q raid1 || true
	/usr/sbin/mdadm --create /dev/md0 --run --level=1 --raid-devices=2 --metadata=1.2 \
		--name=root "${DISK}1" "${DISK2}1" 2>&1 || die "mdadm --create failed"
	say "disktest: raid1 $(grep '^md0' /proc/mdstat)"
	exit 0
fi
say "disktest: would install onto ${DISKS}; nothing written"
EOF
inventory() {
	cat >"$D/inventory.yaml.new" <<EOF
defaults:
  unknown: ignore
roles:
  disktest:
    template: disktest.sh.j2
machines:
  "$MAC":
    hostname: disktest
    role: disktest
$1
EOF
	mv "$D/inventory.yaml.new" "$D/inventory.yaml"
}
inventory ""
lab_check "$STEMCELL" "$D" || die "stemcell check failed" "$D/check.txt"
lab_serve "$SRV" "$STEMCELL" "$D" || die "stemcell did not come up" "$D/server.log"
pass "stemcell serves (authoritative DHCP and HTTP on br0 in $SRV)"
truncate -s 2G "$W/big.img"
truncate -s 1G "$W/small.img"
truncate -s 256M "$W/stick.img"

# ---- power-on 1: no rule, two candidate disks: refused, every disk listed ------------------
echo "== power-on 1: no disk rule; vda ($BIG, 2 GiB), vdb ($SMALL, 1 GiB), sda (USB stick)" >&3
power_on 1
serial "^stemcell: install failed: " 600 "the install refuses"
if lab_wait 30 "" state_is failed; then pass "state failed"; else fail "state is '$(lab_state "$SRV" "$MAC")', not failed"; fi
events
reason=$(grep -aE "^failed"$'\t' "$W/events.txt" | tail -n 1)
echo "    $reason" | cut -c1-600 >&3
check "the failed event says why: the default rule matches 2 disks (vda vdb) and needs 1" \
	grep -qE "the disk rule pick=only \(from the default\) matches 2 disk\(s\) \(vda vdb\), it needs exactly 1; nothing was written" <<<"$reason"
check "… and lists vda: 2.1 GB, serial $BIG, by_path pci-0000:00:04.0, virtio" \
	grep -qF "vda (2.1 GB, model -, serial $BIG, by_path pci-0000:00:04.0, virtio)" <<<"$reason"
check "… vdb: 1.1 GB, serial $SMALL, by_path pci-0000:00:05.0" \
	grep -qF "vdb (1.1 GB, model -, serial $SMALL, by_path pci-0000:00:05.0, virtio)" <<<"$reason"
check "… and the USB stick sda, removable, by_path pci-0000:00:06.0-usb-0:1:1.0-scsi-0:0:0:0" \
	grep -qE "sda \(0\.3 GB, model QEMU HARDDISK, serial [^,]+, by_path pci-0000:00:06\.0-usb-0:1:1\.0-scsi-0:0:0:0, usb, removable\)" <<<"$reason"
power_off

# ---- the rule by serial; re-arm; power-on 2 picks vdb -----------------------------------------
echo "== disk: { serial: $SMALL }; re-arm; power-on 2" >&3
inventory "    disk: { serial: $SMALL }"
if lab_wait 30 "" lab_seen "$D/server.log" "inventory reloaded"; then pass "the inventory reloaded with the rule"; else
	die "the inventory did not reload" "$D/server.log"
fi
code=$(lab_api "$SRV" "/api/v1/machines/$MAC/reinstall" -o "$W/rearm.txt" -w '%{http_code}' -X POST \
	-H "Authorization: Bearer $(cat "$D/admin.token")")
case "$code" in 2??) pass "re-armed (HTTP $code)" ;; *) die "re-arm: HTTP $code" "$W/rearm.txt" ;; esac
power_on 2
serial "^stemcell: install done" 600 "the install with the rule succeeds"
if lab_wait 30 "" state_is installed; then pass "state installed"; else fail "state is '$(lab_state "$SRV" "$MAC")', not installed"; fi
power_off
events
picked=$(grep -aE "^log"$'\t'"install: disk: " "$W/events.txt" | tail -n 1)
echo "    $picked" | cut -c1-400 >&3
check "it picked /dev/vdb by its serial (the kernel's second disk), and says why" \
	grep -qF "install: disk: /dev/vdb vdb (1.1 GB, model -, serial $SMALL, by_path pci-0000:00:05.0, virtio): the only match of the disk rule serial=$SMALL pick=only (from machine $MAC)" <<<"$picked"
check "the test template reports the disk and wrote nothing" \
	grep -qE "^log"$'\t'"install: disktest: would install onto /dev/vdb; nothing written" "$W/events.txt"
check "the disks seen include the USB stick" \
	grep -qE "^log"$'\t'"install: disks seen: sda \(0\.3 GB, model QEMU HARDDISK.*removable\); vda .*; vdb " "$W/events.txt"

# ---- raid1: both virtio disks (pick: only wants exactly two), an md RAID 1 of them ---------
echo "== disk: { raid1: true }; re-arm; power-on 3" >&3
reloads=$(lab_count "$D/server.log" "inventory reloaded")
inventory "    disk: { raid1: true }"
reloaded() { [ "$(lab_count "$D/server.log" "inventory reloaded")" -gt "$reloads" ]; }
if lab_wait 30 "" reloaded; then pass "the inventory reloaded with raid1"; else
	die "the inventory did not reload" "$D/server.log"
fi
code=$(lab_api "$SRV" "/api/v1/machines/$MAC/reinstall" -o "$W/rearm.txt" -w '%{http_code}' -X POST \
	-H "Authorization: Bearer $(cat "$D/admin.token")")
case "$code" in 2??) pass "re-armed (HTTP $code)" ;; *) die "re-arm: HTTP $code" "$W/rearm.txt" ;; esac
power_on 3
serial "^stemcell: install done" 600 "the raid1 install succeeds"
power_off
events
check "it picked both virtio disks, not the USB stick" \
	grep -qE "^log"$'\t'"install: disks: /dev/vda vda \(2\.1 GB.*\) and /dev/vdb vdb \(1\.1 GB.*\), RAID 1: the only two matches of the disk rule pick=only raid1=true" "$W/events.txt"
check "the stem cell made the RAID 1 of their partitions (mdadm, md_mod, raid1; no udev)" \
	grep -qE "^log"$'\t'"install: disktest: raid1 md0 : active (auto-read-only )?raid1 vd[ab]1\[[01]\] vd[ab]1\[[01]\]" "$W/events.txt"
grep -aE "^log"$'\t'"install: disktest: raid1" "$W/events.txt" | sed 's/^/    /' >&3

echo "== disks: $PASSES passed, $FAILS failed, $((SECONDS - T0)) s" >&3
[ "$FAILS" = 0 ]
