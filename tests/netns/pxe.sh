#!/bin/bash
# End to end through real firmware: a QEMU machine with an empty disk powers on, network
# first, and netboots through stemcell's own DHCP, TFTP and HTTP into the stem cell, which
# installs it; it reboots by itself into its installed system, and so on.
#
#   tests/netns/pxe.sh SCENARIO [STEMCELL]     # as root; STEMCELL: the binary
#
# SCENARIO:
#   bios       SeaBIOS, e1000 with its iPXE ROM; stemcell authoritative
#   uefi-ipxe  OVMF, virtio-net with its iPXE EFI ROM; stemcell in proxy mode beside
#              dnsmasq as the site's DHCP server (its own namespace, addresses only)
#   uefi-pxe   OVMF's own PXE (virtio-net, romfile=: no iPXE ROM); stemcell authoritative.
#              The firmware probes snponly.efi's size over TFTP, aborts that transfer with
#              error 8, then fetches it; snponly.efi is iPXE, which asks for the boot script.
#   uefi-http  OVMF's own UEFI HTTP Boot (virtio-net, no iPXE ROM); stemcell authoritative
#              with no TFTP at all (no tftp section). OVMF tries PXE first: it is told its
#              TFTP file, its read meets no listener and fails at once; then HTTP boot
#              (vendor class HTTPClient, arch 16) gets option 60 "HTTPClient" and the URL
#              of snponly.efi, HEADs and GETs it; iPXE asks for the boot script. No TFTP
#              socket, no TFTP event, the whole run (docs/firmware.md, "UEFI HTTP Boot").
#              Power-on 1 only: the install and its reboot, an HTTP boot told to boot
#              from the disk, prove what power-ons 2 and 3 would.
#   uefi-http-proxy
#              uefi-http with stemcell in proxy mode beside dnsmasq (as in uefi-ipxe): the
#              address from dnsmasq's offer, the URL from stemcell's; PXE's REQUEST on
#              port 4011 (HTTP boot never asks there). Not in CI (pxe_boot.rs): run it by
#              hand; the CI budget pays for one HTTP boot scenario.
#   uefi-ipv6  OVMF's own PXE over IPv6 only (its IPv4 off; virtio-net, no iPXE ROM);
#              stemcell authoritative for DHCPv6 (dhcp.ipv6, fd00:5ce1::/64) and DHCPv4.
#              The firmware SOLICITs, is ADVERTISEd an EUI-64 address and
#              tftp://[fd00:5ce1::1]/snponly.efi, REQUESTs, and fetches snponly.efi over
#              TFTP on IPv6. snponly.efi is iPXE, which configures IPv4 (the link has no
#              router advertisement for its IPv6) and fetches the boot script; the stem cell
#              speaks DHCPv4 only. Power-on 1 only: install, reboot into the installed
#              system (its firmware asks over IPv6 again and is told to boot from disk).
#   failing    SeaBIOS as in bios; the machine's role template exits 3
#   arm64      qemu-system-aarch64's virt machine (TCG) with AAVMF (Debian's qemu-efi-aarch64)
#              and its own PXE; stemcell authoritative, no loader configured: DHCP arch 11
#              gets GRUB's signed network image by default, without shim (Debian's
#              grub-efi-arm64-signed, fetched as an arm64 package into the cache with
#              shim-signed, which grub: also names; Debian has no arm64 iPXE), GRUB
#              its grub.cfg over TFTP, then the arm64 stem cell (STEMCELL_IMAGE, else built
#              with --arch arm64), which installs with the base role (systemd-boot as
#              \EFI\BOOT\BOOTAA64.EFI); the machine reboots by itself, GRUB is told to boot
#              the disk and the installed system prints its line. One power-on only (TCG).
#   discover   an unlisted machine with two NICs and two disks is discovered (its own
#              script, tests/netns/discover.sh, which says what it checks)
#   debian-installer
#              SeaBIOS as in bios; the machine's role boots Debian's own netboot installer
#              (debian-installer-12-netboot-amd64's linux and initrd.gz, from the assets
#              folder) with kickstarts/debian-installer.preseed.j2 as its preseed: the
#              installer fetches its kernel and initrd, gets its address from stemcell,
#              fetches the preseed from its install URL (with the token) and runs the
#              preseed's first command, which posts a line to the machine's events. (A full
#              install needs a Debian mirror; the test stops there.)
# bios, uefi-ipxe, uefi-pxe, uefi-http: power-on 1 installs (state installed; events: DHCP,
# TFTP where the firmware uses it, boot script, kernel, initrd, install script, log lines,
# done), the machine reboots by itself and its second boot is told to boot from its disk,
# where the installed system prints "stemcell-installed: host=... role=..."; power-on 2
# (after QEMU is killed) boots from the disk again and installs nothing; a re-arm through
# the API makes power-on 3 install again.
# failing: state failed with the script's error line in the events, and the machine stays
# put: no second boot and no second install for FAIL_WATCH seconds (default 30).
#
# Why authoritative for uefi-pxe: proxy mode is covered with UEFI by uefi-ipxe, and
# authoritative mode hands the firmware its boot file in the first OFFER (no port 4011),
# the path of a lab without a site DHCP server; with it, TFTP events are attributed through
# stemcell's own leases. Proxy mode with EDK2's own PXE still runs for real: in uefi-ipxe,
# once the machine is installed and the ROM's iPXE hands back, OVMF tries its own PXE (over
# the ROM's network driver) before the disk: proxy OFFER, REQUEST on port 4011, TFTP with
# the tsize probe, snponly.efi, the boot script again.
#
# Each check prints PASS: or FAIL: with the seconds since the start; exit 1 if any failed,
# 77 (with the reason, loudly) when this machine cannot run it: not root, or no QEMU,
# OVMF, iPXE or dnsmasq. Everything it makes (namespaces, processes, the work folder) is
# removed on exit, also on failure and on INT/TERM/HUP; KEEP=1 keeps the work folder
# (serial consoles, server log, events, disk).
#
# Environment:
#   STEMCELL_IMAGE  a folder with the stem cell's vmlinuz and initrd.img; without it the
#                   script builds one into its work folder (`stemcell image build`, with
#                   STEMCELL_CACHE, default ${CARGO_TARGET_DIR:-target}/stemcell-cache)
#   WATCH_CMD       run (bash -c) inside the server namespace once stemcell is up, with
#                   STEMCELL_URL and WATCH_MAC exported; at the end the script waits for it
#                   (WATCH_TIMEOUT seconds, default 120) and fails if it failed
#   FAIL_WATCH      seconds the failing machine is watched for a reboot (default 30)
#   PXE_PREFLIGHT=1 only check that it can run here: exit 0, or 77 with the reason
set -u
export PATH="$PATH:/usr/sbin:/sbin"
# curl talks to 198.18.0.1 directly, never through a proxy.
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY no_proxy NO_PROXY
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=../../lab/lib.sh
. "$ROOT/lab/lib.sh"

