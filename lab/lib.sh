# shellcheck shell=bash
# lab/lib.sh: the one shell library for namespaces, bridges, veths, taps, stemcell's config,
# starting stemcell and waiting for it, and cleaning up. Used by lab/demo.sh,
# tests/netns/dhcp.sh, tests/netns/pxe.sh, tests/netns/debian.sh and bench/run.sh. Source
# it from bash; it defines functions and runs nothing.
#
# Everything that speaks DHCP or TFTP (stemcell, dnsmasq, clients, QEMU machines) runs inside
# network namespaces made here, on 198.18.0.0/15 (or a namespace's own loopback), and
# lab_cleanup removes them: nothing here touches the host's own network.
#
#   lab_netns NS                  a namespace with lo up (deleted by lab_cleanup)
#   lab_bridge NS [ADDR/LEN]      br0 in NS, up, at ADDR (default 198.18.0.1/24)
#   lab_tap NS TAP                a tap device (a machine's cable) on NS's br0
#   lab_veth NS PEER_NS DEV [ADDR/LEN]
#                                 a cable from NS's br0 (DEVp there) to PEER_NS (DEV, up, with
#                                 ADDR if given)
#   lab_link NS DEV ADDR/LEN PEER_NS PEER_DEV ADDR/LEN
#                                 a veth pair straight between two namespaces, both ends up;
#                                 an empty ADDR leaves that end without an address
#   lab_bg NS LOG CMD...          CMD in NS, in the background, output to LOG; sets LAB_PID
#   lab_stop PID                  SIGTERM, then SIGKILL after 5 s
#   lab_cleanup                   stops every process in the namespaces, deletes them
#   lab_build_image BIN OUT CACHE the stem cell (vmlinuz, initrd.img) into OUT
#                                 (LAB_IMAGE_ARCH=arm64: the arm64 one)
#   lab_config DIR MODE [IMAGE]   a stemcell folder: stemcell.yaml, admin.token, kickstarts/
#   lab_check BIN DIR             `stemcell check` of DIR (output in DIR/check.txt)
#   lab_serve NS BIN DIR [LOG]    starts stemcell in NS and returns once it is ready; sets
#                                 LAB_PID and LAB_ADDR
#   lab_qemu NS FIRMWARE TAP MAC DISK SERIAL [QEMU ARGS...]   powers a machine on; sets LAB_PID
#   lab_wait SECONDS PID CMD...   polls CMD every second until it succeeds
#   lab_seen FILE REGEX           a line of FILE matches REGEX (serial logs: raw bytes, CRs)
#   lab_count FILE REGEX          how many lines of FILE match
#   lab_api NS PATH [CURL ARGS]   curl stemcell's $LAB_URL/PATH from inside NS
#   lab_state NS MAC              the machine's state (installed, failed, ...)
#   lab_events NS MAC             its events, one "kind<TAB>message" line each
#
# Addresses: stemcell 198.18.0.1 on br0, HTTP on :8080, authoritative pool .100-.199;
# a site DHCP server (proxy mode) at 198.18.0.2 hands out .200-.250.

LAB_URL=http://198.18.0.1:8080
LAB_NSS=()
# stemcell's readiness contract: once every socket (HTTP, TFTP, DHCP) is bound it logs this,
# once, at info level, with addr=<http listen addr> and url=<http url>. Every harness waits
# for this line and nothing else (never a sleep, never another log line). STEMCELL_LOG must
# let info from stemcell::server through (its default does).
LAB_READY='stemcell ready'

# Firmware banners on a machine's serial console: SeaBIOS starting, OVMF starting its own
# PXE, iPXE starting (the NIC's ROM, or snponly.efi). Each boot prints at least one.
# shellcheck disable=SC2034 # used by the scripts that source this file
LAB_BANNER='SeaBIOS \(version|>>Start PXE over IPv4|Open Source Network Boot Firmware'

lab_netns() {
	ip netns add "$1" || return 1
	LAB_NSS+=("$1")
	ip -n "$1" link set lo up
}

lab_bridge() {
	ip -n "$1" link add br0 type bridge &&
		ip -n "$1" addr add "${2:-198.18.0.1/24}" dev br0 &&
		ip -n "$1" link set br0 up
}

lab_tap() {
	ip -n "$1" tuntap add dev "$2" mode tap &&
		ip -n "$1" link set "$2" master br0 &&
		ip -n "$1" link set "$2" up
}

lab_veth() {
	ip -n "$1" link add "$3p" type veth peer name "$3" netns "$2" &&
		ip -n "$1" link set "$3p" master br0 up &&
		{ [ -z "${4:-}" ] || ip -n "$2" addr add "$4" dev "$3"; } &&
		ip -n "$2" link set "$3" up
}

