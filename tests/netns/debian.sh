#!/bin/bash
# shellcheck disable=SC2317 # functions run through traps and lab_wait
# End to end through real firmware, the whole promise: a QEMU machine with an empty disk
# netboots through stemcell into the stem cell, which installs Debian 12 from the image
# `stemcell os build` made (the role's `os: debian-12`, served from the config's `images:`
# folder at /os/); it reboots by itself into Debian, which phones home and applies its role
# with Puppet (the config's `puppet:` folder, a copy of examples/lab/puppet: nginx serving
# "HOST: role web, configured by Puppet"), and the page is fetched from outside the machine.
#
#   tests/netns/debian.sh SCENARIO [STEMCELL]     # as root; STEMCELL: the binary
#
# SCENARIO:
#   bios     SeaBIOS, e1000 with its iPXE ROM, virtio disk. Install, login prompt, Puppet
#            (`configured`, failed 0, changed > 0), nginx from outside; power off and on:
#            it stays on its disk (boot script local, a new `booted`, still configured);
#            then the promise: the machine is thrown away, a NEW machine (new MAC, empty
#            disk) takes its inventory entry (inventory.yaml edited while stemcell runs)
#            and comes back configured as the same host: same OS image, package list,
#            bundle and Puppet numbers, same hostname on its console and in its page;
#            finally the replacement is re-armed (`stemcell reinstall`) and reinstalls.
#            The replacement has two disks and `disk: { raid1: true }`: its root is an md
#            RAID 1 of both (checked on the disk images).
#   uefi-secureboot
#            OVMF with Secure Boot enforced and Microsoft's keys enrolled (OVMF_CODE_4M.ms.fd,
#            a copy of OVMF_VARS_4M.ms.fd, q35 with SMM), the firmware's own PXE (no iPXE
#            ROM): first the proof of enforcement, a machine whose role's loader is iPXE is
#            handed the unsigned snponly.efi and the firmware refuses it ("Access Denied");
#            then the machine, whose role's loader is grub, netboots the signed chain shim ->
#            GRUB (grubnetx64) -> its grub.cfg -> Debian's signed kernel with the stem cell's
#            initrd, installs with shim and Debian's signed GRUB on its disk, and its
#            installed system reports Secure Boot on (the SecureBoot variable, read by
#            stemcell-converge at boot); at the end its disk alone (no NIC) boots through
#            its own shim and GRUB to the login prompt. Two virtio-net NICs, three disks (its own, a
#            bigger virtio decoy, a USB stick): the inventory's `disk: { serial: … }` picks
#            its own, the others stay untouched. The machine is listed by its first NIC
#            with both under `interfaces:` and a `network:` bond of the two (active-backup,
#            DHCP); the firmware netboots it from its SECOND NIC:
#            it is the listed machine (not an unknown one), the page and API name the NIC it
#            booted from. The role's Puppet code fails at first (an exec of /bin/false):
#            `config-failed` with Puppet's error in the events; the test fixes the manifest
#            in the puppet folder and the machine's timer (puppet_interval 1min) converges
#            it: `configured`, nginx answers; then the first NIC's link is cut (QMP
#            set_link) and nginx still answers over the bond.
#   corrupt  as bios, but the served archive has 16 bytes changed (current.json keeps the
#            real sha256): the install fails with "sha256 mismatch", never done; then a
#            second machine gets an archive cut in half: it fails as "truncated".
#
# Each check prints PASS: or FAIL: with the seconds since the start; the phases of each
# install are printed as "PHASE scenario machine name seconds" lines (firmware, stem cell,
# image stream, first boot, Puppet; from the API's phases and the console). Exit 1 if any
# check failed; 77 (with the reason, loudly) when this machine cannot run it (not root, no
# QEMU, OVMF, iPXE, mmdebstrap or jq); under CI=true that is exit 1 instead. DEB_PREFLIGHT=1
# only checks that. Every namespace, process and the work folder are removed on exit, also
# on failure and on INT/TERM/HUP; KEEP=1 keeps the work folder (consoles, server log).
#
# Environment:
#   STEMCELL_IMAGE  a folder with the stem cell's vmlinuz and initrd.img; without it
#                   `stemcell image build` makes one (cache STEMCELL_CACHE, default
#                   <target>/stemcell-cache)
#   OS_CACHE        the images folder for `stemcell os build` (default <target>/os-cache):
#                   the Debian image is built once and reused while its spec and Debian's
#                   package lists are unchanged (builds are serialised with flock)
#   OS_BUILT=1      OS_CACHE already holds the current build (tests/debian.rs built it)
#   OS_SPEC         the OS spec (default examples/lab/os/debian-12.yaml)
#   DEB_MEM, DEB_SMP  each machine's memory (MiB, default 2048: Puppet needs it) and vCPUs
#                   (default 1: TCG keeps one host core busy per vCPU)
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
bios) FW=bios MAC=52:54:00:de:b1:01 MAC2=52:54:00:de:b1:11 ;;
uefi-secureboot)
	FW=uefi-secureboot MAC=52:54:00:de:b1:02 MAC2='' NIC2=52:54:00:de:b1:22
	# The firmware's own PXE on both NICs: Secure Boot refuses the unsigned iPXE ROMs.
	NIC2_ROM=,romfile=
	# The enforcement check's machine: its role's loader is iPXE.
	UNSIGNED=52:54:00:de:b1:2e
	# Three disks: the install disk (first virtio, by serial), a bigger virtio decoy and a
	# USB stick; the inventory names the disk by its serial.
	DISK_SERIAL=SC-UEFI-ROOT DISK_RULE="disk: { serial: $DISK_SERIAL }"
	;;
corrupt) FW=bios MAC=52:54:00:de:b1:03 MAC2=52:54:00:de:b1:13 ;;
*)
	echo "usage: $0 bios|uefi-secureboot|corrupt [STEMCELL]" >&2
	exit 2
	;;
