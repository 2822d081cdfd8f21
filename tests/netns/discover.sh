#!/bin/bash
# Discovery end to end: an unlisted QEMU machine with two NICs and two disks netboots (from
# its second NIC) into the stem cell in discovery mode, which reports its facts and powers
# off; the page's ready-to-paste entry, appended to the inventory, passes `stemcell check`.
#
#   tests/netns/discover.sh [STEMCELL]      # as root; also `tests/netns/pxe.sh discover`
#
# The lab: namespace $SRV with br0 (198.18.0.1, stemcell authoritative, inventory policy
# `unknown: discover`), the machine's two cables tap0 and tap1 on br0, and a "switch":
# namespace $SW whose veth swp1 is bridged into br0, where Debian's lldpd sends LLDP every
# second with a known system name and the port ID "swp1". A Linux bridge does not forward
# the LLDP group address 01:80:c2:00:00:0e (IEEE link-local) unless its group_fwd_mask has
# bit 14 (0x4000): set here, so both NICs hear the switch as if each were plugged into it.
#
# The machine: SeaBIOS, NIC 1 e1000 without a boot ROM (52:54:00:5e:0d:01), NIC 2 e1000
# with iPXE (52:54:00:5e:0d:02; it boots from this one), two virtio disks with serials
# (2 GiB SC-BIG-02 first, 1 GiB SC-SMALL-01 second: the smaller one is not the first),
# SMBIOS vendor/product/serial set.
#
# Checks (PASS:/FAIL: lines; exit 1 if any failed, 77 when it cannot run here: not root, no
# QEMU, iPXE or lldpd): the console says discover done and QEMU powers off; the API's facts
# have both NICs (mac, driver, carrier 1, speed), boot=1 on NIC 2 only, the switch's
# chassis, port and system name on both NICs, both disks with bytes, serial and by_path,
# the SMBIOS vendor and product; the page's snippet names the booted MAC, both NICs, the
# smaller disk's serial; appended to the inventory (hostname filled in) `stemcell check`
# accepts it.
#
# Environment: STEMCELL_IMAGE, STEMCELL_CACHE, KEEP=1, PXE_PREFLIGHT=1 as in pxe.sh.
set -u
export PATH="$PATH:/usr/sbin:/sbin"
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY no_proxy NO_PROXY
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=../../lab/lib.sh
. "$ROOT/lab/lib.sh"

STEMCELL=${1:-${STEMCELL:-${CARGO_TARGET_DIR:-$ROOT/target}/debug/stemcell}}
SCENARIO=discover

skip() {
	echo "!!!!!!!! SKIP ($SCENARIO): $* !!!!!!!!"
	exit 77
}
[ "$(id -u)" = 0 ] || skip "not root (network namespaces and tap devices need root)"
command -v qemu-system-x86_64 >/dev/null || skip "no qemu-system-x86_64 (Debian's qemu-system-x86)"
[ -r /usr/lib/ipxe/qemu/efi-e1000.rom ] || skip "no /usr/lib/ipxe/qemu/efi-e1000.rom (Debian's ipxe-qemu)"
[ -r /usr/lib/ipxe/undionly.kpxe ] || skip "no /usr/lib/ipxe/undionly.kpxe (Debian's ipxe)"
for t in lldpd lldpcli; do command -v $t >/dev/null || skip "no $t (Debian's lldpd)"; done
for t in curl ip jq python3; do command -v $t >/dev/null || skip "no $t"; done
[ -c /dev/net/tun ] || skip "no /dev/net/tun"
[ "${PXE_PREFLIGHT:-}" = 1 ] && exit 0
[ -x "$STEMCELL" ] || {
	echo "FAIL: no stemcell binary at $STEMCELL" >&2
	exit 1
}

T0=$SECONDS
P=scdi-$$
SRV=$P-srv SW=$P-sw
W=$(mktemp -d "/tmp/$P.XXXXXX")
chmod 755 "$W" # lldpd's unprivileged half reads its socket's folder
D=$W/srv
MAC1=52:54:00:5e:0d:01 # NIC 1: no boot ROM
MAC2=52:54:00:5e:0d:02 # NIC 2: iPXE; the machine boots from it and stemcell knows it so
SWITCH=lab-switch-$$
QEMU_PID=''

# shellcheck source=harness.sh
. "$ROOT/tests/netns/harness.sh"
# matches DESCRIPTION GOT REGEX
matches() { if [[ $2 =~ $3 ]]; then pass "$1: $2"; else fail "$1: got '$2', want /$3/"; fi; }

# ---- the image ---------------------------------------------------------------------------
IMAGE=${STEMCELL_IMAGE:-}
if [ -z "$IMAGE" ]; then
	IMAGE=$W/image
	lab_build_image "$STEMCELL" "$IMAGE" "${STEMCELL_CACHE:-${CARGO_TARGET_DIR:-$ROOT/target}/stemcell-cache}" \
		>"$W/image-build.txt" 2>&1 || die "stemcell image build failed" "$W/image-build.txt"
	pass "stem cell built ($(head -n 1 "$W/image-build.txt"))"
