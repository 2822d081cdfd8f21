#!/bin/bash
# The stem cell end to end in QEMU, before stemcell's own DHCP and TFTP take part: the
# kernel and initrd are handed to QEMU directly (-kernel/-initrd/-append, with the command
# line from the machine's real iPXE boot script), dnsmasq plays the site's DHCP server for
# the stem cell's udhcpc, and stemcell serves HTTP (dhcp: off, no tftp).
#
#   tests/stemcell_qemu.sh            # as root, from anywhere
#
# 1. builds stemcell and the stem-cell image twice, and checks the two builds are
#    byte-for-byte identical;
# 2. makes a network namespace with a bridge (198.18.0.1/24) and a tap device, and starts
#    stemcell and dnsmasq in it;
# 3. BIOS: boots the stem cell on an empty disk; waits for "stemcell: install done" on the
#    serial console and state `installed` in the API; boots the same disk from its MBR
#    (extlinux) and waits for "stemcell-installed: host=... role=...";
# 4. UEFI (OVMF): re-arms the machine through the API, installs onto a fresh disk, then
#    boots that disk through the firmware (systemd-boot) and waits for the marker;
# 5. a failing install template: "stemcell: install failed: exit status 3: ..." on the
#    console, state failed with that reason, and the machine stays put (no reboot);
# 6. an unlisted machine (inventory policy discover): the stem cell reports its hardware
#    and powers off; state discovered, with the facts.
# Each step prints PASS:/FAIL: and its time. Everything it creates (namespace, processes,
# work folder) is removed on exit, also on failure or Ctrl-C; KEEP=1 keeps the work
# folder (serial logs, server log, disks). Exit 77 (skipped) when it cannot run here.
#
# Environment: CARGO_TARGET_DIR (where cargo builds; default target/), STEMCELL_CACHE
# (downloaded packages; default $CARGO_TARGET_DIR/stemcell-cache), SOURCE_DATE_EPOCH
# (default 0), STEMCELL_IMAGE_BUILD (the image build command; default
# "<stemcell binary> image build").
set -u
export PATH="$HOME/.cargo/bin:$PATH:/usr/sbin:/sbin"
# curl must talk to 198.18.0.1 directly, never through a proxy.
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

skip() { echo "SKIP: $*"; exit 77; }
[ "$(id -u)" = 0 ] || skip "not root (network namespaces and tap devices need root)"
ip netns list >/dev/null 2>&1 || skip "ip netns is unavailable"
for t in qemu-system-x86_64 dnsmasq curl cargo; do
	command -v $t >/dev/null || skip "$t is not installed (scripts/setup-debian.sh installs it)"
done
[ -r /usr/share/ovmf/OVMF.fd ] || skip "no /usr/share/ovmf/OVMF.fd (Debian's ovmf package)"
[ -c /dev/net/tun ] || skip "no /dev/net/tun"

T0=$SECONDS
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
export CARGO_TARGET_DIR=$TARGET
CACHE=${STEMCELL_CACHE:-$TARGET/stemcell-cache}
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-0}
W=$(mktemp -d /tmp/sci-$$-qemu.XXXXXX)
chmod 755 "$W"
NS=sci-$$-lab
MAC=52:54:00:5c:00:01
BROKEN_MAC=52:54:00:5c:00:02
STRANGER_MAC=52:54:00:5c:00:03
HOST=lab01
ROLE=base
URL=http://198.18.0.1:8080
ADMIN=sci-admin-token-$$-0123456789
FAILS=0