lab_link() {
	ip -n "$1" link add "$2" type veth peer name "$5" netns "$4" &&
		{ [ -z "$3" ] || ip -n "$1" addr add "$3" dev "$2"; } &&
		{ [ -z "$6" ] || ip -n "$4" addr add "$6" dev "$5"; } &&
		ip -n "$1" link set "$2" up && ip -n "$4" link set "$5" up
}

# `ip netns exec` execs the command, so $! is the process itself: it can be stopped by id.
lab_bg() {
	local ns=$1 log=$2
	shift 2
	ip netns exec "$ns" "$@" </dev/null >"$log" 2>&1 &
	LAB_PID=$!
}

lab_stop() {
	kill -TERM "$1" 2>/dev/null || return 0
	for _ in $(seq 50); do
		kill -0 "$1" 2>/dev/null || break
		sleep 0.1
	done
	kill -KILL "$1" 2>/dev/null
	wait "$1" 2>/dev/null
	return 0
}

# Stops only what runs inside the namespaces made here (all of it ours), then deletes them.
lab_cleanup() {
	local ns pid
	for ns in "${LAB_NSS[@]}"; do
		for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -TERM "$pid" 2>/dev/null; done
	done
	for _ in $(seq 30); do
		pid=
		for ns in "${LAB_NSS[@]}"; do pid+=$(ip netns pids "$ns" 2>/dev/null); done
		[ -z "$pid" ] && break
		sleep 0.1
	done
	for ns in "${LAB_NSS[@]}"; do
		for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
		ip netns del "$ns" 2>/dev/null
	done
	LAB_NSS=()
}

lab_build_image() {
	"$1" image build --arch "${LAB_IMAGE_ARCH:-amd64}" --out "$2" --cache "$3"
}

# lab_config DIR MODE [IMAGE]: a stemcell folder. MODE: authoritative, proxy or off. IMAGE:
# a folder with vmlinuz and initrd.img; without it, empty stand-ins in DIR/stemcell (for runs
# that boot nothing). Writes DIR/stemcell.yaml, DIR/admin.token and DIR/kickstarts/base.sh.j2
# with the snippets it includes (DIR/kickstarts/snippets/);
# the caller writes DIR/inventory.yaml and any other kickstarts. The lab's defaults, each
# overridable for one call (`LAB_IFACE=lo lab_config ...`):
#   LAB_IFACE=br0  LAB_SERVER_IP=198.18.0.1  LAB_LISTEN=198.18.0.1:8080
#   LAB_HTTP_URL   http.url (unset: stemcell's default, http://SERVER_IP:PORT)
#   LAB_SUBNETS    dhcp.subnets, YAML list items indented by 4 (default in authoritative mode:
#                  198.18.0.0/24, pool .100-.199, router .1, lease 1h)
#   LAB_DHCP_MORE  more YAML under dhcp: (indented by 2), e.g. boot_files
#   LAB_TFTP_ROOT  tftp.root (default /usr/lib/ipxe, Debian's ipxe; set empty: no TFTP)
#   LAB_TFTP_MORE  more YAML under tftp: (indented by 2), e.g. max_transfers
#   LAB_CMDLINE    stemcell.cmdline (default console=ttyS0,115200)
lab_config() {
	local dir=$1 mode=$2 image=${3:-stemcell} subnets=${LAB_SUBNETS:-}
	mkdir -p "$dir/kickstarts" "$dir/state"
	cp "$(dirname "${BASH_SOURCE[0]}")/../kickstarts/base.sh.j2" "$dir/kickstarts/" || return 1
	# the snippets base.sh.j2 includes (snippets/disk.sh.j2: the target disk by its rule)
	cp -r "$(dirname "${BASH_SOURCE[0]}")/../kickstarts/snippets" "$dir/kickstarts/" || return 1
	echo "lab-admin-token-$$-$RANDOM$RANDOM" >"$dir/admin.token"
	if [ -z "${3:-}" ]; then
		mkdir -p "$dir/stemcell"
		: >"$dir/stemcell/vmlinuz"
		: >"$dir/stemcell/initrd.img"
	fi
	if [ "$mode" = authoritative ] && [ -z "$subnets" ]; then
		subnets='    - subnet: 198.18.0.0/24
      pool: [198.18.0.100, 198.18.0.199]
      router: 198.18.0.1
      lease_time: 1h'
	fi
	{
		echo "interface: ${LAB_IFACE:-br0}"
		echo "server_ip: ${LAB_SERVER_IP:-198.18.0.1}"
		echo "dhcp:"
		echo "  mode: $mode"
		if [ "$mode" = authoritative ]; then
			echo "  subnets:"
			printf '%s\n' "$subnets"
		fi
		[ -z "${LAB_DHCP_MORE:-}" ] || printf '%s\n' "$LAB_DHCP_MORE"
		if [ -n "${LAB_TFTP_ROOT-/usr/lib/ipxe}" ]; then
			echo "tftp:"
			echo "  root: ${LAB_TFTP_ROOT-/usr/lib/ipxe}"
			[ -z "${LAB_TFTP_MORE:-}" ] || printf '%s\n' "$LAB_TFTP_MORE"
		fi
		echo "http:"
		echo "  listen: ${LAB_LISTEN:-198.18.0.1:8080}"
		[ -z "${LAB_HTTP_URL:-}" ] || echo "  url: $LAB_HTTP_URL"
		cat <<EOT
stemcell:
  kernel: $image/vmlinuz
  initrd: $image/initrd.img
  cmdline: ${LAB_CMDLINE:-console=ttyS0,115200}
inventory: inventory.yaml
kickstarts: kickstarts
state_dir: state
admin_token_file: admin.token
EOT
	} >"$dir/stemcell.yaml"
}

