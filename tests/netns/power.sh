#!/bin/bash
# End to end through a BMC: a QEMU machine owned by OpenIPMI's ipmi_sim, whose
# chassis_control script starts QEMU on "power on" (from the network when the boot device
# is pxe, else from its disk; the boot device is then back to default: once), and kills it
# on "power off". stemcell installs it with `reinstall --power` from power-off, and once it
# runs its installed system, reinstalls it the same way — nobody touches QEMU. Everything
# runs in one network namespace made here (198.18.0.1/24 on br0 for stemcell, 198.18.1.2
# for the BMC), deleted at the end, also on failure.
#
# Usage: tests/netns/power.sh [STEMCELL]
#   STEMCELL_IMAGE  the stem cell (vmlinuz, initrd.img), built by the caller
#   PXE_PREFLIGHT=1 only say whether it can run here (exit 0, or 77 and why)
#   KEEP=1          keep the work folder
# Exit: 0 all checks passed, 1 a check failed, 77 cannot run here (not root, no QEMU...).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=lab/lib.sh
. "$ROOT/lab/lib.sh"
STEMCELL=${1:-$ROOT/target/debug/stemcell}

skip() {
	echo "!!!!!!!! SKIP (power): $* !!!!!!!!"
	exit 77
}
[ "$(id -u)" = 0 ] || skip "not root (network namespaces and tap devices need root)"
command -v qemu-system-x86_64 >/dev/null || skip "no qemu-system-x86_64 (Debian's qemu-system-x86)"
[ -r /usr/lib/ipxe/undionly.kpxe ] || skip "no /usr/lib/ipxe/undionly.kpxe (Debian's ipxe)"
[ -r /usr/lib/ipxe/qemu/efi-e1000.rom ] || skip "no /usr/lib/ipxe/qemu/efi-e1000.rom (Debian's ipxe-qemu)"
command -v ipmi_sim >/dev/null || skip "no ipmi_sim (Debian's openipmi)"
command -v ipmitool >/dev/null || skip "no ipmitool (Debian's ipmitool)"
for t in curl ip; do command -v $t >/dev/null || skip "no $t"; done
[ -c /dev/net/tun ] || skip "no /dev/net/tun"
[ "${PXE_PREFLIGHT:-}" = 1 ] && exit 0
[ -x "$STEMCELL" ] || {
	echo "FAIL: no stemcell binary at $STEMCELL" >&2
	exit 1
}
IMAGE=${STEMCELL_IMAGE:-}
{ [ -n "$IMAGE" ] && [ -r "$IMAGE/vmlinuz" ] && [ -r "$IMAGE/initrd.img" ]; } || {
	echo "FAIL: STEMCELL_IMAGE must name a folder with vmlinuz and initrd.img" >&2
	exit 1
}
IMAGE=$(cd "$IMAGE" && pwd) # stemcell.yaml's paths are relative to its own folder

T0=$SECONDS
P=scpw-$$
SRV=$P-srv
W=$(mktemp -d "/tmp/$P.XXXXXX")
chmod 755 "$W"
D=$W/srv
MAC=52:54:00:5e:00:21
HOST=power-e2e
BMC=198.18.1.2
FAILS=0 PASSES=0

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
	PASSES=$((PASSES + 1))
	echo "$(t) ok    $*" >&3
}
fail() {
	FAILS=$((FAILS + 1))
	echo "$(t) FAIL  $*" >&3
}
show() {
	local f
	for f in "$@"; do
		echo "---- $f (last 40 lines)" >&3
		tail -n 40 "$f" 2>/dev/null | tr -d '\r' | sed 's/^/    /' >&3
	done
}
die() {
	fail "$1"
	shift
	show "$@" "$W/chassis.log" "$D/server.log"
	echo "== power: $PASSES passed, $FAILS failed, $((SECONDS - T0)) s" >&3
	exit 1
}
check() { if "${@:2}"; then pass "$1"; else fail "$1"; fi; }