cleanup() {
	trap '' INT TERM HUP PIPE
	local pid
	for pid in $(ip netns pids "$NS" 2>/dev/null); do kill -TERM "$pid" 2>/dev/null; done
	sleep 0.5
	for pid in $(ip netns pids "$NS" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
	ip netns del "$NS" 2>/dev/null
	if [ "${KEEP:-}" = 1 ]; then echo "work folder kept: $W"; else rm -rf "$W"; fi
}
trap cleanup EXIT
trap 'echo "interrupted"; exit 130' INT TERM HUP

t() { printf "%4ds" $((SECONDS - T0)); }
pass() { echo "PASS: $(t) $*"; }
fail() {
	echo "FAIL: $(t) $*"
	FAILS=$((FAILS + 1))
}
# die MESSAGE [FILE...]: a failure the rest cannot go on from; shows the files' tails.
die() {
	fail "$1"
	shift
	local f
	for f in "$@"; do
		[ -e "$f" ] || continue
		echo "---- last lines of $f"
		tail -n 40 "$f" | sed 's/^/    /'
	done
	exit 1
}
# Foreground commands in the namespace. Background ones call `ip netns exec` directly, so
# that $! is the process itself (ip execs it) and can be killed by its id.
IN() { ip netns exec "$NS" "$@"; }

# ---------------------------------------------------------------------------------------
echo "== building stemcell and the stem cell (target $TARGET, cache $CACHE)"
cargo build --bin stemcell 2>&1 | tail -n 1
BIN=$TARGET/debug/stemcell
[ -x "$BIN" ] || die "no $BIN after cargo build"
read -r -a BUILD <<<"${STEMCELL_IMAGE_BUILD:-$BIN image build}"
IMG=$W/image
s=$SECONDS
"${BUILD[@]}" --out "$IMG" --cache "$CACHE" >"$W/image-build.txt" 2>&1 ||
	die "image build failed" "$W/image-build.txt"
cat "$W/image-build.txt" | sed 's/^/    /'
pass "image built in $((SECONDS - s))s"
s=$SECONDS
"${BUILD[@]}" --out "$W/image2" --cache "$CACHE" >"$W/image-build2.txt" 2>&1 ||
	die "second image build failed" "$W/image-build2.txt"
if cmp -s "$IMG/vmlinuz" "$W/image2/vmlinuz" && cmp -s "$IMG/initrd.img" "$W/image2/initrd.img"; then
	pass "a second build is byte-for-byte identical ($((SECONDS - s))s; initrd sha256 $(sha256sum <"$IMG/initrd.img" | cut -c1-16)...)"
else
	fail "two builds from the same inputs differ"
fi
INITRD_MB=$(($(stat -c %s "$IMG/initrd.img") / 1000000))
[ "$INITRD_MB" -lt 20 ] && pass "initrd is ${INITRD_MB} MB (< 20 MB)" || fail "initrd is ${INITRD_MB} MB (target < 20 MB)"

# ---------------------------------------------------------------------------------------
echo "== namespace $NS: br0 198.18.0.1/24 with tap0; stemcell and dnsmasq on br0"
ip netns add "$NS" || die "cannot create namespace $NS"
ip -n "$NS" link set lo up
ip -n "$NS" link add br0 type bridge
ip -n "$NS" addr add 198.18.0.1/24 dev br0
ip -n "$NS" tuntap add dev tap0 mode tap
ip -n "$NS" link set tap0 master br0
ip -n "$NS" link set tap0 up
ip -n "$NS" link set br0 up

mkdir -p "$W/assets" "$W/state" "$W/kickstarts"
cp "$ROOT/kickstarts/base.sh.j2" "$W/kickstarts/"
cat >"$W/kickstarts/broken.sh.j2" <<'EOF'
#!/bin/sh
echo "broken: {{ hostname }} looks for its disk"
echo "broken: no disk /dev/nonexistent" >&2
exit 3
EOF
echo "$ADMIN" >"$W/admin.token"
cat >"$W/stemcell.yaml" <<EOF
server_ip: 198.18.0.1
dhcp: { mode: off }
http:
  listen: 198.18.0.1:8080
  url: $URL
stemcell:
  kernel: $IMG/vmlinuz
  initrd: $IMG/initrd.img
  cmdline: console=ttyS0,115200
assets: assets
inventory: inventory.yaml
kickstarts: kickstarts
state_dir: state
admin_token_file: admin.token
EOF
cat >"$W/inventory.yaml" <<EOF
defaults:
  unknown: discover
roles:
  $ROLE:
    template: base.sh.j2
    vars: { puppet_server: puppet.lab.example }
  broken:
    template: broken.sh.j2
machines:
  "$MAC":
    hostname: $HOST
    role: $ROLE
    vars: { disk: /dev/vda }
  "$BROKEN_MAC":
    hostname: lab02
    role: broken
EOF
"$BIN" check --config "$W/stemcell.yaml" >"$W/check.txt" 2>&1 || die "stemcell check failed" "$W/check.txt"
ip netns exec "$NS" "$BIN" serve --config "$W/stemcell.yaml" >"$W/server.log" 2>&1 &
for _ in $(seq 100); do
	IN curl -sf -o /dev/null "$URL/healthz" && break
	sleep 0.1
done
IN curl -sf -o /dev/null "$URL/healthz" || die "stemcell does not answer on $URL" "$W/server.log"
ip netns exec "$NS" dnsmasq -d --conf-file=/dev/null --port=0 --interface=br0 --bind-interfaces --user=root \
	--dhcp-range=198.18.0.100,198.18.0.150,1h --dhcp-leasefile="$W/dnsmasq.leases" \
	--log-dhcp >"$W/dnsmasq.log" 2>&1 &
pass "stemcell and dnsmasq are up"

# ---------------------------------------------------------------------------------------
# boot_cmdline NAME [MAC]: the kernel command line the machine's iPXE boot script carries
# (with its install token).
boot_cmdline() {
	local script
	script=$(IN curl -sf "$URL/boot/${2:-$MAC}.ipxe") || return 1
	echo "$script" >"$W/boot-$1.ipxe"
	echo "$script" | sed -n 's/^kernel [^ ]* \(.*\) || goto failed$/\1/p' | sed 's/initrd=initrd.img *//'
}

# state [MAC]
state() {
	IN curl -sf "$URL/api/v1/machines/${1:-$MAC}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])'
}

# wait_for LOG PATTERN SECONDS PID: until PATTERN shows in the serial log; gives up early
# when the stem cell reports a failure (the pattern may be one) or QEMU exits.
wait_for() {
	local log=$1 pat=$2 end=$((SECONDS + $3)) pid=$4
	while [ $SECONDS -lt $end ]; do
		grep -qa -- "$pat" "$log" 2>/dev/null && return 0
		if [ -z "${EXPECT_FAILURE:-}" ] && grep -qa "^stemcell: .* failed: " "$log" 2>/dev/null; then
			echo "    $(grep -a '^stemcell: .* failed: ' "$log" | head -n 1)"
			return 1
		fi
		if ! kill -0 "$pid" 2>/dev/null; then
			grep -qa -- "$pat" "$log" 2>/dev/null && return 0
			echo "    QEMU exited"
			return 1
		fi
		sleep 1
	done
	echo "    timed out after $3 s"
	return 1
}

# wait_exit PID SECONDS
wait_exit() {
	local end=$((SECONDS + $2))
	while kill -0 "$1" 2>/dev/null; do
		[ $SECONDS -lt $end ] || return 1
		sleep 1
	done
}

QEMU=(qemu-system-x86_64 -accel tcg -m 512 -nographic -no-reboot -monitor none)
NIC=(-netdev tap,id=n0,ifname=tap0,script=no,downscript=no -device virtio-net-pci,netdev=n0,mac=$MAC,romfile=)

# install FIRMWARE DISK [QEMU ARGS...]: the stem cell, from power-on to `installed`.
install() {
	local fw=$1 disk=$2 log=$W/$1-install.log cmdline pid s=$SECONDS
	shift 2
	cmdline=$(boot_cmdline "$fw") && [ -n "$cmdline" ] || die "no kernel line in the boot script" "$W/boot-$fw.ipxe"
	case "$cmdline" in *stemcell.token=*) ;; *) die "the boot script has no install token" "$W/boot-$fw.ipxe" ;; esac
	truncate -s 1G "$disk"
	ip netns exec "$NS" "${QEMU[@]}" "$@" -kernel "$IMG/vmlinuz" -initrd "$IMG/initrd.img" -append "$cmdline" \
		-drive "file=$disk,if=virtio,format=raw" "${NIC[@]}" -serial "file:$log" </dev/null >"$W/$fw-qemu.txt" 2>&1 &
	pid=$!
	wait_for "$log" "^stemcell: install done" 600 "$pid" || die "$fw: no 'stemcell: install done'" "$log" "$W/server.log"
	pass "$fw: stemcell: install done ($((SECONDS - s))s from power-on)"
	wait_exit "$pid" 60 && pass "$fw: the stem cell rebooted by itself" || fail "$fw: QEMU still runs after the install (no reboot)"
	kill "$pid" 2>/dev/null
	local st
	st=$(state)
	[ "$st" = installed ] && pass "$fw: state installed" || fail "$fw: state is '$st', not installed"
	IN curl -sf "$URL/boot/$MAC.ipxe" | grep -q "booting from its local disk" &&
		pass "$fw: its next boot script says: boot from the local disk" ||
		fail "$fw: its next boot script is not the local-disk one"
	IN curl -sf "$URL/api/v1/machines/$MAC" >"$W/$fw-machine.json"
	python3 - "$W/$fw-machine.json" <<'EOF' && pass "$fw: events show the install script, its log lines and done" || fail "$fw: events are missing steps (see $W/$fw-machine.json)"