esac

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
command -v jq >/dev/null || skip "no jq (scripts/setup-debian.sh installs it)"
command -v flock >/dev/null || skip "no flock (util-linux)"
for f in /usr/lib/ipxe/undionly.kpxe /usr/lib/ipxe/snponly.efi /usr/lib/ipxe/qemu/efi-e1000.rom /usr/lib/ipxe/qemu/efi-virtio.rom; do
	[ -r $f ] || skip "no $f (Debian's ipxe, ipxe-qemu)"
done
[ "$FW" = bios ] || [ -r /usr/share/ovmf/OVMF.fd ] || skip "no /usr/share/ovmf/OVMF.fd (Debian's ovmf)"
if [ "$FW" = uefi-secureboot ]; then
	for f in /usr/share/OVMF/OVMF_CODE_4M.ms.fd /usr/share/OVMF/OVMF_VARS_4M.ms.fd; do
		[ -r $f ] || skip "no $f (Debian's ovmf)"
	done
	[ -r /usr/lib/shim/shimx64.efi.signed ] || skip "no /usr/lib/shim/shimx64.efi.signed (Debian's shim-signed)"
	[ -r /usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed ] ||
		skip "no /usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed (Debian's grub-efi-amd64-signed)"
fi
[ -c /dev/net/tun ] || skip "no /dev/net/tun"
[ "${DEB_PREFLIGHT:-}" = 1 ] && exit 0
[ -x "$STEMCELL" ] || {
	echo "FAIL: no stemcell binary at $STEMCELL"
	exit 1
}

T0=$SECONDS
NS=scdeb-$SCENARIO-$$
W=$(mktemp -d "/tmp/scdeb-$$-$SCENARIO.XXXXXX")
chmod 755 "$W"
D=$W/srv
HOST=deb-$SCENARIO
QEMU_PID='' SERIAL=''

# shellcheck source=harness.sh
. "$ROOT/tests/netns/harness.sh"
finish() {
	echo "== $SCENARIO: $PASSES passed, $FAILS failed, $((SECONDS - T0)) s" >&3
	[ "$FAILS" = 0 ]
	exit
}
# die: as the harness's, with the summary line
die() {
	fail "$1"
	shift
	local f
	for f in "$@"; do show "$f"; done
	finish
}
# The machine's API view (JSON) and one jq expression of it.
machine_json() { lab_api "$NS" "/api/v1/machines/$1"; }
jqm() { machine_json "$1" | jq -r "$2" 2>/dev/null; }
events() { lab_events "$NS" "$1" >"$W/events-$1.txt"; }
state_is() { [ "$(lab_state "$NS" "$1")" = "$2" ]; }
count_events() { lab_events "$NS" "$1" | grep -c "^$2	"; }
# seen REGEX SECONDS: wait for REGEX on the current machine's console ($SERIAL; QEMU
# exiting ends the wait); sets AT to the seconds since its power-on.
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
# power_on NAME MAC TAP DISK: a QEMU machine, network first; its console is
# $W/NAME-N.console (N counts its power-ons). Sets QEMU_PID, SERIAL, ON and ON_MS.
declare -A POWER_ONS
MORE=()
power_on() {
	local n=$((${POWER_ONS[$1]:-0} + 1))
	POWER_ONS[$1]=$n
	SERIAL=$W/$1-$n.console
	ON=$SECONDS
	ON_MS=$(date +%s%3N)
	# MORE: extra QEMU arguments for this power-on (more disks), set by the caller.
	local extra=("${MORE[@]}")
	if [ -n "${NIC2:-}" ]; then
		# The second NIC boots first (bootindex 1); the first one never netboots.
		extra+=(-netdev "tap,id=n1,ifname=tap1,script=no,downscript=no"
			-device "virtio-net-pci,netdev=n1,mac=$NIC2,bootindex=1${NIC2_ROM:-}"
			-qmp "unix:$W/$1-$n.qmp,server=on,wait=off")
		QMP=$W/$1-$n.qmp
	fi
	LAB_DISK_BUS=virtio LAB_NIC_BOOTINDEX=${NIC2:+3} LAB_DISK_SERIAL=${DISK_SERIAL:-} lab_qemu "$NS" "$FW" "$3" "$2" "$4" "$SERIAL" \
		-m "${DEB_MEM:-2048}" -smp "${DEB_SMP:-1}" "${extra[@]}" || die "QEMU did not start for $1"
	QEMU_PID=$LAB_PID
}
power_off() { lab_stop "$QEMU_PID"; }
# phases NAME MAC ON_MS CONSOLE: the install's phases as PHASE lines (the API's
# timestamps, ms), with the console's own numbers where it has them; "?" for a phase not
# (yet) reached.
phases() {
	local name=$1 mac=$2 on=$3 nb sc im in bo co ms stream
	read -r nb sc im in bo co < <(jqm "$mac" '.phases | [.netboot, .stemcell, .image, .installed, .booted, .configured] | map(. // 0) | @tsv')
	ms=$(jqm "$mac" '.last_run.millis // 0')
	stream=$(grep -a '^install: image ok' "$4" 2>/dev/null | sed -n 's/.* in \([0-9.]*\) s.*/\1/p' | tail -n 1)
	sec() { awk -v a="$1" -v b="$2" 'BEGIN { if (a > 0 && b > 0) printf "%.1f", (b - a) / 1000; else printf "?" }'; }
	echo "PHASE $SCENARIO $name firmware $(sec "$on" "$nb") (power-on to the boot script: firmware and iPXE)" >&3
	echo "PHASE $SCENARIO $name stem_cell $(sec "$nb" "$im") (kernel and initrd, the stem cell's boot, DHCP, install script, disk)" >&3
	echo "PHASE $SCENARIO $name image_stream $(sec "$im" "$in") (the image streamed and checked in ${stream:-?} s, then GRUB and the system's identity)" >&3
	echo "PHASE $SCENARIO $name first_boot $(sec "$in" "$bo") (reboot, GRUB, Debian up, the network, phoning home)" >&3
	echo "PHASE $SCENARIO $name puppet $(sec "$bo" "$co") (the bundle fetched and applied; Puppet's own run $(awk -v m="$ms" 'BEGIN { printf "%.1f", m / 1000 }') s)" >&3
	echo "PHASE $SCENARIO $name total $(sec "$on" "$co") (power-on to configured)" >&3
	: "$sc"
}
# nginx_page MAC: the machine's page, fetched from the server's namespace (outside it) at
# the address its lease says.
nginx_page() {
	local ip
	ip=$(jqm "$1" '.ip // empty')
	[ -n "$ip" ] || return 1
	ip netns exec "$NS" curl -sf --max-time 10 "http://$ip/"
}
page_is() { [ "$(nginx_page "$1")" = "$2" ]; }