# stemcell as the operator runs it, inside the namespace.
sc() { ip netns exec "$SRV" "$STEMCELL" "$@" --config "$D/stemcell.yaml"; }
bmc_power() { IPMI_PASSWORD=$(cat "$W/bmc.pass") ip netns exec "$SRV" ipmitool -I lanplus -C 3 -H $BMC -U admin -E chassis power status 2>&1; }
state_is() { [ "$(lab_state "$SRV" "$MAC")" = "$1" ]; }
check_installed() {
	if lab_wait 30 "" state_is installed; then pass "state installed"; else
		fail "state is $(lab_state "$SRV" "$MAC"), not installed"
	fi
}
# serial N REGEX SECONDS WHAT: REGEX on power-on N's console within SECONDS.
serial() {
	local log=$W/power-on-$1.log
	if lab_wait "$3" "" lab_seen "$log" "$2"; then
		pass "$4: $(grep -aE -- "$2" "$log" | tail -n 1 | tr -d '\r' | cut -c1-100)"
	else
		die "$4: no /$2/ on power-on $1's console within $3 s" "$log"
	fi
}

# ---- the network: br0 (stemcell) and tap0 (the machine's cable); the BMC on lo ----------
lab_netns "$SRV" || die "cannot create namespace $SRV"
{ lab_bridge "$SRV" && lab_tap "$SRV" tap0; } || die "cannot set up br0 and tap0 in $SRV"
ip -n "$SRV" addr add $BMC/24 dev lo || die "cannot add the BMC's address"

# ---- the BMC: ipmi_sim and a chassis that owns QEMU ---------------------------------------
mkdir -p "$W/bmc/state"
echo "bmc-pw-$$-$RANDOM" >"$W/bmc.pass"
truncate -s 1G "$W/disk.img"
cat >"$W/bmc/chassis.sh" <<EOF
#!/bin/bash
# ipmi_sim's chassis_control: "\$0 MC get PARAM..." or "\$0 MC set PARAM VALUE...".
W=$W
EOF
cat >>"$W/bmc/chassis.sh" <<'EOF'
echo "$*" >>"$W/chassis.log"
running() { [ -s "$W/qemu.pid" ] && kill -0 "$(cat "$W/qemu.pid")" 2>/dev/null; }
shift
op=$1
shift
case $op in
get)
	for p in "$@"; do
		case $p in
		power) if running; then echo power:1; else echo power:0; fi ;;
		boot) echo "boot:$(cat "$W/boot" 2>/dev/null || echo default)" ;;
		esac
	done
	;;
set)
	while [ $# -ge 2 ]; do
		case $1 in
		boot) echo "$2" >"$W/boot" ;;
		power)
			if [ "$2" = 1 ] && ! running; then
				n=$(($(cat "$W/power-ons" 2>/dev/null || echo 0) + 1))
				echo $n >"$W/power-ons"
				# The boot device chooses what QEMU boots, once.
				order=c
				[ "$(cat "$W/boot" 2>/dev/null)" = pxe ] && order=n
				echo default >"$W/boot"
				echo "power-on $n: -boot $order" >>"$W/chassis.log"
				qemu-system-x86_64 -accel tcg -m 512 -nographic -monitor none \
					-serial "file:$W/power-on-$n.log" \
					-netdev tap,id=n0,ifname=tap0,script=no,downscript=no \
					-device "e1000,netdev=n0,mac=MACHINE_MAC" \
					-drive "file=$W/disk.img,format=raw,if=ide" -boot "$order" \
					</dev/null >"$W/qemu-$n.txt" 2>&1 &
				echo $! >"$W/qemu.pid"
			elif [ "$2" = 0 ] && running; then
				# A power cut, as a BMC's power off is.
				kill -KILL "$(cat "$W/qemu.pid")"
				for _ in 1 2 3 4 5 6 7 8 9 10; do running || break; sleep 0.1; done
				: >"$W/qemu.pid"
			fi
			;;
		esac
		shift 2
	done
	;;
esac
EOF
sed -i "s/MACHINE_MAC/$MAC/" "$W/bmc/chassis.sh"
chmod +x "$W/bmc/chassis.sh"
cat >"$W/bmc/lan.conf" <<EOF
name "stemcell-e2e"
set_working_mc 0x20
  startlan 1
    addr $BMC 623
    priv_limit admin
    allowed_auths_callback none md2 md5 straight
    allowed_auths_user none md2 md5 straight
    allowed_auths_operator none md2 md5 straight
    allowed_auths_admin none md2 md5 straight
    guid a123456789abcdefa123456789abcdef
  endlan
  chassis_control "$W/bmc/chassis.sh 0x20"
  user 2 true "admin" "$(cat "$W/bmc.pass")" admin 10 none md2 md5 straight