SCENARIO=${1:-}
STEMCELL=${2:-${STEMCELL:-${CARGO_TARGET_DIR:-$ROOT/target}/debug/stemcell}}
case "$SCENARIO" in
discover) exec bash "$ROOT/tests/netns/discover.sh" "$STEMCELL" ;;
bios | failing | debian-installer) FW=bios MODE=authoritative ;;
uefi-ipxe) FW=uefi-ipxe MODE=proxy ;;
uefi-pxe) FW=uefi-pxe MODE=authoritative ;;
uefi-http) FW=uefi-http MODE=authoritative ;;
uefi-http-proxy) FW=uefi-http MODE=proxy ;;
uefi-ipv6) FW=uefi-pxe6 MODE=authoritative ;;
arm64) FW=aarch64 MODE=authoritative ;;
*)
	echo "usage: $0 bios|uefi-ipxe|uefi-pxe|uefi-http|uefi-http-proxy|uefi-ipv6|arm64|failing|debian-installer|discover [STEMCELL]" >&2
	exit 2
	;;
esac

skip() {
	echo "!!!!!!!! SKIP ($SCENARIO): $* !!!!!!!!"
	exit 77
}
[ "$(id -u)" = 0 ] || skip "not root (network namespaces and tap devices need root)"
if [ "$FW" = aarch64 ]; then
	command -v qemu-system-aarch64 >/dev/null || skip "no qemu-system-aarch64 (Debian's qemu-system-arm)"
	for f in /usr/share/AAVMF/AAVMF_CODE.fd /usr/share/AAVMF/AAVMF_VARS.fd; do
		[ -r $f ] || skip "no $f (Debian's qemu-efi-aarch64)"
	done
	# The arm64 stem cell and loaders are arm64 packages: apt-get download PKG:arm64.
	dpkg --print-foreign-architectures | grep -qx arm64 ||
		skip "dpkg has no arm64 architecture (dpkg --add-architecture arm64; apt-get update: scripts/setup-debian.sh)"
else
	command -v qemu-system-x86_64 >/dev/null || skip "no qemu-system-x86_64 (Debian's qemu-system-x86)"
fi
for f in /usr/lib/ipxe/undionly.kpxe /usr/lib/ipxe/snponly.efi; do
	[ -r $f ] || skip "no $f (Debian's ipxe)"
done
case "$FW" in
bios) rom=efi-e1000.rom ;;
*) rom=efi-virtio.rom ;;
esac
[ -r /usr/lib/ipxe/qemu/$rom ] || skip "no /usr/lib/ipxe/qemu/$rom (Debian's ipxe-qemu)"
case "$FW" in uefi-*) [ -r /usr/share/ovmf/OVMF.fd ] || skip "no /usr/share/ovmf/OVMF.fd (Debian's ovmf)" ;; esac
DI=/usr/lib/debian-installer/images/12/amd64/text
if [ "$SCENARIO" = debian-installer ]; then
	for f in "$DI/debian-installer/amd64/linux" "$DI/debian-installer/amd64/initrd.gz"; do
		[ -r "$f" ] || skip "no $f (Debian's debian-installer-12-netboot-amd64)"
	done
fi
[ "$MODE" = proxy ] && { command -v dnsmasq >/dev/null || skip "no dnsmasq (Debian's dnsmasq-base)"; }
for t in curl ip; do command -v $t >/dev/null || skip "no $t"; done
[ -c /dev/net/tun ] || skip "no /dev/net/tun"
[ "${PXE_PREFLIGHT:-}" = 1 ] && exit 0 # only asked whether it can run here
[ -x "$STEMCELL" ] || {
	echo "FAIL: no stemcell binary at $STEMCELL" >&2
	exit 1
}