import json, sys
m = json.load(open(sys.argv[1]))
ev = [(e["kind"], e["message"]) for e in m["events"]]
want = [
    ("install", "install script served"),
    ("log", "install: partitioning"),
    ("log", "installed: boots from"),
    ("done", "install done"),
]
missing = [w for w in want if not any(k == w[0] and w[1] in msg for k, msg in ev)]
if missing:
    print("    missing:", missing)
    sys.exit(1)
print("    %d events, %d log lines" % (len(ev), sum(1 for k, _ in ev if k == "log")))
EOF
}

# boot_disk FIRMWARE DISK [QEMU ARGS...]: power on from the disk; wait for the marker.
boot_disk() {
	local fw=$1 disk=$2 log=$W/$1-disk.log pid s=$SECONDS
	shift 2
	ip netns exec "$NS" "${QEMU[@]}" "$@" "${NIC[@]}" -serial "file:$log" </dev/null >"$W/$fw-disk-qemu.txt" 2>&1 &
	pid=$!
	wait_for "$log" "^stemcell-installed: host=$HOST role=$ROLE" 300 "$pid" ||
		die "$fw: the installed disk did not print its marker" "$log" "$W/$fw-disk-qemu.txt"
	pass "$fw: from disk: $(grep -a '^stemcell-installed:' "$log" | head -n 1 | tr -d '\r') ($((SECONDS - s))s)"
	kill "$pid" 2>/dev/null
	wait_exit "$pid" 10 || kill -KILL "$pid" 2>/dev/null
}