fi
{ [ -r "$IMAGE/vmlinuz" ] && [ -r "$IMAGE/initrd.img" ]; } || die "no vmlinuz and initrd.img in $IMAGE"

# ---- the network: br0 with the machine's two cables, and a switch sending LLDP -----------
lab_netns "$SRV" || die "cannot create namespace $SRV"
{ lab_bridge "$SRV" && lab_tap "$SRV" tap0 && lab_tap "$SRV" tap1; } || die "cannot set up br0, tap0, tap1 in $SRV"
ip -n "$SRV" link set dev br0 type bridge group_fwd_mask 0x4000 || die "cannot let br0 forward LLDP (group_fwd_mask)"
{ lab_netns "$SW" && lab_veth "$SRV" "$SW" swp1; } || die "cannot set up the switch namespace $SW"
CHASSIS=$(ip netns exec "$SW" cat /sys/class/net/swp1/address) || die "no swp1 in $SW"
cat >"$W/lldpd.conf" <<EOF
configure system hostname $SWITCH
configure lldp tx-interval 1
configure lldp portidsubtype ifname
configure ports swp1 lldp portdescription "lab rack, port 1"
EOF
lab_bg "$SW" "$W/lldpd.log" lldpd -d -I swp1 -u "$W/lldpd.socket" -O "$W/lldpd.conf" -L "$(command -v lldpcli)"
LLDPD_PID=$LAB_PID
lldpd_sends() { ip netns exec "$SW" lldpcli -u "$W/lldpd.socket" show configuration 2>/dev/null | grep -q "Transmit delay: 1"; }
lab_wait 20 "$LLDPD_PID" lldpd_sends || die "lldpd did not start with its configuration" "$W/lldpd.log"
pass "lldpd sends LLDP on swp1 every second as $SWITCH (chassis $CHASSIS), bridged to both cables"

# ---- stemcell: discovery on -----------------------------------------------------------------
lab_config "$D" authoritative "$IMAGE"
cat >"$D/inventory.yaml" <<EOF
defaults:
  unknown: discover
roles:
  base:
    template: base.sh.j2
    vars: { puppet_server: puppet.lab.example }
machines:
  "52:54:00:5e:0d:ff":
    hostname: listed-other
    role: base
EOF
lab_check "$STEMCELL" "$D" || die "stemcell check failed (before discovery)" "$D/check.txt"
lab_serve "$SRV" "$STEMCELL" "$D" || die "stemcell did not come up" "$D/server.log"
pass "stemcell serves (authoritative, unknown machines are discovered)"

# ---- the machine -----------------------------------------------------------------------------
truncate -s 2G "$W/big.img"
truncate -s 1G "$W/small.img"
SERIAL=$W/console.log
ON=$SECONDS
# shellcheck disable=SC2054 # QEMU's comma-separated options
lab_bg "$SRV" "$SERIAL.qemu" qemu-system-x86_64 -accel tcg -m 512 -nographic -monitor none \
	-serial "file:$SERIAL" -boot n \
	-smbios type=1,manufacturer=StemcellLab,product=Discoverer-2,serial=SN-DISC-0001 \
	-netdev tap,id=n0,ifname=tap0,script=no,downscript=no -device "e1000,netdev=n0,mac=$MAC1,romfile=" \
	-netdev tap,id=n1,ifname=tap1,script=no,downscript=no -device "e1000,netdev=n1,mac=$MAC2" \
	-drive if=none,id=d0,file="$W/big.img",format=raw -device virtio-blk-pci,drive=d0,serial=SC-BIG-02 \
	-drive if=none,id=d1,file="$W/small.img",format=raw -device virtio-blk-pci,drive=d1,serial=SC-SMALL-01
QEMU_PID=$LAB_PID
seen_done() { lab_seen "$SERIAL" '^stemcell: discover done|^stemcell: .* failed: '; }
if lab_wait 900 "$QEMU_PID" seen_done && lab_seen "$SERIAL" '^stemcell: discover done'; then
	pass "discovery done ($((SECONDS - ON)) s after power-on): $(grep -a '^stemcell: discover done' "$SERIAL" | tr -d '\r' | cut -c1-100)"
else
	die "no 'stemcell: discover done' on the console within 900 s" "$SERIAL" "$D/server.log"
fi
grep -a '^stemcell: .*LLDP' "$SERIAL" | tr -d '\r' | sed 's/^/    /' >&3
qemu_gone() { ! kill -0 "$QEMU_PID" 2>/dev/null; }
if lab_wait 60 "" qemu_gone; then pass "the machine powered itself off"; else fail "QEMU still runs 60 s after discover done"; fi