# ---- the stem cell and the OS image ----------------------------------------------------------
IMAGE=${STEMCELL_IMAGE:-}
if [ -z "$IMAGE" ]; then
	IMAGE=$W/image
	"$STEMCELL" image build --out "$IMAGE" --cache "${STEMCELL_CACHE:-$TARGET/stemcell-cache}" \
		>"$W/image-build.txt" 2>&1 || die "stemcell image build failed" "$W/image-build.txt"
	pass "stem cell built: $(sed -n 's/^ *\(.*initrd.img.*\)/\1/p' "$W/image-build.txt" | head -n 1)"
fi
OS_CACHE=${OS_CACHE:-$TARGET/os-cache}
SPEC=${OS_SPEC:-$ROOT/examples/lab/os/debian-12.yaml}
if [ "${OS_BUILT:-}" != 1 ]; then
	# A fixed epoch: the image is rebuilt only when its spec or Debian's package lists
	# change. The lock: scenarios run side by side and share the cache.
	export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1735689600}
	mkdir -p "$OS_CACHE"
	t1=$SECONDS
	flock "$OS_CACHE/.build.lock" "$STEMCELL" os build --spec "$SPEC" --out "$OS_CACHE" \
		>"$W/os-build.txt" 2>&1 || die "stemcell os build failed" "$W/os-build.txt"
	pass "OS image: $(grep -a '^os ' "$W/os-build.txt" | cut -c1-60) ($((SECONDS - t1)) s)"
fi
CUR=$OS_CACHE/debian-12/current.json
SHA=$(jq -r .sha256 "$CUR" 2>/dev/null)
SIZE=$(jq -r .size "$CUR" 2>/dev/null)
ARCHIVE=$(jq -r '.archive // .file' "$CUR" 2>/dev/null)
if [ ${#SHA} != 64 ] || [ ! -f "$OS_CACHE/debian-12/$ARCHIVE" ]; then die "no built image in $CUR"; fi
echo "    image sha256 $SHA, $SIZE bytes" >&3

# ---- stemcell: the site folder, first class ------------------------------------------------
LAB_HTTP_URL=$LAB_URL lab_config "$D" authoritative "$IMAGE"
cp "$ROOT/kickstarts/debian.sh.j2" "$D/kickstarts/"
cp -r "$ROOT/kickstarts/snippets" "$D/kickstarts/"
mkdir -p "$D/os"
cp "$SPEC" "$D/os/debian-12.yaml"
# The site's Puppet code: a copy, so that a scenario can break and fix it.
cp -r "$ROOT/examples/lab/puppet" "$D/puppet"
IMAGES=$OS_CACHE
if [ "$SCENARIO" = corrupt ]; then
	# What the server serves: the same current.json (the real sha256 and size), with an
	# archive whose bytes are wrong (debian-12) or cut in half (debian-12-cut).
	IMAGES=$D/images
	mkdir -p "$IMAGES/debian-12" "$IMAGES/debian-12-cut"
	cp "$CUR" "$IMAGES/debian-12/"
	cp "$OS_CACHE/debian-12/$ARCHIVE" "$IMAGES/debian-12/"
	printf 'stemcell-corrupt' | dd of="$IMAGES/debian-12/$ARCHIVE" bs=1 seek=$((SIZE / 2)) conv=notrunc status=none
	jq '.name = "debian-12-cut"' "$CUR" >"$IMAGES/debian-12-cut/current.json"
	head -c $((SIZE / 2)) "$OS_CACHE/debian-12/$ARCHIVE" >"$IMAGES/debian-12-cut/$ARCHIVE"
	cp "$SPEC" "$D/os/debian-12-cut.yaml"
	cmp -s "$IMAGES/debian-12/$ARCHIVE" "$OS_CACHE/debian-12/$ARCHIVE" && die "the corrupt copy is not corrupt"
fi
cat >>"$D/stemcell.yaml" <<EOF
os: os
images: $IMAGES
puppet: puppet
EOF
case "$SCENARIO" in
uefi-secureboot) INTERVAL=1min ;;
*) INTERVAL=30min ;;
esac
# inventory MAC [MAC2 ROLE2 HOST2]: the fleet, written atomically (the server watches it).
inventory() {
	# DISK_RULE: the first machine's disk (default: the legacy vars.disk, which is a rule too).
	local disk_line=${DISK_RULE:-"vars: { disk: /dev/vda }"}
	cat >"$D/inventory.yaml.new" <<EOF
defaults:
  unknown: ignore
roles:
  web:
    template: debian.sh.j2
    os: debian-12
    vars:
      console: ttyS0,115200
      puppet_interval: $INTERVAL
      ssh_keys:
        - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHN0ZW1jZWxsLWxhYi10ZXN0LWtleS1ub3QtcmVhbA lab@stemcell
  cut:
    template: debian.sh.j2
    os: debian-12-cut
machines:
  "$1":
    hostname: $HOST
    role: web
    $disk_line
EOF
	if [ -n "${NIC2:-}" ]; then
		cat >>"$D/inventory.yaml.new" <<EOF
    interfaces: { eno1: "$1", eno2: "$NIC2" }
    network:
      bond0: { bond: [eno1, eno2], mode: active-backup, dhcp: true }
EOF
	fi
	if [ -n "${2:-}" ]; then
		printf '  "%s":\n    hostname: %s\n    role: %s\n    vars: { disk: /dev/vda }\n' "$2" "$4" "$3" >>"$D/inventory.yaml.new"
	fi
	if [ -n "${UNSIGNED:-}" ]; then
		# Secure Boot: the machine's role netboots GRUB behind shim; the enforcement
		# check's machine keeps iPXE, which the firmware must refuse.
		sed -i 's/^    os: debian-12$/&\n    loader: grub/' "$D/inventory.yaml.new"
		sed -i 's/^machines:$/  unsigned:\n    template: debian.sh.j2\n    os: debian-12\n    loader: ipxe\n&/' "$D/inventory.yaml.new"
		printf '  "%s":\n    hostname: deb-unsigned\n    role: unsigned\n    vars: { disk: /dev/vda }\n' "$UNSIGNED" >>"$D/inventory.yaml.new"
	fi
	[ "$SCENARIO" = corrupt ] || sed -i '/^  cut:$/,/^    os: debian-12-cut$/d' "$D/inventory.yaml.new"
	mv "$D/inventory.yaml.new" "$D/inventory.yaml"
}
if [ "$SCENARIO" = corrupt ]; then inventory "$MAC" "$MAC2" cut deb-truncated; else inventory "$MAC"; fi