EOF
printf '%s\n' "mc_setbmc 0x20" "mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr" \
	"sel_enable 0x20 1000 0x0a" "mc_enable 0x20" >"$W/bmc/bmc.emu"
lab_bg "$SRV" "$W/ipmi_sim.log" ipmi_sim -n -c "$W/bmc/lan.conf" -f "$W/bmc/bmc.emu" -s "$W/bmc/state"
bmc_up() { bmc_power | grep -q "Chassis Power is"; }
lab_wait 10 "$LAB_PID" bmc_up || die "ipmi_sim did not answer" "$W/ipmi_sim.log"
pass "the BMC (ipmi_sim at $BMC) answers ipmitool: $(bmc_power)"

# ---- stemcell -----------------------------------------------------------------------------
lab_config "$D" authoritative "$IMAGE"
printf 'power:\n  timeout: 60s\n  refresh: 5s\n' >>"$D/stemcell.yaml"
cat >"$D/inventory.yaml" <<EOF
roles:
  base:
    template: base.sh.j2
    vars: { puppet_server: puppet.lab.example }
machines:
  "$MAC":
    hostname: $HOST
    role: base
    vars: { disk: /dev/sda }
    power: { driver: ipmi, address: $BMC, username: admin, password_file: $W/bmc.pass, firmware: bios }
EOF
lab_check "$STEMCELL" "$D" || die "stemcell check failed" "$D/check.txt"
lab_serve "$SRV" "$STEMCELL" "$D" || die "stemcell did not come up" "$D/server.log"
pass "stemcell serves (authoritative DHCP, TFTP and HTTP on br0)"
out=$(sc power "$MAC" status 2>&1)
check "stemcell power status says off, as ipmitool does: '$out'" test "$out" = "$MAC: off"

# ---- 1: from power-off, reinstall --power installs it ------------------------------------
echo "== reinstall --power of a machine that is off" >&3
out=$(sc reinstall "$MAC" --power 2>&1) || die "reinstall --power failed: $out"
pass "$out"
check "the chassis was told: boot from pxe, then power on (it was off)" \
	grep -qzE "set boot pxe.*set power 1" "$W/chassis.log"
check "QEMU was started from the network" grep -q "power-on 1: -boot n" "$W/chassis.log"
serial 1 "^stemcell: install done" 900 "power-on 1 installs"
check_installed
serial 1 "^stemcell-installed: host=$HOST role=base" 600 "it rebooted by itself into its installed system"
out=$(sc power "$MAC" status 2>&1)
check "stemcell and ipmitool agree it is on: '$out', '$(bmc_power)'" \
	test "$out/$(bmc_power)" = "$MAC: on/Chassis Power is on"

# ---- 2: running its OS, reinstall --power reinstalls it ------------------------------------
echo "== reinstall --power of the installed machine, running its OS" >&3
out=$(sc reinstall "$MAC" --power 2>&1) || die "reinstall --power failed: $out"
pass "$out"
lab_wait 30 "" grep -q "power-on 2: -boot n" "$W/chassis.log" || die "the cycle did not start QEMU again from the network"
pass "the cycle stopped QEMU and started it again from the network (power-on 2)"
serial 2 "^stemcell: install done" 900 "power-on 2 reinstalls"
check_installed
serial 2 "^stemcell-installed: host=$HOST role=base" 600 "it came back into its installed system"
lab_events "$SRV" "$MAC" >"$W/events.txt"
check "two installs: 'done' events" test "$(grep -c "^done" "$W/events.txt")" = 2
check "the power actions are events that say who asked" \
	grep -q "^power	power cycle by the admin API: power cycled" "$W/events.txt"

# ---- power off ---------------------------------------------------------------------------
out=$(sc power "$MAC" off 2>&1)
check "power off: '$out'" test "$out" = "$MAC: powered off; power is off"
check "QEMU is gone" test ! -s "$W/qemu.pid"
check "ipmitool agrees: $(bmc_power)" test "$(bmc_power)" = "Chassis Power is off"

echo "== power: $PASSES passed, $FAILS failed, $((SECONDS - T0)) s" >&3
[ "$FAILS" = 0 ]