# ---- the facts, from the API ---------------------------------------------------------------
lab_api "$SRV" "/api/v1/machines/$MAC2" >"$W/machine.json" || die "GET /api/v1/machines/$MAC2 failed"
fact() { jq -r --arg k "$1" '.facts.hardware[$k] // empty' "$W/machine.json"; }
# The NIC names are the stem cell's kernel's; find each NIC by its MAC.
nic_of() { jq -r --arg m "$1" '.facts.hardware | to_entries[] | select(.key | test("^nic\\.[^.]+\\.mac$")) | select(.value == $m) | .key | split(".")[1]' "$W/machine.json"; }
N1=$(nic_of "$MAC1")
N2=$(nic_of "$MAC2")
{ [ -n "$N1" ] && [ -n "$N2" ]; } || {
	jq -r '.facts.hardware | to_entries[] | "\(.key)=\(.value)"' "$W/machine.json" >"$W/facts.txt"
	die "the facts do not have both NICs ($MAC1: '$N1', $MAC2: '$N2')" "$W/facts.txt"
}
pass "the facts have both NICs: $N1 = $MAC1, $N2 = $MAC2"
for n in "$N1" "$N2"; do
	expect "$n's driver" "$(fact "nic.$n.driver")" e1000
	expect "$n has link" "$(fact "nic.$n.carrier")" 1
	expect "$n's speed (Mb/s)" "$(fact "nic.$n.speed")" 1000
	expect "$n's LLDP chassis: the switch's" "$(fact "nic.$n.lldp.chassis")" "$CHASSIS"
	expect "$n's LLDP port" "$(fact "nic.$n.lldp.port")" swp1
	expect "$n's LLDP port description" "$(fact "nic.$n.lldp.port_descr")" "lab rack, port 1"
	expect "$n's LLDP system name" "$(fact "nic.$n.lldp.system")" "$SWITCH"
done
expect "boot=1 on the NIC it booted from ($N2) and not on $N1" "$(fact "nic.$N2.boot")/$(fact "nic.$N1.boot")" 1/
expect "DMI vendor" "$(fact dmi.sys_vendor)" StemcellLab
expect "DMI product" "$(fact dmi.product_name)" Discoverer-2
expect "DMI serial" "$(fact dmi.product_serial)" SN-DISC-0001
matches "CPU and memory" "$(fact cpus) CPU, $(fact memory_kb) kB" '^[0-9]+ CPU, [0-9]+ kB$'
# virtio disks: vda is the first (2 GiB), vdb the second (1 GiB)
expect "vda's size" "$(fact disk.vda.bytes)" $((2 << 30))
expect "vdb's size" "$(fact disk.vdb.bytes)" $((1 << 30))
expect "vda's serial" "$(fact disk.vda.serial)" SC-BIG-02
expect "vdb's serial" "$(fact disk.vdb.serial)" SC-SMALL-01
matches "vda's by-path name" "$(fact disk.vda.by_path)" '^pci-0000:00:[0-9a-f]{2}\.0$'
expect "vda is not removable" "$(fact disk.vda.removable)" 0

# ---- the page's snippet, pasted into the inventory -----------------------------------------
lab_api "$SRV" "/machines/$MAC2" >"$W/page.html" || die "GET /machines/$MAC2 failed"
python3 -c '
import html, re, sys
m = re.search(r"<pre id=\"snippet\">(.*?)</pre>", open(sys.argv[1]).read(), re.S)
sys.stdout.write(html.unescape(m.group(1)) if m else "")
' "$W/page.html" >"$W/snippet.yaml"
[ -s "$W/snippet.yaml" ] || die "the page has no snippet (<pre id=\"snippet\">)" "$W/page.html"
sed 's/^/    | /' "$W/snippet.yaml" >&3
check "the snippet's key is the booted MAC" grep -q "^  \"$MAC2\":$" "$W/snippet.yaml"
check "the snippet lists $N1 under interfaces:" grep -q "^      $N1: \"$MAC1\"" "$W/snippet.yaml"
check "the snippet lists $N2 under interfaces:" grep -q "^      $N2: \"$MAC2\"" "$W/snippet.yaml"
check "the snippet's disk rule is the smaller disk's serial" grep -q '^    disk: { serial: "SC-SMALL-01" }$' "$W/snippet.yaml"
check "the page's facts show the switch and port" grep -q "switch $SWITCH port swp1" "$W/page.html"
sed "s/^    hostname: .*/    hostname: discovered-1/" "$W/snippet.yaml" >>"$D/inventory.yaml"
if lab_check "$STEMCELL" "$D"; then
	pass "stemcell check accepts the inventory with the pasted entry"
else
	fail "stemcell check refuses the pasted entry"
	show "$D/check.txt"
	show "$D/inventory.yaml" 20
fi

echo "== $SCENARIO: $PASSES passed, $FAILS failed, $((SECONDS - T0)) s" >&3
[ "$FAILS" = 0 ]