if [ "$SCENARIO" = uefi-secureboot ]; then
	# The role's code fails at first: one resource Puppet cannot apply.
	cat >>"$D/puppet/manifests/web.pp" <<'EOF'
# stemcell's uefi-secureboot test: a resource that fails (the test removes it again)
exec { 'stemcell-test-fails':
  command => '/bin/false',
}
EOF
fi
lab_check "$STEMCELL" "$D" || die "stemcell check failed" "$D/check.txt"
{ lab_netns "$NS" && lab_bridge "$NS" && lab_tap "$NS" tap0 && lab_tap "$NS" tap1; } ||
	die "cannot set up namespace $NS"
lab_serve "$NS" "$STEMCELL" "$D" || die "stemcell did not come up" "$D/check.txt" "$D/server.log"
pass "stemcell serves $NS: authoritative DHCP, TFTP, HTTP; images $IMAGES, os/, puppet/ (a copy)"
code=$(lab_api "$NS" "/os/debian-12/$ARCHIVE" -o /dev/null -I -w '%{http_code}')
[ "$code" = 200 ] || die "the image is not served at /os/debian-12/ (HTTP $code)" "$D/server.log"
BUNDLE0=$(lab_api "$NS" /puppet/bundle.tar.gz -o /dev/null -D - | tr -d '\r' | sed -n 's/^[Xx]-[Bb]undle-[Ss]ha256: //p')
[ ${#BUNDLE0} = 64 ] || die "no Puppet bundle served at /puppet/bundle.tar.gz" "$D/server.log"

# ---- corrupt: wrong bytes, then a truncated archive -----------------------------------------------
if [ "$SCENARIO" = corrupt ]; then
	# check_failed NAME MAC REGEX WHAT
	check_failed() {
		seen "^stemcell: stem cell starting" 300 || die "$1: no stem cell within 300 s" "$SERIAL"
		seen "^stemcell: install failed" 1200 || die "$1: the install did not fail" "$SERIAL" "$D/server.log"
		pass "$1: the install fails ($AT s after power-on): $(grep -a '^stemcell: install failed' "$SERIAL" | tr -d '\r' | cut -c1-160)"
		if lab_wait 30 "" state_is "$2" failed; then pass "$1: state failed"; else fail "$1: state is $(lab_state "$NS" "$2"), not failed"; fi
		events "$2"
		if grep -qE $'^failed\t.*'"$3" "$W/events-$2.txt"; then
			pass "$1: the failed event says $4: $(grep -a $'^failed\t' "$W/events-$2.txt" | cut -f2 | grep -oE 'install: FAILED: .*' | cut -c1-200)"
		else
			fail "$1: no '$4' in a failed event"
			show "$W/events-$2.txt" 20
		fi
		local n
		n=$(grep -c $'^done\t' "$W/events-$2.txt")
		if [ "$n" = 0 ]; then pass "$1: never reported done"; else fail "$1: $n done events"; fi
		power_off
	}
	truncate -s 4G "$W/corrupt.img" "$W/truncated.img"
	power_on corrupt "$MAC" tap0 "$W/corrupt.img"
	echo "== power-on: $FW, the served archive has 16 bytes changed at offset $((SIZE / 2))" >&3
	check_failed corrupt "$MAC" "sha256 mismatch: got [0-9a-f]{64}, want $SHA \\($SIZE bytes" "sha256 mismatch (all $SIZE bytes arrived)"
	power_on truncated "$MAC2" tap1 "$W/truncated.img"
	echo "== power-on: $FW, the served archive is cut to $((SIZE / 2)) of $SIZE bytes" >&3
	check_failed truncated "$MAC2" "the image is truncated: $((SIZE / 2)) of $SIZE bytes arrived" "truncated, with the byte counts"
	finish
fi

# ---- power on: install, first boot, Puppet -------------------------------------------------
# install_and_converge NAME MAC TAP DISK EXPECT: power on with an empty disk; the install,
# the login prompt and the first Puppet run; EXPECT: configured or config-failed.
install_and_converge() {
	local name=$1 mac=$2 tap=$3 disk=$4 expect=$5 done_at
	truncate -s 4G "$disk"
	power_on "$name" "$mac" "$tap" "$disk"
	echo "== $name ($mac): power-on, $FW, empty 4 GiB disk, network first, ${DEB_MEM:-2048} MiB" >&3
	seen "^stemcell: stem cell starting" 300 || die "$name: no stem cell within 300 s" "$SERIAL"
	pass "$name: the stem cell starts ($AT s after power-on)"
	seen "^install: image ok" 1500 || die "$name: the image did not unpack" "$SERIAL" "$D/server.log"
	pass "$name: image streamed and checked: $(grep -a '^install: image ok' "$SERIAL" | tr -d '\r' | cut -c1-120)"
	seen "^stemcell: install done" 900 || die "$name: the install did not finish" "$SERIAL" "$D/server.log"
	done_at=$AT
	pass "$name: install done ($AT s after power-on)"
	if seen "^$HOST login:" 900; then
		pass "$name: Debian boots from its disk to '$HOST login:' ($((AT - done_at)) s after the install; $AT s after power-on)"
	else
		die "$name: no '$HOST login:' on the serial console within 900 s of the install" "$SERIAL"
	fi
	if lab_seen "$SERIAL" "Debian GNU/Linux 12 $HOST ttyS0"; then
		pass "$name: the console's banner: $(grep -a "Debian GNU/Linux 12 $HOST" "$SERIAL" | tail -n 1 | tr -d '\r' | cut -c1-80)"
	else
		fail "$name: no 'Debian GNU/Linux 12 $HOST ttyS0' banner"
	fi
	if [ "$FW" != bios ]; then
		nv=$(grep -a '^install: NVRAM: ' "$SERIAL" | tr -d '\r' | tail -n 1)
		entry=$(echo "$nv" | sed -n 's/^install: NVRAM: Boot\([0-9A-Fa-f]\{4\}\) debian;.*/\1/p')
		order=$(echo "$nv" | sed -n 's/.*BootOrder \([0-9A-Fa-f,]*\).*/\1/p')
		if [ -n "$entry" ] && [ "${order##*,}" = "$entry" ] && [ "${order%%,*}" != "$entry" ]; then
			pass "$name: UEFI NVRAM entry Boot$entry (debian), last in BootOrder $order"
		else
			fail "$name: UEFI: no NVRAM entry last in the boot order: '${nv:-no NVRAM line}'"
		fi
	fi
	# Puppet under TCG: the first run (facter, the catalog, nginx) takes minutes.
	reported() { state_is "$mac" configured || state_is "$mac" config-failed; }
	if ! lab_wait 1200 "$QEMU_PID" reported; then
		die "$name: no Puppet report within 1200 s of the login prompt (state $(lab_state "$NS" "$mac"))" "$SERIAL" "$D/server.log"
	fi
	local st
	st=$(lab_state "$NS" "$mac")
	[ "$st" = "$expect" ] || {
		events "$mac"
		die "$name: state $st after the first Puppet run, want $expect" "$W/events-$mac.txt" "$SERIAL"
	}
	pass "$name: state $st after the first Puppet run ($((SECONDS - ON)) s after power-on): $(jqm "$mac" '.last_run | "exit \(.exit), changed \(.changed), failed \(.failed), total \(.total), \(.millis) ms"')"
}

# check_role NAME MAC [MIN_CHANGED]: Puppet's numbers (failed 0, at least MIN_CHANGED
# changed, default 1: a first run changes the machine) and the role's effect, from outside.
check_role() {
	local name=$1 mac=$2 min=${3:-1} want="$HOST: role web, configured by Puppet" got
	if [ "$(jqm "$mac" '.last_run.failed')" = 0 ] && [ "$(jqm "$mac" '.last_run.changed')" -ge "$min" ] 2>/dev/null; then
		pass "$name: Puppet's numbers: $(jqm "$mac" '.last_run | "\(.changed) changed, \(.failed) failed of \(.total)"')"
	else
		fail "$name: Puppet's numbers are not failed 0, changed >= $min: $(jqm "$mac" '.last_run | tostring')"
	fi
	if lab_wait 60 "" page_is "$mac" "$want"; then
		pass "$name: from the server's namespace, curl http://$(jqm "$mac" .ip)/ says '$(nginx_page "$mac")'"
	else
		got=$(nginx_page "$mac")
		fail "$name: http://$(jqm "$mac" .ip)/ says '${got:-nothing}', want '$want'"
	fi
}

if [ "$SCENARIO" = uefi-secureboot ]; then
	# Enforcement first: an unsigned loader (Debian's iPXE, snponly.efi) offered to this
	# firmware is refused by it before it runs.
	truncate -s 1G "$W/unsigned.img"
	# One NIC only (NIC2 is the machine's second NIC, not this one's).
	NIC2='' power_on unsigned "$UNSIGNED" tap0 "$W/unsigned.img"
	echo "== unsigned ($UNSIGNED): power-on, $FW, its role's loader is iPXE" >&3
	denied='BdsDxe: failed to load Boot[0-9A-F]{4} "UEFI PXEv4 [^"]*".*: Access Denied'
	if seen "$denied" 120; then
		pass "Secure Boot enforced: the firmware refuses the unsigned snponly.efi ($AT s after power-on): $(grep -aoE "$denied" "$SERIAL" | head -n 1 | sed 's/ from .*:/:/' | cut -c1-120)"
	else
		fail "Secure Boot: no 'Access Denied' for the unsigned loader within 120 s"
		show "$SERIAL" 20
	fi
	events "$UNSIGNED"
	if grep -qE $'^tftp\tsent snponly.efi' "$W/events-$UNSIGNED.txt" && ! grep -q $'^boot\t' "$W/events-$UNSIGNED.txt"; then
		pass "Secure Boot enforced: snponly.efi was sent over TFTP and never ran (no boot script fetched)"
	else
		fail "Secure Boot: the unsigned machine's events do not show snponly.efi sent and no boot script"
		show "$W/events-$UNSIGNED.txt" 20
	fi
	power_off

	truncate -s 6G "$W/decoy.img"
	truncate -s 256M "$W/stick.img"
	# shellcheck disable=SC2054 # QEMU's options are comma-separated lists
	MORE=(-drive "if=none,id=d9,file=$W/decoy.img,format=raw" -device "virtio-blk-pci,drive=d9,serial=SC-DECOY"
		-device qemu-xhci,id=xhci -drive "if=none,id=u0,file=$W/stick.img,format=raw"
		-device "usb-storage,bus=xhci.0,drive=u0,removable=on")
	install_and_converge uefi-secureboot "$MAC" tap0 "$W/uefi.img" config-failed
	# The signed chain, both times it netbooted: shim, GRUB, its grub.cfg, a kernel
	# that says Secure Boot is on (the stem cell's, then the installed system's).
	events "$MAC"
	if grep -qE $'^dhcp\t.*boot file shimx64.efi' "$W/events-$MAC.txt" &&
		grep -qE $'^tftp\tsent grubx64.efi' "$W/events-$MAC.txt" &&
		grep -qE $'^boot\tboot script: install as role web .*\(GRUB\)' "$W/events-$MAC.txt" &&
		grep -qE $'^tftp\tsent /stemcell/'"$MAC"'/vmlinuz' "$W/events-$MAC.txt"; then
		pass "Secure Boot: the chain DHCP -> shimx64.efi -> grubx64.efi -> grub.cfg -> the stem cell's kernel over TFTP"
	else
		fail "Secure Boot: the events do not show the chain shim -> GRUB -> grub.cfg -> kernel"
		show "$W/events-$MAC.txt" 30
	fi
	# (The installed system's kernel runs with `quiet`: its EFI stub says nothing.)
	if lab_seen "$SERIAL" 'EFI stub: UEFI Secure Boot is enabled'; then
		pass "Secure Boot: the stem cell's kernel (Debian's, signed) says 'EFI stub: UEFI Secure Boot is enabled'"
	else
		fail "Secure Boot: no 'EFI stub: UEFI Secure Boot is enabled' on the console"
	fi
	if grep -qE $'^boot\tboot script: installed, boot from local disk.*\(GRUB\)' "$W/events-$MAC.txt"; then
		pass "Secure Boot: after the install, its grub.cfg said boot from the local disk (the signed GRUB reads the disk's grub.cfg)"
	else
		fail "Secure Boot: no 'installed, boot from local disk (GRUB)' boot event"
	fi
	if lab_seen "$SERIAL" '^install: GRUB for UEFI, signed for Secure Boot'; then
		pass "Secure Boot: the install put shim and Debian's signed GRUB on the disk"
	else
		fail "Secure Boot: no 'install: GRUB for UEFI, signed for Secure Boot' line"
	fi
	if grep -qE $'^booted\t.*Secure Boot on' "$W/events-$MAC.txt"; then
		pass "Secure Boot: the running installed system reads it on: $(grep -aE $'^booted\t' "$W/events-$MAC.txt" | head -n 1 | cut -f2)"
	else
		fail "Secure Boot: the installed system did not report Secure Boot on"
		show "$W/events-$MAC.txt" 30
	fi
	# The disk rule: the serial named in the inventory, of three disks; the others untouched.
	if lab_seen "$SERIAL" "^install: disk: /dev/vda .*the only match of the disk rule serial=SC-UEFI-ROOT"; then
		pass "three disks: the install picked its disk by serial: $(grep -a '^install: disk: ' "$SERIAL" | head -n 1 | tr -d '\r' | cut -c1-160)"
	else
		fail "three disks: no 'install: disk: /dev/vda … serial=SC-UEFI-ROOT' line on the console"
	fi
	if cmp -s -n $((64 << 20)) "$W/decoy.img" /dev/zero && cmp -s -n $((64 << 20)) "$W/stick.img" /dev/zero; then
		pass "three disks: the decoy disk and the USB stick are untouched (their first 64 MiB still zero)"
	else
		fail "three disks: the decoy disk or the USB stick was written"
	fi
	phases uefi-secureboot "$MAC" "$ON_MS" "$SERIAL"
	if [ "$(jqm "$MAC" '.last_run.failed')" -gt 0 ] 2>/dev/null; then
		pass "Puppet's numbers say it: $(jqm "$MAC" '.last_run | "exit \(.exit), \(.failed) failed of \(.total)"')"
	else
		fail "config-failed, but Puppet's numbers say no failure: $(jqm "$MAC" '.last_run')"
	fi
	events "$MAC"
	if grep -qE $'^puppet\t.*Error:.*stemcell-test-fails' "$W/events-$MAC.txt" &&
		grep -q $'^config-failed\t' "$W/events-$MAC.txt"; then
		pass "Puppet's error is in the events: $(grep -aE $'^puppet\t.*Error:.*stemcell-test-fails' "$W/events-$MAC.txt" | head -n 1 | cut -f2 | cut -c1-160)"
	else
		fail "no Puppet error about stemcell-test-fails in the events"
		show "$W/events-$MAC.txt" 20
	fi
	# The fix: the operator removes the failing resource from the site's Puppet code. The
	# next timer run (puppet_interval 1min after the last run ended) takes the new bundle.
	runs=$(count_events "$MAC" puppet)
	sed -i '/^# stemcell.s uefi-secureboot test/,$d' "$D/puppet/manifests/web.pp"
	BUNDLE1=$(lab_api "$NS" /puppet/bundle.tar.gz -o /dev/null -D - | tr -d '\r' | sed -n 's/^[Xx]-[Bb]undle-[Ss]ha256: //p')
	{ [ "$BUNDLE1" != "$BUNDLE0" ] && [ ${#BUNDLE1} = 64 ]; } ||
		fail "the bundle's digest did not change with the manifest ($BUNDLE0 -> $BUNDLE1)"
	fixed=$SECONDS
	if lab_wait 900 "$QEMU_PID" state_is "$MAC" configured; then
		pass "the timer's next run converges it: configured $((SECONDS - fixed)) s after the fix: $(jqm "$MAC" '.last_run | "exit \(.exit), changed \(.changed), failed \(.failed), total \(.total), \(.millis) ms"')"
	else
		events "$MAC"
		die "not configured within 900 s of the fix (state $(lab_state "$NS" "$MAC"))" "$W/events-$MAC.txt" "$SERIAL"
	fi
	if [ "$(jqm "$MAC" '.last_run.bundle')" = "$BUNDLE1" ]; then
		pass "the run applied the fixed bundle ${BUNDLE1:0:12}…"
	else
		fail "the run's bundle is $(jqm "$MAC" '.last_run.bundle'), want the fixed $BUNDLE1"
	fi
	if [ "$(count_events "$MAC" booted)" = 1 ] && [ "$(count_events "$MAC" puppet)" -gt "$runs" ]; then
		pass "no reboot: the timer ran Puppet again (one booted event)"
	else
		fail "booted $(count_events "$MAC" booted) times; puppet events $runs -> $(count_events "$MAC" puppet)"
	fi
	# The failing run already applied the rest of the role (nginx's page): the fixed run
	# may change nothing, it must fail nothing.
	check_role uefi-secureboot "$MAC" 0
	if [ "$(lab_count "$SERIAL" '^stemcell: stem cell starting')" = 1 ]; then
		pass "the stem cell ran once"
	else
		fail "the stem cell started $(lab_count "$SERIAL" '^stemcell: stem cell starting') times"
	fi
	# Several NICs: it netbooted from its second NIC and was the listed machine throughout.
	if [ "$(jqm "$NIC2" .hostname)" = "$HOST" ] && [ "$(jqm "$NIC2" .mac)" = "$MAC" ] &&
		[ "$(jqm "$MAC" .facts.boot_nic)" = "$NIC2" ]; then
		pass "two NICs: its second NIC $NIC2 is $HOST (key $MAC), and it netbooted from it (facts.boot_nic)"
	else
		fail "two NICs: /api/v1/machines/$NIC2 is $(machine_json "$NIC2" | head -c 300)"
	fi
	if lab_api "$NS" /api/v1/machines | jq -e --arg m "$NIC2" '[.[] | select(.mac == $m)] | length == 0' >/dev/null; then
		pass "two NICs: no unknown machine for $NIC2 in the machine list"
	else
		fail "two NICs: $NIC2 shows up as a machine of its own"
	fi
	if grep -qE $'^boot\t.*netbooted from its NIC '"$NIC2" "$W/events-$MAC.txt"; then
		pass "two NICs: the boot event says it: $(grep -aE $'^boot\t.*netbooted from its NIC' "$W/events-$MAC.txt" | head -n 1 | cut -f2)"
	else
		fail "two NICs: no boot event naming the NIC $NIC2"
	fi
	if lab_seen "$SERIAL" '^install: network: systemd-networkd, from the inventory: .*20-stemcell-bond0.netdev'; then
		pass "the install wrote the bond: $(grep -a '^install: network:' "$SERIAL" | tr -d '\r' | cut -c1-160)"
	else
		fail "the install did not write the inventory's bond"
	fi
	# The bond: cut the first (active) NIC's link; the machine stays reachable over the other.
	qmp() {
		python3 - "$QMP" "$1" <<'EOF'
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
f = s.makefile("rw")
f.readline()
for cmd in ('{"execute": "qmp_capabilities"}', sys.argv[2]):
    f.write(cmd + "\n")
    f.flush()
    while True:
        r = json.loads(f.readline())
        if "return" in r or "error" in r:
            break
    if "error" in r:
        sys.exit(r["error"].get("desc", "QMP error"))
EOF
	}
	if qmp '{"execute": "set_link", "arguments": {"name": "n0", "up": false}}'; then
		cut=$SECONDS
		if lab_wait 60 "" page_is "$MAC" "$HOST: role web, configured by Puppet"; then
			pass "bond: the first NIC's link is cut (QMP set_link n0 off); http://$(jqm "$MAC" .ip)/ still answers over the second NIC ($((SECONDS - cut)) s)"
		else
			fail "bond: nothing answers at $(jqm "$MAC" .ip) once the first NIC's link is cut"
		fi
		# And back: the other NIC's link cut, the first one's restored.
		if qmp '{"execute": "set_link", "arguments": {"name": "n0", "up": true}}' &&
			qmp '{"execute": "set_link", "arguments": {"name": "n1", "up": false}}' &&
			lab_wait 60 "" page_is "$MAC" "$HOST: role web, configured by Puppet"; then
			pass "bond: with the second NIC's link cut instead, it answers over the first"
		else
			fail "bond: no answer over the first NIC with the second one's link cut"
		fi
	else
		fail "QMP set_link failed on $QMP"
	fi
	power_off
	# The disk's own signed chain, without any network (no NIC): the firmware's removable
	# path is shim, which loads Debian's signed GRUB, which boots Debian. Its disk and
	# firmware variables as installed; nothing written (snapshot).
	SERIAL=$W/disk-only.console
	cp "$W/uefi.img.VARS.fd" "$W/disk-only.VARS.fd"
	ON=$SECONDS
	# shellcheck disable=SC2054 # QEMU's options are comma-separated lists
	lab_bg "$NS" "$SERIAL.qemu" qemu-system-x86_64 -accel tcg -m "${DEB_MEM:-2048}" -smp "${DEB_SMP:-1}" \
		-nographic -monitor none -serial "file:$SERIAL" -nic none \
		-machine q35,smm=on -global driver=cfi.pflash01,property=secure,value=on \
		-drive if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.ms.fd \
		-drive "if=pflash,format=raw,unit=1,file=$W/disk-only.VARS.fd" \
		-drive "if=none,id=d0,file=$W/uefi.img,format=raw,snapshot=on" -device "virtio-blk-pci,drive=d0,serial=$DISK_SERIAL" ||
		die "QEMU did not start for the disk-only boot"
	QEMU_PID=$LAB_PID
	if seen "^$HOST login:" 600; then
		pass "Secure Boot: without a network the disk's own chain (shim as EFI/BOOT/BOOTX64.EFI, Debian's signed GRUB) boots Debian to '$HOST login:' ($AT s)"
	else
		fail "Secure Boot: the disk alone did not boot to '$HOST login:' within 600 s"
		show "$SERIAL" 20
	fi
	if lab_seen "$SERIAL" 'Welcome to GRUB' && ! lab_seen "$SERIAL" 'Access Denied|Security Violation|bad shim signature'; then
		pass "Secure Boot: the firmware ran the disk's shim and GRUB (no refusal on the console)"
	else
		fail "Secure Boot: the disk-only boot shows no GRUB, or a refusal"
	fi
	power_off
	finish
fi

# ---- bios: the first machine ------------------------------------------------------------------
install_and_converge old "$MAC" tap0 "$W/old.img" configured
OLD_ON_MS=$ON_MS
check_role old "$MAC"
phases old "$MAC" "$OLD_ON_MS" "$SERIAL"
OLD=$(machine_json "$MAC")
echo "$OLD" >"$W/old.json"

# ---- power off and on: it stays on its disk --------------------------------------------------------
booted=$(count_events "$MAC" booted)
runs=$(count_events "$MAC" configured)
boots=$(count_events "$MAC" boot)
power_off
power_on old "$MAC" tap0 "$W/old.img"
echo "== old: powered off and on again" >&3
if seen "^$HOST login:" 600; then
	pass "old: back at '$HOST login:' $AT s after power-on"
else
	die "old: no login prompt within 600 s of the second power-on" "$SERIAL"
fi
if lab_seen "$SERIAL" '^stemcell: stem cell starting'; then
	fail "old: the stem cell started again"
else
	pass "old: no stem cell on the second power-on"
fi
events "$MAC"
if tail -n +$((boots + 1)) <(grep $'^boot\t' "$W/events-$MAC.txt") | grep -q 'installed, boot from local disk'; then
	pass "old: the boot script said: boot from local disk"
else
	fail "old: no 'boot from local disk' boot script on the second power-on"
fi
more_runs() { [ "$(count_events "$MAC" configured)" -gt "$runs" ]; }
lab_wait 900 "$QEMU_PID" more_runs
if [ "$(count_events "$MAC" booted)" -gt "$booted" ]; then
	pass "old: a new booted event ($booted -> $(count_events "$MAC" booted))"
else
	fail "old: no new booted event"
fi
if state_is "$MAC" configured && [ "$(count_events "$MAC" configured)" -gt "$runs" ]; then
	pass "old: still configured after Puppet's run at boot: $(jqm "$MAC" '.last_run | "changed \(.changed), failed \(.failed)"')"
else
	fail "old: state $(lab_state "$NS" "$MAC") after the second boot (configured runs $runs -> $(count_events "$MAC" configured))"
fi

# ---- the promise: thrown away, replaced, back as the same host ---------------------------------
power_off
echo "== old: thrown away. The operator moves $HOST to a new machine's MAC $MAC2 in inventory.yaml" >&3
# The replacement has two disks and a RAID 1 root (the layout's option): either disk boots.
DISK_RULE="disk: { raid1: true }"
truncate -s 4G "$W/new2.img"
MORE=(-drive "file=$W/new2.img,format=raw,if=virtio")
inventory "$MAC2"
moved() { [ "$(jqm "$MAC2" .hostname)" = "$HOST" ] && [ "$(jqm "$MAC2" .listed)" = true ]; }
if lab_wait 10 "" moved; then
	pass "the running server took the edit: $MAC2 is $HOST ($(jqm "$MAC2" .state))"
else
	die "the inventory edit did not take: $(machine_json "$MAC2")" "$D/server.log"
fi
install_and_converge new "$MAC2" tap1 "$W/new.img" configured
check_role new "$MAC2"
phases new "$MAC2" "$ON_MS" "$SERIAL"
NEW=$(machine_json "$MAC2")
echo "$NEW" >"$W/new.json"
same() {
	local a b
	a=$(jq -r "$1" <<<"$OLD")
	b=$(jq -r "$1" <<<"$NEW")
	if [ -n "$a" ] && [ "$a" != null ] && [ "$a" = "$b" ]; then
		pass "old and new: the same $2: ${a:0:64}"
	else
		fail "old and new differ in $2: '$a' vs '$b'"
	fi
}
raid_member() {
	local start
	start=$(sfdisk -J "$1" 2>/dev/null | jq -r '.partitiontable.partitions[1].start // empty')
	[ -n "$start" ] && [ "$(blkid -p -O $((start * 512)) -o value -s TYPE "$1" 2>/dev/null)" = linux_raid_member ]
}
if raid_member "$W/new.img" && raid_member "$W/new2.img"; then
	pass "new: RAID 1: partition 2 of both disks is an md member, and it booted from it: $(grep -a '^install: RAID 1: ' "$SERIAL" | head -n 1 | tr -d '\r' | cut -c1-120)"
else
	fail "new: RAID 1: partition 2 is not an md member on both disks"
fi
same .os_image "OS image (sha256)"
same .last_run.packages "package list (digest of dpkg-query -W)"
same .last_run.bundle "Puppet bundle"
same '.last_run | "changed \(.changed), failed \(.failed), total \(.total)"' "Puppet result"
same .hostname "hostname in the inventory"
if [ "$(jq -r .os_image <<<"$NEW")" = "$SHA" ]; then pass "the OS image is the one built: ${SHA:0:12}…"; else fail "os_image is not $SHA"; fi
if lab_seen "$SERIAL" "^$HOST login:" && lab_seen "$W/old-1.console" "^$HOST login:"; then
	pass "both consoles say '$HOST login:'"
else
	fail "the consoles do not both say '$HOST login:'"
fi

# ---- re-arm the replacement: it reinstalls -------------------------------------------------------
if ip netns exec "$NS" "$STEMCELL" reinstall --config "$D/stemcell.yaml" "$MAC2" >"$W/reinstall.txt" 2>&1; then
	pass "stemcell reinstall $MAC2: $(head -n 1 "$W/reinstall.txt" | cut -c1-100)"
else
	die "stemcell reinstall failed" "$W/reinstall.txt"
fi
if state_is "$MAC2" pending; then pass "re-armed: state pending"; else fail "state $(lab_state "$NS" "$MAC2") after the re-arm, not pending"; fi
power_off
power_on new "$MAC2" tap1 "$W/new.img"
echo "== new: re-armed, powered on" >&3
seen "^stemcell: stem cell starting" 300 || die "new: no stem cell after the re-arm" "$SERIAL"
pass "new: the stem cell starts again ($AT s after power-on)"
seen "^stemcell: install done" 1500 || die "new: the reinstall did not finish" "$SERIAL" "$D/server.log"
pass "new: reinstalled ($AT s after power-on)"
if lab_wait 30 "" state_is "$MAC2" installed || state_is "$MAC2" booted || state_is "$MAC2" configured; then
	pass "new: state $(lab_state "$NS" "$MAC2") after the reinstall"
else
	fail "new: state $(lab_state "$NS" "$MAC2") after the reinstall"
fi
# The re-arm started a new timeline, and the netboot after it opened it (its firmware phase).
nb=$(jqm "$MAC2" '.phases.netboot // 0')
if [ "$nb" -gt "$ON_MS" ] 2>/dev/null; then
	pass "new: the reinstall's timeline starts at its netboot, $(((nb - ON_MS) / 1000)) s after power-on"
else
	fail "new: the reinstall's timeline has no netboot after this power-on: $(jqm "$MAC2" .phases)"
fi
phases reinstall "$MAC2" "$ON_MS" "$SERIAL"
power_off
finish