T0=$SECONDS
P=scpx-$$
SRV=$P-srv SITE=$P-site
W=$(mktemp -d "/tmp/$P-$SCENARIO.XXXXXX")
chmod 755 "$W"
D=$W/srv # stemcell's folder
case "$SCENARIO" in
bios) MAC=52:54:00:5e:00:01 ;;
uefi-ipxe) MAC=52:54:00:5e:00:02 ;;
uefi-pxe) MAC=52:54:00:5e:00:03 ;;
uefi-http) MAC=52:54:00:5e:00:0a ;;
uefi-http-proxy) MAC=52:54:00:5e:00:0b ;;
failing) MAC=52:54:00:5e:00:04 ;;
debian-installer) MAC=52:54:00:5e:00:05 ;;
uefi-ipv6) MAC=52:54:00:5e:00:16 ;;
arm64) MAC=52:54:00:5e:00:a4 ;;
esac
HOST=pxe-$SCENARIO
ROLE=base
[ "$SCENARIO" = failing ] && ROLE=broken
[ "$SCENARIO" = debian-installer ] && ROLE=debian-di
DISK=$W/disk.img
QEMU_PID='' WATCH_PID='' SERIAL=''
QEMU_MORE=()

# shellcheck source=harness.sh
. "$ROOT/tests/netns/harness.sh"