echo "== BIOS (SeaBIOS): install, then boot the disk"
install bios "$W/bios.img"
boot_disk bios "$W/bios.img" -boot c -drive "file=$W/bios.img,if=virtio,format=raw"

echo "== UEFI (OVMF): re-arm, install on a fresh disk, then boot it"
cp /usr/share/ovmf/OVMF.fd "$W/OVMF.fd"
IN curl -sf -X POST -H "Authorization: Bearer $ADMIN" "$URL/api/v1/machines/$MAC/reinstall" >/dev/null &&
	pass "re-armed through the API (state $(state))" || die "re-arm failed" "$W/server.log"
install uefi "$W/uefi.img" -bios "$W/OVMF.fd"
boot_disk uefi "$W/uefi.img" -bios "$W/OVMF.fd" \
	-drive "if=none,id=d0,file=$W/uefi.img,format=raw" -device virtio-blk-pci,drive=d0,bootindex=0

echo "== a failing install template: reported, and no reboot"
s=$SECONDS
cmdline=$(boot_cmdline broken "$BROKEN_MAC")
log=$W/broken.log
ip netns exec "$NS" "${QEMU[@]}" -kernel "$IMG/vmlinuz" -initrd "$IMG/initrd.img" -append "$cmdline" \
	-netdev tap,id=n0,ifname=tap0,script=no,downscript=no -device "virtio-net-pci,netdev=n0,mac=$BROKEN_MAC,romfile=" \
	-serial "file:$log" </dev/null >"$W/broken-qemu.txt" 2>&1 &