# How many "stemcell ready" lines LOG holds (0 without LOG).
_lab_ready_lines() {
	local n
	n=$(grep -acF -- "$LAB_READY" "$1" 2>/dev/null)
	echo "${n:-0}"
}

lab_check() {
	"$1" check --config "$2/stemcell.yaml" >"$2/check.txt" 2>&1
}

# lab_serve NS BIN DIR [LOG]: `stemcell serve` for DIR in NS, its output appended to LOG
# (default DIR/server.log; appended so that a restart keeps the history in one file). Ready
# when LOG holds one more "stemcell ready" line than before the start; 1 if the server exits
# first or after LAB_SERVE_TIMEOUT seconds (default 30). Sets LAB_PID, and LAB_ADDR to the
# line's addr= (the HTTP address actually bound).
lab_serve() {
	local ns=$1 bin=$2 dir=$3 log=${4:-$3/server.log} before end
	before=$(_lab_ready_lines "$log")
	# `ip netns exec` execs the command, so $! is stemcell itself.
	ip netns exec "$ns" "$bin" serve --config "$dir/stemcell.yaml" </dev/null >>"$log" 2>&1 &
	LAB_PID=$!
	LAB_ADDR=
	end=$((SECONDS + ${LAB_SERVE_TIMEOUT:-30}))
	until [ "$(_lab_ready_lines "$log")" -gt "$before" ]; do
		kill -0 "$LAB_PID" 2>/dev/null && [ $SECONDS -lt $end ] || return 1
		sleep 0.05
	done
	# shellcheck disable=SC2034 # read by the scripts that source this file
	LAB_ADDR=$(grep -aF -- "$LAB_READY" "$log" | tail -n 1 | sed -n 's/.* addr=\([^ ]*\).*/\1/p')
}