# ---- the events ------------------------------------------------------------------------
events() { lab_events "$SRV" "$MAC" >"$W/events.txt"; }
# count_events KIND REGEX
count_events() { grep -cE "^$1"$'\t'".*$2" "$W/events.txt"; }
# events_in_order DESCRIPTION KIND:REGEX...: the events hold these, in this order
events_in_order() {
	local desc=$1 i=0 kind msg w
	shift
	local want=("$@")
	events
	while IFS=$'\t' read -r kind msg; do
		[ $i -lt ${#want[@]} ] || break
		w=${want[$i]}
		[ "$kind" = "${w%%:*}" ] && [[ $msg =~ ${w#*:} ]] && i=$((i + 1))
	done <"$W/events.txt"
	if [ $i = ${#want[@]} ]; then
		pass "$desc"
	else
		if [ $i = 0 ]; then fail "$desc: no '${want[0]}' event"; else
			fail "$desc: no '${want[$i]}' event after '${want[$((i - 1))]}'"
		fi
		show "$W/events.txt" 60
	fi
}

# ---- the machine -------------------------------------------------------------------------
# power_on N: QEMU, its serial console in $W/power-on-N.log
power_on() {
	ON=$SECONDS
	SERIAL=$W/power-on-$1.log
	local fw=$FW
	[ "$fw" = uefi-http ] && fw=uefi-pxe # the same machine: which path it takes is OVMF's
	lab_qemu "$SRV" "$fw" tap0 "$MAC" "$DISK" "$SERIAL" "${QEMU_MORE[@]}" || die "QEMU did not start"
	QEMU_PID=$LAB_PID
}
power_off() {
	lab_stop "$QEMU_PID"
	QEMU_PID=
}
# serial REGEX SECONDS WHAT: wait for REGEX on the console; a failure the stem cell prints
# (when not looked for) or QEMU exiting stops the wait early.
serial() {
	local re=$1
	[[ $re == *failed* ]] || re="$re|^stemcell: .* failed: "
	if lab_wait "$2" "$QEMU_PID" lab_seen "$SERIAL" "$re" && lab_seen "$SERIAL" "$1"; then
		pass "$3 ($((SECONDS - ON)) s after power-on): $(grep -aE -- "$1" "$SERIAL" | tail -n 1 | tr -d '\r' | cut -c1-120)"
	else
		kill -0 "$QEMU_PID" 2>/dev/null || echo "    QEMU exited" >&3
		die "$3: no /$1/ on the serial console within $2 s" "$SERIAL" "$D/server.log"
	fi
}
banners() { lab_count "$SERIAL" "$LAB_BANNER"; }
state_is() { [ "$(lab_state "$SRV" "$MAC")" = "$1" ]; }
check_state() {
	if lab_wait "${2:-30}" "" state_is "$1"; then pass "state $1"; else
		fail "state is '$(lab_state "$SRV" "$MAC")', not $1"
		show "$D/server.log"
	fi
}

# ---- the image ---------------------------------------------------------------------------
IMAGE=${STEMCELL_IMAGE:-}
if [ -z "$IMAGE" ]; then
	IMAGE=$W/image
	[ "$FW" = aarch64 ] && LAB_IMAGE_ARCH=arm64
	LAB_IMAGE_ARCH=${LAB_IMAGE_ARCH:-amd64} lab_build_image "$STEMCELL" "$IMAGE" "${STEMCELL_CACHE:-${CARGO_TARGET_DIR:-$ROOT/target}/stemcell-cache}" \
		>"$W/image-build.txt" 2>&1 || die "stemcell image build failed" "$W/image-build.txt"
	pass "stem cell built ($(head -n 1 "$W/image-build.txt"))"
fi
{ [ -r "$IMAGE/vmlinuz" ] && [ -r "$IMAGE/initrd.img" ]; } || die "no vmlinuz and initrd.img in $IMAGE"

# ---- the network -------------------------------------------------------------------------
# $SRV: br0 198.18.0.1/24 with tap0 (the machine's cable); stemcell listens on br0.
# uefi-ipxe: $SITE, bridged in through a veth, runs dnsmasq at 198.18.0.2 (addresses only).
lab_netns "$SRV" || die "cannot create namespace $SRV"
{ lab_bridge "$SRV" && lab_tap "$SRV" tap0; } || die "cannot set up br0 and tap0 in $SRV"
if [ "$SCENARIO" = uefi-ipv6 ]; then
	# nodad: stemcell binds TFTP to this address at once (a tentative address cannot be bound).
	ip -n "$SRV" addr add fd00:5ce1::1/64 dev br0 nodad || die "cannot add fd00:5ce1::1 to br0"
fi
if [ "$MODE" = proxy ]; then
	{ lab_netns "$SITE" && lab_veth "$SRV" "$SITE" s0 198.18.0.2/24; } || die "cannot set up $SITE"
	lab_bg "$SITE" "$W/dnsmasq.log" dnsmasq -d --conf-file=/dev/null --port=0 --interface=s0 \
		--bind-interfaces --user=root --dhcp-range=198.18.0.200,198.18.0.250,1h \
		--dhcp-leasefile="$W/dnsmasq.leases" --log-dhcp
	lab_wait 10 "$LAB_PID" lab_seen "$W/dnsmasq.log" "DHCP, IP range" ||
		die "dnsmasq did not start" "$W/dnsmasq.log"
	pass "dnsmasq is the site's DHCP server (198.18.0.2, addresses .200-.250, nothing about booting)"
fi

# ---- arm64: Debian's arm64 shim and signed network GRUB ---------------------------------
# arm64 packages, so not installable beside this host's own: fetched once with apt-get
# download into the cache and unpacked there (grub: in stemcell.yaml names them).
ARM64_LOADERS=${STEMCELL_CACHE:-${CARGO_TARGET_DIR:-$ROOT/target}/stemcell-cache}/arm64-loaders
arm64_loaders() {
	local pkg deb
	mkdir -p "$ARM64_LOADERS/root" || return 1
	for pkg in shim-signed grub-efi-arm64-signed; do
		deb=$(find "$ARM64_LOADERS" -maxdepth 1 -name "${pkg}_*_arm64.deb" | sort | tail -n 1)
		if [ -z "$deb" ]; then
			(cd "$ARM64_LOADERS" && apt-get download -q "$pkg:arm64") || return 1
			deb=$(find "$ARM64_LOADERS" -maxdepth 1 -name "${pkg}_*_arm64.deb" | sort | tail -n 1)
		fi
		dpkg-deb -x "$deb" "$ARM64_LOADERS/root" || return 1
	done
}
if [ "$FW" = aarch64 ]; then
	arm64_loaders >"$W/arm64-loaders.txt" 2>&1 || die "cannot fetch Debian's arm64 shim and GRUB" "$W/arm64-loaders.txt"
	pass "Debian's arm64 loaders: $(cd "$ARM64_LOADERS" && echo shim-signed_*_arm64.deb grub-efi-arm64-signed_*_arm64.deb)"
fi

# ---- stemcell ----------------------------------------------------------------------------
if [ "$FW" = aarch64 ]; then
	# No boot_files.arm64 and no loader: arch 11's default (GRUB's chain) is what is tested.
	LAB_CMDLINE=console=ttyAMA0 lab_config "$D" "$MODE" "$IMAGE"
	printf 'grub:\n  arm64:\n    shim: %s\n    grub: %s\n' \
		"$ARM64_LOADERS/root/usr/lib/shim/shimaa64.efi.signed" \
		"$ARM64_LOADERS/root/usr/lib/grub/arm64-efi-signed/grubnetaa64.efi.signed" >>"$D/stemcell.yaml"
elif [ "$SCENARIO" = debian-installer ]; then
	# Debian's installer asks for name servers when DHCP names none (and waits there).
	LAB_SUBNETS='    - subnet: 198.18.0.0/24
      pool: [198.18.0.100, 198.18.0.199]
      router: 198.18.0.1
      dns: [198.18.0.1]
      domain: lab.example
      lease_time: 1h' lab_config "$D" "$MODE" "$IMAGE"
elif [ "$FW" = uefi-http ]; then
	LAB_TFTP_ROOT='' lab_config "$D" "$MODE" "$IMAGE" # no tftp section: no TFTP at all
elif [ "$SCENARIO" = uefi-ipv6 ]; then
	# HTTP on [::]: iPXE and the stem cell use IPv4, UEFI HTTP boot over IPv6 would use IPv6.
	LAB_LISTEN='"[::]:8080"' LAB_DHCP_MORE='  ipv6:
    server_ip: fd00:5ce1::1
    prefix: fd00:5ce1::/64
    lease_time: 1h' lab_config "$D" "$MODE" "$IMAGE"
else
	lab_config "$D" "$MODE" "$IMAGE"
fi
cat >"$D/kickstarts/broken.sh.j2" <<'EOF'
#!/bin/sh
echo "broken: {{ hostname }} looks for its disk"
echo "broken: no disk /dev/nonexistent" >&2
exit 3
EOF
case "$FW" in bios) VDISK=/dev/sda ;; *) VDISK=/dev/vda ;; esac
# Only the debian-installer scenario has the role (check wants its template and assets).
DI_ROLE=
if [ "$SCENARIO" = debian-installer ]; then
	cp "$ROOT/kickstarts/debian-installer.preseed.j2" "$D/kickstarts/"
	echo "assets: $DI" >>"$D/stemcell.yaml"
	DI_ROLE='  debian-di:
    template: debian-installer.preseed.j2
    kernel: debian-installer/amd64/linux
    initrd: debian-installer/amd64/initrd.gz
    cmdline: auto=true priority=critical url={{ install_url }} interface=auto hostname={{ hostname }} domain=lab.example console=ttyS0,115200 ds=nocloud;s={{ nocloud_url }}'
fi
cat >"$D/inventory.yaml" <<EOF
defaults:
  unknown: ignore
roles:
  base:
    template: base.sh.j2
    vars: { puppet_server: puppet.lab.example }
  broken:
    template: broken.sh.j2
$DI_ROLE
machines:
  "$MAC":
    hostname: $HOST
    role: $ROLE
    vars: { disk: $VDISK }
EOF
lab_check "$STEMCELL" "$D" || die "stemcell check failed" "$D/check.txt"
lab_serve "$SRV" "$STEMCELL" "$D" || die "stemcell did not come up" "$D/server.log"
pass "stemcell serves ($MODE DHCP, TFTP and HTTP on br0 in $SRV)"
if [ "$FW" = uefi-http ]; then
	expect "no TFTP: stemcell's config has no tftp section, and nothing listens on UDP port 69 in $SRV" \
		"$(grep -c '^tftp:' "$D/stemcell.yaml")/$(ip netns exec "$SRV" ss -Hlun 'sport = :69' | wc -l)" 0/0
fi

if [ -n "${WATCH_CMD:-}" ]; then
	lab_bg "$SRV" "$W/watch.log" env STEMCELL_URL="$LAB_URL" WATCH_MAC="$MAC" bash -c "$WATCH_CMD"
	WATCH_PID=$LAB_PID
	pass "WATCH_CMD started (pid $WATCH_PID)"
fi

truncate -s 1G "$DISK"

# ---- power-on 1: the install, the reboot, the installed system ---------------------------
has_events() { events && [ "$(count_events "$1" "$2")" -gt 0 ]; }
if [ "$SCENARIO" = debian-installer ]; then
	# ---- Debian's installer, preseeded by stemcell ---------------------------------------------
	echo "== power-on 1: $FW, role debian-di: Debian's netboot installer" >&3
	QEMU_MORE=(-m 1024)
	power_on 1
	if lab_wait 1200 "$QEMU_PID" has_events log "debian-installer: the preseed for $HOST arrived"; then
		pass "the installer ran its preseed's first command ($((SECONDS - ON)) s after power-on)"
	else
		fail "no 'preseed arrived' line from the installer within 1200 s"
		show "$SERIAL" 40
	fi
	events_in_order "the events: DHCP, boot script, the installer's kernel and initrd from the assets, DHCP again (the installer's own), the preseed served, its first command's line" \
		dhcp:"DHCPACK 198\.18\.0\.1[0-9][0-9], boot file http://[^ ]*/boot/$MAC\.ipxe" \
		boot:"^boot script: install as role debian-di" \
		file:"^fetched asset debian-installer/amd64/linux" \
		file:"^fetched asset debian-installer/amd64/initrd\.gz" \
		dhcp:"DHCPACK 198\.18\.0\.1[0-9][0-9]" \
		install:"^install script served" \
		log:"^debian-installer: the preseed for $HOST arrived"
	check_state installing 5
	check "the installer's kernel was told where its preseed is: url=…/install/$MAC?token=… on its command line" \
		lab_seen "$SERIAL" "url=http://[^ ]*/install/$MAC\?token=[0-9a-f]+"
	# The role's cmdline also carries cloud-init's NoCloud seed (Ubuntu's autoinstall needs
	# it; Debian's installer ignores it): real iPXE hands the kernel its ';' intact.
	check "iPXE passed 'ds=nocloud;s=…/nocloud/$MAC/TOKEN/' to the kernel, ';' and all" \
		lab_seen "$SERIAL" "ds=nocloud;s=http://[^ ]*/nocloud/$MAC/[0-9a-f]+/"
	power_off
elif [ "$SCENARIO" = uefi-ipv6 ]; then
	# ---- OVMF over IPv6: DHCPv6, TFTP over IPv6, then iPXE and the stem cell over IPv4 ------
	echo "== power-on 1: OVMF, IPv4 off in the firmware, empty disk, network first" >&3
	A6="fd00:5ce1::5054:ff:fe5e:16" # the NIC's EUI-64 address in the prefix
	power_on 1
	serial "Start PXE over IPv6" 300 "the firmware starts PXE over IPv6"
	serial "^stemcell: install done" 900 "power-on 1 installs"
	check_state installed
	INSTALL_DONE_BANNERS=$(banners)
	serial "^stemcell-installed: host=$HOST role=$ROLE" 600 "it rebooted by itself into its installed system"
	check "the machine rebooted by itself: firmware banners on its console $INSTALL_DONE_BANNERS at the install's end, $(banners) now" \
		test "$(banners)" -gt "$INSTALL_DONE_BANNERS"
	events_in_order "the events: DHCPv6 SOLICIT/ADVERTISE and REQUEST/REPLY with the address and tftp:// URL, snponly.efi over TFTP on IPv6, iPXE over IPv4, boot script, stem cell, install, done, then DHCPv6 again and the local-disk boot script" \
		dhcp:"^DHCPv6 SOLICIT → DHCPv6 ADVERTISE $A6, boot file tftp://\[fd00:5ce1::1\]/snponly\.efi \[x86-64 UEFI\]" \
		dhcp:"^DHCPv6 REQUEST → DHCPv6 REPLY $A6, boot file tftp://\[fd00:5ce1::1\]/snponly\.efi \(bound\)" \
		tftp:"sent snponly\.efi \([0-9]+ bytes.*from \[$A6\]" \
		dhcp:"DHCPACK 198\.18\.0\.1[0-9][0-9], boot file http://[^ ]*/boot/$MAC\.ipxe \[x86-64 UEFI \(iPXE\)\]" \
		boot:"^boot script: install as role $ROLE" \
		file:"^fetched stem-cell initrd\.img" \
		install:"^install script served" \
		done:"" \
		dhcp:"^DHCPv6 REQUEST → DHCPv6 REPLY $A6" \
		boot:"^boot script: installed, boot from local disk"
	expect "no DHCPv4 from the firmware itself: DHCPv4 events before the first iPXE one" \
		"$(sed '/(iPXE)/Q' "$W/events.txt" | grep -c $'^dhcp\tDHCP[A-Z]* ')" 0
	check "the stem cell's own lease came over DHCPv4 from 198.18.0.1 (it speaks no DHCPv6)" \
		lab_seen "$SERIAL" "^stemcell: eth0 has .* from DHCP server 198.18.0.1"
	echo "    $(wc -l <"$W/events.txt") events; the IPv6 ones:" >&3
	grep -aE 'DHCPv6|\[fd00' "$W/events.txt" | head -n 8 | cut -c1-160 | sed 's/^/    /' >&3
elif [ "$SCENARIO" = arm64 ]; then
	# ---- arm64: AAVMF -> shim -> GRUB -> the arm64 stem cell; install, reboot, the disk ----
	echo "== power-on 1: AAVMF (aarch64 under TCG), empty disk, network first" >&3
	QEMU_MORE=(-m 1024)
	power_on 1
	serial "^stemcell: install done" 900 "power-on 1 installs with the arm64 stem cell"
	check_state installed
	INSTALL_DONE_BANNERS=$(banners)
	serial "^stemcell-installed: host=$HOST role=$ROLE" 600 "it rebooted by itself into its installed system"
	check "the machine rebooted by itself: AAVMF's PXE banners on its console $INSTALL_DONE_BANNERS at the install's end, $(banners) now" \
		test "$(banners)" -gt "$INSTALL_DONE_BANNERS"
	check "the stem cell ran Debian's arm64 kernel" lab_seen "$SERIAL" "^stemcell: stem cell starting: kernel [^ ]*-arm64, mode install, machine"
	check "the installed system is the arm64 stem cell from the disk (mode installed)" \
		lab_seen "$SERIAL" "^stemcell: stem cell starting: kernel [^ ]*-arm64, mode installed"
	events_in_order "power-on 1's events: DHCP arch 11 gets GRUB, GRUB over TFTP, GRUB's config, the stem cell over TFTP, install, systemd-boot as BOOTAA64.EFI, done, then GRUB told to boot the disk" \
		dhcp:"DHCPACK 198\.18\.0\.1[0-9][0-9], boot file grubaa64\.efi \[ARM64 UEFI\]" \
		tftp:"sent grubaa64\.efi \([0-9]+ bytes" \
		boot:"^boot script: install as role $ROLE" \
		file:"^fetched stem-cell vmlinuz" \
		file:"^fetched stem-cell initrd\.img" \
		install:"^install script served" \
		log:"^install: firmware: uefi \(aarch64\)" \
		log:"^install: boot loader: systemd-boot \(UEFI, .EFI.BOOT.BOOTAA64\.EFI\)" \
		log:"installed: boots from /dev/vda via uefi" \
		done:"" \
		boot:"^boot script: installed, boot from local disk"
	echo "    $(wc -l <"$W/events.txt") events, $(count_events log "") log lines" >&3
	check "the stem cell's own lease came from 198.18.0.1" \
		lab_seen "$SERIAL" "^stemcell: eth0 has .* from DHCP server 198\.18\.0\.1"
	power_off
elif [ "$SCENARIO" != failing ]; then
	echo "== power-on 1: $FW, empty disk, network first" >&3
	power_on 1
	serial "^stemcell: install done" 900 "power-on 1 installs"
	check_state installed
	INSTALL_DONE_BANNERS=$(banners)
	serial "^stemcell-installed: host=$HOST role=$ROLE" 600 "it rebooted by itself into its installed system"
	check "the machine rebooted by itself: the same QEMU, firmware banners on its console $INSTALL_DONE_BANNERS at the install's end, $(banners) now" \
		test "$(banners)" -gt "$INSTALL_DONE_BANNERS"

	case "$SCENARIO" in
	bios) firmware=(dhcp:"DHCPACK 198\.18\.0\.1[0-9][0-9], boot file http://[^ ]*/boot/$MAC\.ipxe \[x86 BIOS \(iPXE\)\]") ;;
	uefi-ipxe) firmware=(dhcp:"→ DHCP(OFFER|ACK), boot file http://[^ ]*/boot/$MAC\.ipxe \[x86-64 UEFI \(iPXE\)\]") ;;
	uefi-pxe) firmware=(
		dhcp:"DHCPACK 198\.18\.0\.1[0-9][0-9], boot file snponly\.efi \[x86-64 UEFI\]"
		tftp:"snponly\.efi aborted by the client after 0 bytes: error 8"
		tftp:"sent snponly\.efi \([0-9]+ bytes"
		dhcp:"DHCPACK 198\.18\.0\.1[0-9][0-9], boot file http://[^ ]*/boot/$MAC\.ipxe \[x86-64 UEFI \(iPXE\)\]"
	) ;;
	uefi-http-proxy) firmware=(
		dhcp:"DHCPDISCOVER → DHCPOFFER, boot file snponly\.efi \(TFTP is off: .*\) \[x86-64 UEFI\]"
		dhcp:"DHCPREQUEST on port 4011 → DHCPACK, boot file snponly\.efi \(TFTP is off: .*\) \[x86-64 UEFI\]"
		dhcp:"DHCPDISCOVER → DHCPOFFER, boot file http://198\.18\.0\.1:8080/tftp/snponly\.efi \[x86-64 UEFI HTTP boot\]"
		file:"^fetched loader snponly\.efi over HTTP"
		dhcp:"→ DHCP(OFFER|ACK), boot file http://[^ ]*/boot/$MAC\.ipxe \[x86-64 UEFI \(iPXE\)\]"
	) ;;
	uefi-http) firmware=(
		dhcp:"DHCPACK 198\.18\.0\.1[0-9][0-9], boot file snponly\.efi \(TFTP is off: .*\) \[x86-64 UEFI\]"
		dhcp:"DHCPACK 198\.18\.0\.1[0-9][0-9], boot file http://198\.18\.0\.1:8080/tftp/snponly\.efi \[x86-64 UEFI HTTP boot\]"
		file:"^fetched loader snponly\.efi over HTTP"
		dhcp:"DHCPACK 198\.18\.0\.1[0-9][0-9], boot file http://[^ ]*/boot/$MAC\.ipxe \[x86-64 UEFI \(iPXE\)\]"
	) ;;
	esac
	events_in_order "power-on 1's events: ${firmware[*]%%:*} boot-script kernel initrd install-script log done, then the local-disk boot script" \
		"${firmware[@]}" \
		boot:"^boot script: install as role $ROLE" \
		file:"^fetched stem-cell vmlinuz" \
		file:"^fetched stem-cell initrd\.img" \
		install:"^install script served" \
		log:"^install: partitioning" \
		log:"installed: boots from" \
		done:"" \
		boot:"^boot script: installed, boot from local disk"
	if [ "$FW" = uefi-http ]; then
		check "OVMF tried its PXE first: its TFTP read met no listener (PXE-E99 on the console)" \
			lab_seen "$SERIAL" "PXE-E99: Unexpected network error"
		check "then UEFI HTTP Boot: 'Start HTTP Boot over IPv4', the URI, the size from HEAD" \
			lab_seen "$SERIAL" "Start HTTP Boot over IPv4"
		check "  ... URI: http://198.18.0.1:8080/tftp/snponly.efi" \
			lab_seen "$SERIAL" "URI: http://198\.18\.0\.1:8080/tftp/snponly\.efi"
		check "  ... File Size: N Bytes (from the HEAD's Content-Length)" \
			lab_seen "$SERIAL" "File Size: [0-9]+ Bytes"
	fi
	if [ "$SCENARIO" != uefi-pxe ] && [ "$FW" != uefi-http ]; then
		expect "the install boot used no TFTP (the NIC's iPXE ROM fetched the boot script over HTTP): TFTP events before 'done'" \
			"$(sed '/^done\t/q' "$W/events.txt" | grep -c '^tftp')" 0
	fi
	echo "    $(wc -l <"$W/events.txt") events, $(count_events log "") log lines" >&3
	if [ "$MODE" = proxy ]; then dhcpd=198.18.0.2; else dhcpd=198.18.0.1; fi
	check "the stem cell's own lease came from $dhcpd ($MODE mode)" \
		lab_seen "$SERIAL" "^stemcell: eth0 has .* from DHCP server $dhcpd"
	LOCAL=$(count_events boot "installed, boot from local disk")

	if [ "$FW" = uefi-http ]; then
		# The reboot above was a whole network boot of an installed machine (PXE fails at
		# once, HTTP boot, iPXE told to boot from the disk): power-ons 2 and 3 would prove
		# nothing more about HTTP boot, for about 150 s of the CI budget.
		power_off
		events_in_order "the reboot after the install was an HTTP boot too: done, the loader over HTTP, 'boot from local disk'" \
			done:"" file:"fetched loader snponly\.efi over HTTP" boot:"^boot script: installed, boot from local disk"
		expect "no TFTP at all: tftp events; HTTP loader fetches (the install's boot and the reboot)" \
			"$(count_events tftp "")/$(count_events file "fetched loader snponly\.efi over HTTP")" 0/2
		expect "no TFTP in the server's log (no 'listening for TFTP', no transfer)" \
			"$(grep -ciE 'listening for TFTP|TFTP transfer' "$D/server.log")" 0
		[ "$MODE" = proxy ] && expect "proxy mode: HTTP boot took its URL from the OFFER and never asked on port 4011 (PXE did)" \
			"$(count_events dhcp "on port 4011.*\[x86-64 UEFI HTTP boot\]")/$([ "$(count_events dhcp "on port 4011.*\[x86-64 UEFI\]$")" -gt 0 ] && echo asked)" 0/asked
		echo "== $SCENARIO: $PASSES passed, $FAILS failed, $((SECONDS - T0)) s" >&3
		[ "$FAILS" = 0 ]
		exit
	fi

	# ---- power-on 2: still the disk ----------------------------------------------------------
	echo "== power off; power-on 2" >&3
	power_off
	power_on 2
	serial "^stemcell-installed: host=$HOST role=$ROLE" 600 "power-on 2 boots from its disk"
	events
	# Each network boot option the firmware tries asks once: with the iPXE ROM, OVMF's own
	# PXE (on the ROM's network driver) asks again after iPXE hands back.
	check "power-on 2 was told to boot from its disk: 'boot from local disk' boot scripts, $LOCAL before, $(count_events boot "installed, boot from local disk") now" \
		test "$(count_events boot "installed, boot from local disk")" -gt "$LOCAL"
	expect "power-on 2 installed nothing: 'install script served'/'done' events" \
		"$(count_events install "install script served")/$(count_events "done" "")" 1/1
	check_state installed

	# ---- re-arm; power-on 3 reinstalls -----------------------------------------------------
	echo "== re-arm through the API; power-on 3" >&3
	power_off
	code=$(lab_api "$SRV" "/api/v1/machines/$MAC/reinstall" -o "$W/rearm.txt" -w '%{http_code}' -X POST \
		-H "Authorization: Bearer $(cat "$D/admin.token")")
	case "$code" in 2??) pass "re-armed (HTTP $code)" ;; *) fail "re-arm: HTTP $code" && show "$W/rearm.txt" ;; esac
	check_state pending 5
	power_on 3
	serial "^stemcell: install done" 900 "power-on 3 reinstalls"
	check_state installed
	events
	expect "a second install: 'install script served'/'done' events" \
		"$(count_events install "install script served")/$(count_events "done" "")" 2/2
	power_off