pid=$!
if EXPECT_FAILURE=1 wait_for "$log" "^stemcell: not rebooting" 300 "$pid"; then
	pass "broken: $(grep -a '^stemcell: install failed:' "$log" | head -n 1) ($((SECONDS - s))s)"
	grep -qa "^stemcell: reported the failure" "$log" && pass "broken: the stem cell reported the failure" ||
		fail "broken: the failure was not reported"
else
	fail "broken: no failure and 'not rebooting' on the console"
fi
st=$(state "$BROKEN_MAC")
[ "$st" = failed ] && pass "broken: state failed" || fail "broken: state is '$st', not failed"
IN curl -sf "$URL/api/v1/machines/$BROKEN_MAC" >"$W/broken-machine.json"
python3 - "$W/broken-machine.json" <<'EOF' && pass "broken: events hold the script's output and the reason" || fail "broken: events are incomplete (see $W/broken-machine.json)"
import json, sys
ev = [(e["kind"], e["message"]) for e in json.load(open(sys.argv[1]))["events"]]
ok = any(k == "log" and "no disk /dev/nonexistent" in m for k, m in ev) and any(
    k == "failed" and "exit status 3" in m and "no disk /dev/nonexistent" in m for k, m in ev)
for k, m in ev[-3:]:
    print("    %s: %s" % (k, m))
sys.exit(0 if ok else 1)
EOF
sleep 15
kill -0 "$pid" 2>/dev/null && pass "broken: still on the console 15 s later (no reboot loop)" || fail "broken: QEMU exited (rebooted?)"
kill "$pid" 2>/dev/null
wait_exit "$pid" 10 || kill -KILL "$pid" 2>/dev/null
IN curl -sf "$URL/boot/$BROKEN_MAC.ipxe" | grep -q "failed" && pass "broken: its next boot script waits for a re-arm" ||
	fail "broken: its next boot script is not the failed one"

echo "== an unlisted machine: discovery"
s=$SECONDS
cmdline=$(boot_cmdline stranger "$STRANGER_MAC")
case "$cmdline" in
*stemcell.mode=discover*) pass "stranger: its boot script boots the stem cell to discover it" ;;
*) fail "stranger: no discover boot script" ;;
esac
log=$W/stranger.log
ip netns exec "$NS" "${QEMU[@]}" -kernel "$IMG/vmlinuz" -initrd "$IMG/initrd.img" -append "$cmdline" -smp 2 \
	-drive "file=$W/bios.img,if=virtio,format=raw,readonly=on" \
	-netdev tap,id=n0,ifname=tap0,script=no,downscript=no -device "virtio-net-pci,netdev=n0,mac=$STRANGER_MAC,romfile=" \
	-serial "file:$log" </dev/null >"$W/stranger-qemu.txt" 2>&1 &
pid=$!
if wait_for "$log" "^stemcell: discover done" 300 "$pid"; then
	pass "stranger: $(grep -a '^stemcell: discover done' "$log" | head -n 1) ($((SECONDS - s))s)"
	wait_exit "$pid" 60 && pass "stranger: powered off by itself" || fail "stranger: still running after discovery"
else
	fail "stranger: no 'stemcell: discover done'"
fi
kill "$pid" 2>/dev/null
IN curl -sf "$URL/api/v1/machines/$STRANGER_MAC" >"$W/stranger-machine.json"
python3 - "$W/stranger-machine.json" "$STRANGER_MAC" <<'EOF' && pass "stranger: state discovered, with its hardware facts" || fail "stranger: not discovered with facts (see $W/stranger-machine.json)"
import json, sys
m = json.load(open(sys.argv[1]))
hw = m.get("facts", {}).get("hardware", {})
keys = ("cpus", "memory_kb", "firmware", "nic.eth0.mac", "disk.vda.bytes", "dmi.sys_vendor")
print("    state %s; %s" % (m["state"], " ".join("%s=%s" % (k, hw.get(k)) for k in keys)))
ok = (m["state"] == "discovered" and hw.get("cpus") == "2" and hw.get("nic.eth0.mac") == sys.argv[2]
      and hw.get("disk.vda.bytes") == str(1 << 30))
sys.exit(0 if ok else 1)
EOF

echo "== done in $((SECONDS - T0))s, $FAILS failed"
[ "$FAILS" = 0 ]