# lab_qemu NS FIRMWARE TAP MAC DISK SERIAL [QEMU ARGS...]: power a machine on, network first.
#   bios       SeaBIOS; e1000 with its iPXE ROM (Debian's ipxe-qemu); IDE disk (/dev/sda)
#   uefi-ipxe  OVMF; virtio-net with its iPXE EFI ROM; virtio disk (/dev/vda)
#   uefi-pxe   OVMF's own PXE (virtio-net, romfile=: no iPXE ROM); virtio disk (/dev/vda)
#   uefi-secureboot  as uefi-pxe, with Secure Boot enforced: OVMF_CODE_4M.ms.fd and a copy
#              of OVMF_VARS_4M.ms.fd (Microsoft's keys enrolled) on a q35 with SMM, whose
#              flash only SMM code may write
#   uefi-pxe6  as uefi-pxe, but OVMF's IPv4 is off and its IPv6 on: PXE and HTTP boot over
#              IPv6 only (the uefi-ipv6 scenario)
#   aarch64    qemu-system-aarch64's virt machine (cortex-a57, TCG) with AAVMF (Debian's
#              qemu-efi-aarch64) as pflash: its read-only code and a writable copy of its
#              variable store next to DISK; its own PXE on virtio-net (romfile=: QEMU's
#              default ROM is x86 iPXE); virtio disk (/dev/vda); console ttyAMA0
# LAB_DISK_BUS=ide|virtio overrides the disk's bus (ide: /dev/sda, virtio: /dev/vda).
# UEFI uses a writable copy of OVMF.fd next to DISK. IPv6 is off in OVMF: after iPXE hands
# control back (an installed machine), the firmware would spend a minute on PXE over IPv6
# before it reaches the disk. No -no-reboot: the machine reboots by itself, as real ones do.
# The serial console goes to SERIAL. Sets LAB_PID.
# shellcheck disable=SC2054 # QEMU's options are comma-separated lists: the commas belong in one word
lab_qemu() {
	local ns=$1 fw=$2 tap=$3 mac=$4 disk=$5 serial=$6 args
	shift 6
	args=(-accel tcg -m 512 -nographic -monitor none -serial "file:$serial"
		-netdev "tap,id=n0,ifname=$tap,script=no,downscript=no")
	case "$fw" in
	bios)
		args+=(-boot n -device "e1000,netdev=n0,mac=$mac" -drive "file=$disk,format=raw,if=${LAB_DISK_BUS:-ide}")
		;;
	uefi-ipxe | uefi-pxe | uefi-pxe6 | uefi-secureboot)
		if [ "$fw" = uefi-secureboot ]; then
			[ -e "$disk.VARS.fd" ] || cp /usr/share/OVMF/OVMF_VARS_4M.ms.fd "$disk.VARS.fd"
			args+=(-machine q35,smm=on -global driver=cfi.pflash01,property=secure,value=on
				-drive if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.ms.fd
				-drive "if=pflash,format=raw,unit=1,file=$disk.VARS.fd")
		else
			[ -e "$disk.OVMF.fd" ] || cp /usr/share/ovmf/OVMF.fd "$disk.OVMF.fd"
			args+=(-bios "$disk.OVMF.fd")
		fi
		if [ "$fw" = uefi-pxe6 ]; then
			args+=(-fw_cfg name=opt/org.tianocore/IPv4Support,string=no)
		else
			args+=(-fw_cfg name=opt/org.tianocore/IPv6Support,string=no)
		fi
		args+=(-drive "if=none,id=d0,file=$disk,format=raw")
		if [ "${LAB_DISK_BUS:-virtio}" = ide ]; then
			args+=(-device ide-hd,drive=d0,bootindex=2)
		else
			args+=(-device "virtio-blk-pci,drive=d0,bootindex=2${LAB_DISK_SERIAL:+,serial=$LAB_DISK_SERIAL}")
		fi
		if [ "$fw" != uefi-ipxe ]; then
			args+=(-device "virtio-net-pci,netdev=n0,mac=$mac,romfile=,bootindex=${LAB_NIC_BOOTINDEX:-1}")
		else
			args+=(-device "virtio-net-pci,netdev=n0,mac=$mac,bootindex=${LAB_NIC_BOOTINDEX:-1}")
		fi
		;;
	aarch64)
		[ -e "$disk.AAVMF_VARS.fd" ] || cp /usr/share/AAVMF/AAVMF_VARS.fd "$disk.AAVMF_VARS.fd"
		args=(-M virt -cpu cortex-a57 "${args[@]}"
			-drive if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/AAVMF/AAVMF_CODE.fd
			-drive "if=pflash,format=raw,unit=1,file=$disk.AAVMF_VARS.fd"
			-drive "if=none,id=d0,file=$disk,format=raw" -device virtio-blk-pci,drive=d0,bootindex=2
			-device "virtio-net-pci,netdev=n0,mac=$mac,romfile=,bootindex=${LAB_NIC_BOOTINDEX:-1}")
		lab_bg "$ns" "$serial.qemu" qemu-system-aarch64 "${args[@]}" "$@"
		return
		;;
	*)
		echo "lab_qemu: unknown firmware $fw" >&2
		return 1
		;;
	esac
	lab_bg "$ns" "$serial.qemu" qemu-system-x86_64 "${args[@]}" "$@"
}

# lab_wait SECONDS PID CMD...: 0 once CMD succeeds; 1 after SECONDS, or when PID (if not
# empty) has exited and CMD still fails.
lab_wait() {
	local end=$((SECONDS + $1)) pid=$2
	shift 2
	while :; do
		"$@" && return 0
		if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
			"$@"
			return
		fi
		[ $SECONDS -lt $end ] || return 1
		sleep 1
	done
}

lab_seen() { grep -aqE -- "$2" "$1" 2>/dev/null; }
lab_count() { grep -acE -- "$2" "$1" 2>/dev/null; }

lab_api() {
	local ns=$1 path=$2
	shift 2
	ip netns exec "$ns" curl -sf "$@" "$LAB_URL$path"
}

lab_state() {
	lab_api "$1" "/api/v1/machines/$2" | grep -o '"state":"[a-z-]*"' | head -n 1 | cut -d'"' -f4
}

# The API's JSON, read without a JSON tool: the events array holds
# {"at":N,"kind":"...","message":"..."} objects (serde keeps the field order).
lab_events() {
	lab_api "$1" "/api/v1/machines/$2" | sed 's/.*"events":\[//' |
		grep -oE '"kind":"[a-z_-]*","message":"([^"\\]|\\.)*"' |
		sed -E 's/^"kind":"([a-z_-]*)","message":"(.*)"$/\1\t\2/; s/\\"/"/g; s/\\\\/\\/g'
}