else
	# ---- failing: failed, reported, and no reboot loop ----------------------------------------
	echo "== power-on 1: $FW, role broken (its script exits 3)" >&3
	power_on 1
	serial "^stemcell: install failed: exit status 3" 900 "the install fails"
	serial "^stemcell: not rebooting" 60 "the stem cell stays"
	check_state failed
	events_in_order "the events: install script, its error line, failed with the reason" \
		install:"^install script served" \
		log:"^broken: no disk /dev/nonexistent" \
		failed:"exit status 3.*no disk /dev/nonexistent"
	grep -aE "^(failed|log)"$'\t' "$W/events.txt" | tail -n 2 | sed 's/^/    /' >&3
	b=$(banners)
	sleep "${FAIL_WATCH:-30}" # watching for something that must not happen: a fixed time
	events
	check "${FAIL_WATCH:-30} s later QEMU still runs the failed stem cell" kill -0 "$QEMU_PID"
	expect "no second boot: firmware banners (SeaBIOS, iPXE) on the console, before and after" \
		"$b/$(banners)" "$b/$b"
	expect "no second boot: stem-cell starts on the console" "$(lab_count "$SERIAL" "^stemcell: stem cell starting")" 1
	expect "no second install: 'install script served' events" "$(count_events install "install script served")" 1
	check_state failed 1
	lab_api "$SRV" "/boot/$MAC.ipxe" >"$W/next-boot.ipxe"
	check "its next netboot would wait for a re-arm" lab_seen "$W/next-boot.ipxe" "not reinstalling until it is re-armed"
	power_off
fi

# ---- the watcher -------------------------------------------------------------------------
if [ -n "$WATCH_PID" ]; then
	watcher_exited() { ! kill -0 "$WATCH_PID" 2>/dev/null; }
	if lab_wait "${WATCH_TIMEOUT:-120}" "" watcher_exited; then
		wait "$WATCH_PID"
		rc=$?
		if [ $rc = 0 ]; then pass "WATCH_CMD exited 0"; else
			fail "WATCH_CMD exited $rc"
			show "$W/watch.log"
		fi
	else
		fail "WATCH_CMD still runs after ${WATCH_TIMEOUT:-120} s"
		show "$W/watch.log"
		lab_stop "$WATCH_PID"
	fi
fi

echo "== $SCENARIO: $PASSES passed, $FAILS failed, $((SECONDS - T0)) s" >&3
[ "$FAILS" = 0 ]
