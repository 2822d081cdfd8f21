#!/bin/bash
# The real `stemcell serve` against real DHCP peers — dhclient, udhcpc, isc-dhcp-relay and
# dnsmasq as a site's DHCP server — in network namespaces made for this run and removed
# afterwards (also on failure and on INT/TERM/HUP). Addresses from 198.18.0.0/15 only;
# no DHCP server, client or relay ever runs outside these namespaces.
#
#   tests/netns/dhcp.sh SCENARIO STEMCELL PROBE [PROBE_ARGS...]
#
# SCENARIO, each with its own namespaces (names with this shell's PID, so scenarios run side
# by side), config folder, state and server:
#   auth-lease        authoritative: a plain client's address and options, the lease journal,
#                     SIGKILL and restart (INIT-REBOOT, a new DISCOVER), RELEASE
#   auth-renew        authoritative: udhcpc renews, unicast both ways
#   auth-reservation  authoritative: a reservation from the inventory, and its API record
#   auth-pxe          authoritative: boot files by PXE class (BIOS, UEFI, iPXE, ARM64, unknown
#                     arch), discovered machines in the API
#   relay             authoritative behind isc-dhcp-relay (another subnet)
#   proxy             proxy mode beside dnsmasq, the site's DHCP server (198.18.0.2)
#   tiny              a two-address pool, exhausted
#   auth-dhcpv6       authoritative with dhcp.ipv6: dhclient -6 binds the MAC's EUI-64 address
#                     in fd00:5ce1::/64, gets the same one after a server restart, releases it
#   all               every scenario above, one after the other
#
# PROBE (with PROBE_ARGS) is a command that takes `IFACE MAC discover ARCH [ipxe] [WAIT_MS]`
# or `IFACE MAC request4011 ARCH SERVER` and prints each reply as `REPLY <src> <json>`;
# tests/dhcp_clients.rs passes examples/dhcp_probe.rs. One PASS:/FAIL: line per check; exit
# 1 if any failed, 77 (with the reason on stdout) if this machine cannot run it: not root, no
# `ip netns`, or a client tool missing. A failed check shows the file it looked at; KEEP=1
# keeps the whole work folder (logs, leases, hook environments).
#
# Topology (lab/lib.sh; veth pairs created inside the namespaces, the host's untouched):
#   $CLI  c0 ── c0p ┐
#   $SITE s0 ── s0p ├ br0 198.18.0.1/24 in $SRV: stemcell serves DHCP on br0, HTTP on :8080
#   $RLY  r0 ── r0p ┘  r0 198.18.0.3 in $RLY; dhcrelay relays for 198.18.1.0/24
#   $CLI  c1 ────── r1 198.18.1.1/24 in $RLY
set -u
export PATH="$PATH:/usr/sbin:/sbin"
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=../../lab/lib.sh
. "$ROOT/lab/lib.sh"
SCENARIOS="auth-lease auth-renew auth-reservation auth-pxe relay proxy tiny auth-dhcpv6"
SCENARIO=${1:-}
STEMCELL=${2:-}
shift 2 || true
PROBE=("$@")

skip() { echo "$*"; exit 77; }
if [[ " $SCENARIOS all " != *" $SCENARIO "* ]] || ! [ -x "$STEMCELL" ] || [ ${#PROBE[@]} = 0 ]; then
    echo "usage: $0 ${SCENARIOS// /|}|all STEMCELL PROBE [PROBE_ARGS...]" >&2
    exit 2
fi
[ "$(id -u)" = 0 ] || skip "not root (network namespaces need root)"
ip netns list >/dev/null 2>&1 || skip "ip netns is unavailable"
for t in dhclient udhcpc dhcrelay dnsmasq curl; do
    command -v $t >/dev/null || skip "$t is not installed (scripts/setup-debian.sh installs it)"
done

T0=$(date +%s%N)
P=scdh-$$
SRV=$P-srv CLI=$P-cli SITE=$P-site RLY=$P-rly
W=$(mktemp -d "/tmp/$P.XXXXXX")
PORT=8080
URL=http://198.18.0.1:$PORT
FAILS=0 PASSES=0
SERVER_PID='' LOG=''

cleanup() {
    trap '' PIPE INT TERM HUP # finish the cleanup whatever happens to our stdout
    lab_cleanup
    if [ "${KEEP:-}" = 1 ]; then echo "work folder kept: $W" >&3; else rm -rf "$W"; fi
}
# Our own output goes to fd 3, our stdout: a trap may run while a function's output is
# redirected to a log file.
exec 3>&1
trap cleanup EXIT
trap 'echo "FAIL: interrupted" >&3; FAILS=$((FAILS + 1)); exit 130' INT TERM HUP

elapsed() { local ms=$((($(date +%s%N) - T0) / 1000000)); printf "%d.%d" $((ms / 1000)) $((ms % 1000 / 100)); }
pass() { echo "PASS: $*" >&3; PASSES=$((PASSES + 1)); }
fail() { echo "FAIL: $*" >&3; FAILS=$((FAILS + 1)); }
show() { [ -f "$1" ] && tail -n "${2:-40}" "$1" | sed 's/^/    | /' >&3; }
# check DESCRIPTION FILE REGEX [REGEX...]: some line of FILE matches every REGEX
check() {
    local desc=$1 file=$2; shift 2
    if matches "$file" "$@"; then pass "$desc"; else
        fail "$desc (no line of $file matches /$(IFS=/; echo "$*")/)"; show "$file"
    fi
}
matches() {
    local file=$1 lines re; shift
    lines=$(cat "$file" 2>/dev/null) || return 1
    for re in "$@"; do lines=$(printf '%s\n' "$lines" | grep -E -- "$re") || return 1; done
    [ -n "$lines" ]
}
# eventually FILE REGEX...: wait up to 5 s for a line of FILE to match (then `check` it)
eventually() { for _ in $(seq 100); do matches "$@" && return 0; sleep 0.05; done; return 1; }
# check_not DESCRIPTION FILE REGEX [REGEX...]: no line of FILE matches every REGEX
check_not() {
    local desc=$1 file=$2; shift 2
    if matches "$file" "$@"; then fail "$desc (a line of $file matches /$(IFS=/; echo "$*")/)"; show "$file"; else pass "$desc"; fi
}
inns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }
# value FILE KEY: KEY=value from a hook's environment dump
value() { sed -n "s/^$2=//p" "$1" 2>/dev/null | head -n 1; }

# ---- namespaces -------------------------------------------------------------------------
if ! lab_netns "$SRV" 2>"$W/netns.err"; then
    ip netns list 2>/dev/null | grep -q "^$SRV\b" && { fail "namespace $SRV exists already"; exit 1; }
    skip "ip netns is unavailable: cannot create a namespace ($(cat "$W/netns.err"))"
fi
for ns in $CLI $SITE $RLY; do lab_netns "$ns" || { fail "cannot set up namespace $ns"; exit 1; }; done
{
    lab_bridge "$SRV" 198.18.0.1/24 &&
        lab_veth "$SRV" "$CLI" c0 &&
        lab_veth "$SRV" "$SITE" s0 198.18.0.2/24 &&
        lab_veth "$SRV" "$RLY" r0 198.18.0.3/24 &&
        lab_link "$RLY" r1 198.18.1.1/24 "$CLI" c1 "" &&
        inns "$RLY" sysctl -qw net.ipv4.ip_forward=1 &&
        ip -n "$SRV" route add 198.18.1.0/24 via 198.18.0.3
} || { fail "namespace topology"; exit 1; }

# ---- config -------------------------------------------------------------------------------
# write_config NAME MODE [POOL_END]: a config folder $W/NAME for one scenario (lab_config
# with this script's subnets, boot files and inventory; no TFTP).
write_config() {
    local d=$W/$1 mode=$2 pool_end=${3:-198.18.0.149}
    LAB_LISTEN=0.0.0.0:$PORT LAB_TFTP_ROOT='' \
        LAB_DHCP_MORE='  boot_files: { bios: undionly.kpxe, uefi_x64: snponly.efi, arm64: ipxe-arm64.efi }' \
        LAB_SUBNETS="    - subnet: 198.18.0.0/24
      pool: [198.18.0.100, $pool_end]
      router: 198.18.0.1
      dns: [198.18.0.1]
      domain: lab.example
      lease_time: 10m
    - subnet: 198.18.1.0/24          # behind the relay
      pool: [198.18.1.100, 198.18.1.149]
      router: 198.18.1.1
      dns: [198.18.0.1]
      lease_time: 10m" \
        lab_config "$d" "$mode"
    cat >"$d/inventory.yaml" <<'EOT'
defaults:
  unknown: discover
roles:
  web:
    template: web.sh.j2
machines:
  "52:54:00:5c:00:21":
    hostname: web01
    role: web
    ip: 198.18.0.21                 # a reservation: in the subnet, outside the pool
EOT
    printf '#!/bin/sh\necho "installing {{ hostname }} ({{ role }}) at {{ ip }}"\ncurl -fsS -X POST "{{ done_url }}"\n' \
        >"$d/kickstarts/web.sh.j2"
}

# start_server NAME: `stemcell serve` in $SRV for $W/NAME (log $W/NAME/stemcell.log, kept
# across restarts), once it is ready (lab_serve: its "stemcell ready" line).
start_server() {
    LOG=$W/$1/stemcell.log
    if ! STEMCELL_LOG=info,stemcell::dhcp=debug lab_serve "$SRV" "$STEMCELL" "$W/$1" "$LOG"; then
        fail "stemcell ($1) did not start"; show "$LOG"; exit 1
    fi
    SERVER_PID=$LAB_PID
}
stop_server() { # [SIGNAL]
    kill "-${1:-TERM}" "$SERVER_PID" 2>/dev/null
    wait "$SERVER_PID" 2>/dev/null
    SERVER_PID=
}

# api MAC OUT: GET /api/v1/machines/MAC from inside $SRV (status code on the last line)
api() { inns $SRV curl -sS -m 5 -w '\n%{http_code}\n' "$URL/api/v1/machines/$1" >"$2" 2>&1; }
# check_api DESCRIPTION MAC REGEX...: the machine's JSON matches (events are recorded just
# after the reply is sent, so allow them a moment to appear)
check_api() {
    local desc=$1 mac=$2 out="$W/api.$2.json"; shift 2
    for _ in $(seq 50); do
        api "$mac" "$out"
        matches "$out" "$@" && break
        sleep 0.1
    done
    check "$desc" "$out" "$@"
}

# Hooks: record the environment the client hands its script; configure the address.
cat >"$W/dhclient-hook.sh" <<EOF
#!/bin/sh
env | grep -E '^(reason|interface|new_|old_|requested_)' | sort >"$W/.dhclient.\$\$"
mv "$W/.dhclient.\$\$" "$W/dhclient.\$interface.\$reason" # whole, for those who wait for it
case \$reason in
    BOUND|RENEW|REBIND|REBOOT) ip addr flush dev \$interface; ip addr add \$new_ip_address/\$new_subnet_mask dev \$interface ;;
    RELEASE|STOP|EXPIRE|FAIL) ip addr flush dev \$interface ;;
esac
exit 0
EOF
cat >"$W/udhcpc-hook.sh" <<EOF
#!/bin/sh
env | grep -E '^(interface|ip|subnet|mask|router|dns|domain|lease|boot_file|siaddr|sname|serverid|hostname|opt)' | sort >"$W/.udhcpc.\$\$"
mv "$W/.udhcpc.\$\$" "$W/udhcpc.\$interface.\$1" # whole, for those who wait for it
case \$1 in bound|renew) ip addr flush dev \$interface; ip addr add \$ip/\$mask dev \$interface ;; deconfig) ip addr flush dev \$interface ;; esac
exit 0
EOF
chmod +x "$W/dhclient-hook.sh" "$W/udhcpc-hook.sh"

# dhclient configs: plain, and PXE firmware's options (option 93 must be declared first).
DHCLIENT_COMMON='timeout 20;
initial-interval 1;
backoff-cutoff 2;'
cat >"$W/plain.conf" <<EOF
$DHCLIENT_COMMON
request subnet-mask, broadcast-address, routers, domain-name-servers, domain-name, host-name,
        dhcp-lease-time, dhcp-server-identifier;
EOF
# pxe_conf NAME ARCH [ipxe]
pxe_conf() {
    local arch=$2
    {
        echo "$DHCLIENT_COMMON"
        echo 'option pxe-system-type code 93 = unsigned integer 16;'
        printf 'send vendor-class-identifier "PXEClient:Arch:%05d:UNDI:003016";\n' "$arch"
        echo "send pxe-system-type $arch;"
        [ "${3:-}" = ipxe ] && echo 'send user-class "iPXE";'
        echo 'request subnet-mask, routers, domain-name-servers, domain-name, host-name, dhcp-lease-time,'
        echo '        dhcp-server-identifier, vendor-class-identifier, tftp-server-name, bootfile-name;'
    } >"$W/$1.conf"
}
pxe_conf bios 0; pxe_conf uefi 7; pxe_conf ipxe 7 ipxe; pxe_conf arm64 11; pxe_conf arch99 99

# setmac IFACE MAC
setmac() { ip -n $CLI link set "$1" address "$2"; }
# dhclient_run NAME IFACE CONF: one exchange, as the client with NAME's lease file; the
# client keeps running if it bound (stop it with dhclient_stop). Files: NAME.log, NAME.env.REASON.
dhclient_run() {
    local name=$1 dev=$2 conf=$3 f rc
    rm -f "$W"/dhclient."$dev".*
    inns $CLI timeout 30 dhclient -4 -v -1 -cf "$W/$conf" -sf "$W/dhclient-hook.sh" \
        -lf "$W/$name.leases" -pf "$W/$name.pid" "$dev" >"$W/$name.log" 2>&1
    rc=$?
    for f in "$W"/dhclient."$dev".*; do [ -f "$f" ] && mv "$f" "$W/$name.env.${f##*.}"; done
    [ $rc = 0 ] || fail "dhclient $name exited with $rc"
    return $rc
}
# dhclient_stop NAME IFACE [-x|-r]: stop NAME's client, keeping (-x) or releasing (-r) the lease
dhclient_stop() {
    local f
    rm -f "$W"/dhclient."$2".*
    inns $CLI timeout 20 dhclient -4 "${3:--x}" -cf "$W/plain.conf" -sf "$W/dhclient-hook.sh" \
        -lf "$W/$1.leases" -pf "$W/$1.pid" "$2" >>"$W/$1.log" 2>&1
    for f in "$W"/dhclient."$2".*; do [ -f "$f" ] && mv "$f" "$W/$1.env.${f##*.}"; done
    ip -n $CLI addr flush dev "$2"
}
# udhcpc_run NAME IFACE TRIES ARGS...: one exchange; NAME.env holds what it bound
udhcpc_run() {
    local name=$1 dev=$2 tries=$3 rc; shift 3
    rm -f "$W"/udhcpc."$dev".*
    inns $CLI timeout 30 udhcpc -i "$dev" -n -q -f -t "$tries" -T 1 -s "$W/udhcpc-hook.sh" "$@" >"$W/$name.log" 2>&1
    rc=$?
    [ -f "$W/udhcpc.$dev.bound" ] && mv "$W/udhcpc.$dev.bound" "$W/$name.env"
    ip -n $CLI addr flush dev "$dev"
    return $rc
}
probe() { inns $CLI timeout 20 "${PROBE[@]}" "$@"; }
in_pool='198\.18\.0\.(1[0-4][0-9])'

# authoritative: a plain client, the journal, SIGKILL and restart, release
scenario_auth_lease() {
    write_config auth-lease authoritative
    start_server auth-lease
    A=$W/auth-lease

    # A plain client: the first address of the pool, and the subnet's options.
    setmac c0 52:54:00:5c:00:11
    dhclient_run k c0 plain.conf
    check "authoritative: dhclient gets an address from the pool" "$W/k.env.BOUND" "^new_ip_address=198\.18\.0\.100$"
    check "authoritative: the subnet's router" "$W/k.env.BOUND" "^new_routers=198\.18\.0\.1$"
    check "authoritative: DNS server" "$W/k.env.BOUND" "^new_domain_name_servers=198\.18\.0\.1$"
    check "authoritative: domain" "$W/k.env.BOUND" "^new_domain_name=lab\.example$"
    check "authoritative: lease time 10m" "$W/k.env.BOUND" "^new_dhcp_lease_time=600$"
    check_not "authoritative: a plain client gets no boot file" "$W/k.env.BOUND" "^new_filename="
    K_IP=$(value "$W/k.env.BOUND" new_ip_address)
    check "authoritative: the lease is in the journal" "$A/state/leases.journal" "\"ip\":\"${K_IP//./\\.}\"" '"mac":"52:54:00:5c:00:11"' '"state":"bound"'
    dhclient_stop k c0 -x # the client stops and keeps its lease

    # SIGKILL and restart: the lease survives. A stateless server would give the next new
    # client the same first address of the pool.
    stop_server KILL
    start_server auth-lease
    check "restart after SIGKILL: stemcell replayed the lease journal" "$LOG" "INFO.*lease journal replayed" "addresses=[1-9]"
    setmac c0 52:54:00:5c:00:12
    dhclient_run n c0 plain.conf
    N_IP=$(value "$W/n.env.BOUND" new_ip_address)
    if [[ -n "$K_IP" && "$N_IP" =~ ^$in_pool$ && "$N_IP" != "$K_IP" ]]; then
        pass "after SIGKILL and restart: a new client gets another address ($N_IP, not $K_IP)"
    else fail "after SIGKILL and restart: a new client got '$N_IP' (the first client holds '$K_IP')"; show "$W/n.log"; fi
    dhclient_stop n c0 -x
    setmac c0 52:54:00:5c:00:11
    dhclient_run k c0 plain.conf # its lease file says K_IP: INIT-REBOOT, a REQUEST for it
    check "after SIGKILL and restart: the client's INIT-REBOOT REQUEST for its address is ACKed" "$W/k.env.REBOOT" "^new_ip_address=${K_IP//./\\.}$"
    dhclient_stop k c0 -x
    mv "$W/k.leases" "$W/k.leases.before"
    dhclient_run k c0 plain.conf # it forgot: DISCOVER
    check "after SIGKILL and restart: a new DISCOVER gets the client's own address" "$W/k.env.BOUND" "^new_ip_address=${K_IP//./\\.}$"

    # Release.
    dhclient_stop k c0 -r
    check "release: dhclient released its lease" "$W/k.env.RELEASE" "^old_ip_address=${K_IP//./\\.}$"
    eventually "$A/state/leases.journal" "\"ip\":\"${K_IP//./\\.}\"" '"mac":"52:54:00:5c:00:11"' '"state":"released"'
    check "release: stemcell recorded it in the journal" "$A/state/leases.journal" "\"ip\":\"${K_IP//./\\.}\"" '"mac":"52:54:00:5c:00:11"' '"state":"released"'
    for _ in $(seq 50); do
        inns $SRV curl -sS -m 5 "$URL/metrics" >"$W/metrics.auth-lease" 2>&1
        matches "$W/metrics.auth-lease" '^stemcell_dhcp_packets_total\{.*DHCPRELEASE.*\} [1-9]' && break
        sleep 0.1
    done
    check "release: counted as a DHCPRELEASE" "$W/metrics.auth-lease" '^stemcell_dhcp_packets_total\{.*DHCPRELEASE.*\} [1-9]'
    stop_server TERM
}

# authoritative: renewal
scenario_auth_renew() {
    write_config auth-renew authoritative
    start_server auth-renew

    # Renewal: udhcpc renews on SIGUSR1, unicast from its address, and is answered unicast.
    setmac c0 52:54:00:5c:00:13
    rm -f "$W"/udhcpc.c0.*
    ip netns exec $CLI udhcpc -i c0 -f -t 5 -T 1 -s "$W/udhcpc-hook.sh" >"$W/renew.log" 2>&1 &
    UPID=$!
    for _ in $(seq 400); do [ -f "$W/udhcpc.c0.bound" ] && break; sleep 0.05; done
    R_IP=$(value "$W/udhcpc.c0.bound" ip)
    check "renew: udhcpc bound an address from the pool" "$W/udhcpc.c0.bound" "^ip=$in_pool$"
    kill -USR1 $UPID 2>/dev/null
    for _ in $(seq 400); do [ -f "$W/udhcpc.c0.renew" ] && break; sleep 0.05; done
    check "renew: the lease is renewed, same address" "$W/udhcpc.c0.renew" "^ip=${R_IP:-none}$"
    check "renew: the renewal's ACK went unicast to the client" "$LOG" "DEBUG.* ack " "mac=52:54:00:5c:00:13" "to=${R_IP:-none}:68"
    kill -TERM $UPID 2>/dev/null; wait $UPID 2>/dev/null
    ip -n $CLI addr flush dev c0
    stop_server TERM
}

# authoritative: a reservation
scenario_auth_reservation() {
    write_config auth-reservation authoritative
    start_server auth-reservation

    # A reservation from the inventory (outside the pool).
    setmac c0 52:54:00:5c:00:21
    dhclient_run resv c0 plain.conf
    check "reservation: the machine gets its reserved address" "$W/resv.env.BOUND" "^new_ip_address=198\.18\.0\.21$"
    check "reservation: and its host name" "$W/resv.env.BOUND" "^new_host_name=web01$"
    dhclient_stop resv c0 -x
    check_api "API: the reserved machine's DHCP steps are events of kind dhcp" 52:54:00:5c:00:21 \
        '"kind":"dhcp","message":"DHCPREQUEST → DHCPACK 198\.18\.0\.21'
    check_api "API: the reserved machine's ip" 52:54:00:5c:00:21 '"ip":"198\.18\.0\.21"' '"state":"pending"'
    stop_server TERM
}

# authoritative: PXE classes
scenario_auth_pxe() {
    write_config auth-pxe authoritative
    start_server auth-pxe

    # PXE classes: dhclient sends the firmware's options 60/93 (and 77 for iPXE).
    pxe_case() { # NAME MAC CONF WANT
        local name=$1 mac=$2 conf=$3 want=$4
        setmac c0 "$mac"
        dhclient_run "$name" c0 "$conf"
        check "authoritative, dhclient as $name: an address from the pool" "$W/$name.env.BOUND" "^new_ip_address=$in_pool$"
        check "authoritative, dhclient as $name: boot file ${want//\\/}" "$W/$name.env.BOUND" "^new_filename=$want$"
        dhclient_stop "$name" c0 -x
    }
    pxe_case bios 52:54:00:5c:00:31 bios.conf 'undionly\.kpxe'
    check "authoritative, BIOS: TFTP next server (siaddr)" "$W/bios.env.BOUND" "^new_next_server=198\.18\.0\.1$"
    pxe_case uefi-x64 52:54:00:5c:00:32 uefi.conf 'snponly\.efi'
    pxe_case ipxe 52:54:00:5c:00:33 ipxe.conf "http://198\.18\.0\.1:$PORT/boot/52:54:00:5c:00:33\.ipxe"
    pxe_case arm64 52:54:00:5c:00:34 arm64.conf 'ipxe-arm64\.efi'
    # Arch 99 is no known architecture and the vendor class says 00099 too: classify.rs's
    # documented fallback is BIOS, with a warning.
    pxe_case arch99 52:54:00:5c:00:35 arch99.conf 'undionly\.kpxe'
    check "authoritative, arch 99: the fallback is logged" "$LOG" "WARN.*client architecture not recognised" "mac=52:54:00:5c:00:35"
    # Arch 99 from firmware whose vendor class says x86-64 UEFI: the vendor class wins.
    setmac c0 52:54:00:5c:00:36
    udhcpc_run u-arch99 c0 3 -V "PXEClient:Arch:00007:UNDI:003016" -x 0x5d:0063
    check "authoritative, udhcpc arch 99 with vendor class Arch:00007: snponly.efi" "$W/u-arch99.env" "^boot_file=snponly\.efi$"
    # iPXE as iPXE sends it (RFC 3004 length-prefixed user class).
    setmac c0 52:54:00:5c:00:37
    udhcpc_run u-ipxe c0 3 -V "PXEClient:Arch:00000:UNDI:002001" -x 0x5d:0000 -x 0x4d:0469505845
    check "authoritative, udhcpc iPXE (RFC 3004 user class): its boot script URL" "$W/u-ipxe.env" "^boot_file=http://198\.18\.0\.1:$PORT/boot/52:54:00:5c:00:37\.ipxe$"

    check_api "API: an unknown PXE machine is recorded as discovered" 52:54:00:5c:00:32 '"state":"discovered"'
    check_api "API: with its arch and vendor class" 52:54:00:5c:00:32 '"arch":"x86-64 UEFI"' '"vendor_class":"PXEClient:Arch:00007:UNDI:003016"'
    check_api "API: and its DHCP steps as events of kind dhcp" 52:54:00:5c:00:32 \
        '"kind":"dhcp","message":"DHCPDISCOVER → DHCPOFFER 198\.18\.0\.1[0-4][0-9], boot file snponly\.efi'
    check_api "API: the arch 99 machine's fallback class" 52:54:00:5c:00:35 '"arch":"x86 BIOS"' '"vendor_class":"PXEClient:Arch:00099:UNDI:003016"'
    stop_server TERM
}

# authoritative, relayed
scenario_relay() {
    write_config relay authoritative
    start_server relay

    # A relayed client: dhcrelay in $RLY, the client on its other side.
    ip netns exec $RLY dhcrelay -4 -d -id r1 -iu r0 198.18.0.1 >"$W/dhcrelay.log" 2>&1 &
    RELAY_PID=$!
    for _ in $(seq 400); do grep -q "^Sending on *Socket/fallback" "$W/dhcrelay.log" && break; sleep 0.05; done
    ip -n $CLI link set c1 address 52:54:00:5c:00:41
    dhclient_run relay c1 plain.conf
    check "relay: the client gets an address from the relay's subnet" "$W/relay.env.BOUND" "^new_ip_address=198\.18\.1\.1[0-4][0-9]$"
    check "relay: and the relay subnet's router" "$W/relay.env.BOUND" "^new_routers=198\.18\.1\.1$"
    check "relay: stemcell answered the relay" "$LOG" "DEBUG.* ack " "mac=52:54:00:5c:00:41" "to=198\.18\.1\.1:67"
    dhclient_stop relay c1 -x
    kill $RELAY_PID 2>/dev/null; wait $RELAY_PID 2>/dev/null
    stop_server TERM
}

# proxy mode beside dnsmasq
scenario_proxy() {
    ip netns exec $SITE dnsmasq --no-daemon --conf-file=/dev/null --port=0 --user=root --interface=s0 \
        --bind-interfaces --no-ping --dhcp-range=198.18.0.50,198.18.0.60,255.255.255.0,10m \
        --dhcp-leasefile="$W/dnsmasq.leases" --pid-file="$W/dnsmasq.pid" --log-dhcp >"$W/dnsmasq.log" 2>&1 &
    DNSMASQ_PID=$!
    for _ in $(seq 400); do grep -q "DHCP, IP range" "$W/dnsmasq.log" && break; sleep 0.05; done
    check "proxy: dnsmasq serves the site's DHCP" "$W/dnsmasq.log" "DHCP, IP range 198\.18\.0\.50"
    write_config proxy proxy
    start_server proxy
    dnsmasq_ip='198\.18\.0\.(5[0-9]|60)'

    # The probe sees every offer: stemcell's (no address, a boot file) and dnsmasq's.
    pids=()
    probe c0 52:54:00:5c:00:61 discover 0 >"$W/p-bios.out" 2>&1 & pids+=($!)
    probe c0 52:54:00:5c:00:62 discover 7 >"$W/p-uefi.out" 2>&1 & pids+=($!)
    probe c0 52:54:00:5c:00:63 discover 7 ipxe >"$W/p-ipxe.out" 2>&1 & pids+=($!)
    probe c0 52:54:00:5c:00:64 discover 11 >"$W/p-arm64.out" 2>&1 & pids+=($!)
    probe c0 52:54:00:5c:00:65 discover 99 >"$W/p-arch99.out" 2>&1 & pids+=($!)
    wait "${pids[@]}"
    stemcell_offer=('^REPLY 198\.18\.0\.1:67 ' '"type":"Some\(Offer\)"' '"yiaddr":"0\.0\.0\.0"' '"siaddr":"198\.18\.0\.1"' '"opt54":"198\.18\.0\.1"')
    check "proxy, BIOS: stemcell offers undionly.kpxe and no address" "$W/p-bios.out" "${stemcell_offer[@]}" '"file":"undionly\.kpxe"' '"opt67":"undionly\.kpxe"' '"opt60":"PXEClient"'
    check "proxy, BIOS: with PXE discovery control 8 (option 43)" "$W/p-bios.out" '^REPLY 198\.18\.0\.1:67 ' '"opt43":"\[6, 1, 8, 255\]"'
    check "proxy, BIOS: dnsmasq offers the address" "$W/p-bios.out" '^REPLY 198\.18\.0\.2:67 ' "\"yiaddr\":\"$dnsmasq_ip\""
    check "proxy, UEFI x64: snponly.efi, no address" "$W/p-uefi.out" "${stemcell_offer[@]}" '"file":"snponly\.efi"' '"opt67":"snponly\.efi"'
    check "proxy, iPXE: its boot script URL, no address" "$W/p-ipxe.out" "${stemcell_offer[@]}" "\"file\":\"http://198\\.18\\.0\\.1:$PORT/boot/52:54:00:5c:00:63\\.ipxe\""
    check "proxy, ARM64: ipxe-arm64.efi, no address" "$W/p-arm64.out" "${stemcell_offer[@]}" '"file":"ipxe-arm64\.efi"'
    check "proxy, arch 99: the documented fallback (BIOS), no address" "$W/p-arch99.out" "${stemcell_offer[@]}" '"file":"undionly\.kpxe"'
    check "proxy, arch 99: the fallback is logged" "$LOG" "WARN.*client architecture not recognised" "mac=52:54:00:5c:00:65"

    # UEFI firmware asks the proxy again on port 4011 from its new address.
    ip -n $CLI addr add 198.18.0.77/24 dev c0
    probe c0 52:54:00:5c:00:62 request4011 7 198.18.0.1 >"$W/p-4011.out" 2>&1
    check "proxy: the port-4011 REQUEST gets a unicast ACK with the boot file" "$W/p-4011.out" \
        '^REPLY 198\.18\.0\.1:4011 ' '"type":"Some\(Ack\)"' '"yiaddr":"0\.0\.0\.0"' '"file":"snponly\.efi"'
    ip -n $CLI addr flush dev c0

    # dhclient with the PXE firmware's options: its address from dnsmasq, its boot file offered
    # by stemcell. dhclient would take stemcell's address-less offer as a lease offer (PXE
    # firmware reads it for the boot file only), so it rejects offers from stemcell, and logs
    # that it got one.
    { cat "$W/uefi.conf"; echo 'reject 198.18.0.1;'; } >"$W/uefi-beside-proxy.conf"
    setmac c0 52:54:00:5c:00:66
    dhclient_run proxy-pxe c0 uefi-beside-proxy.conf
    check "proxy, dhclient PXE: stemcell's offer reached it" "$W/proxy-pxe.log" "DHCPOFFER.* from 198\.18\.0\.1 rejected"
    check "proxy, dhclient PXE: binds dnsmasq's address" "$W/proxy-pxe.env.BOUND" "^new_ip_address=$dnsmasq_ip$"
    check "proxy, dhclient PXE: from dnsmasq (server identifier)" "$W/proxy-pxe.env.BOUND" "^new_dhcp_server_identifier=198\.18\.0\.2$"
    check "proxy, dhclient PXE: stemcell offered it snponly.efi" "$LOG" "DEBUG.*proxy reply" "mac=52:54:00:5c:00:66" "file=snponly\.efi"
    check_api "proxy, dhclient PXE: stemcell's offer is an event" 52:54:00:5c:00:66 '"kind":"dhcp","message":"DHCPDISCOVER → DHCPOFFER, boot file snponly\.efi'
    dhclient_stop proxy-pxe c0 -r

    # A plain client: dnsmasq answers it, stemcell never does.
    setmac c0 52:54:00:5c:00:67
    dhclient_run proxy-plain c0 plain.conf
    check "proxy, plain dhclient: gets dnsmasq's address" "$W/proxy-plain.env.BOUND" "^new_ip_address=$dnsmasq_ip$"
    check "proxy, plain dhclient: stemcell saw it and ignored it" "$LOG" "DEBUG.*DHCP request ignored" "reason=\"?proxy mode: not a network-boot client"
    check_not "proxy, plain dhclient: no offer from stemcell reached it" "$W/proxy-plain.log" "DHCP(OFFER|ACK|NAK).* from 198\.18\.0\.1$"
    check_not "proxy, plain dhclient: stemcell sent it nothing" "$LOG" "proxy reply" "mac=52:54:00:5c:00:67"
    api 52:54:00:5c:00:67 "$W/api.plain.json"
    check "proxy, plain dhclient: not a machine for stemcell (API 404, no events)" "$W/api.plain.json" "^404$"
    dhclient_stop proxy-plain c0 -r

    check_api "proxy, API: an unknown PXE machine is recorded as discovered" 52:54:00:5c:00:62 '"state":"discovered"'
    check_api "proxy, API: with arch, vendor class and UUID" 52:54:00:5c:00:62 '"arch":"x86-64 UEFI"' \
        '"vendor_class":"PXEClient:Arch:00007:UNDI:003016"' '"uuid":"01020304-0506-0708-090a-0b0c0d0e0f10"'
    check_api "proxy, API: its DHCP steps (port 67 and 4011) are events of kind dhcp" 52:54:00:5c:00:62 \
        '"kind":"dhcp","message":"DHCPREQUEST on port 4011 → DHCPACK, boot file snponly\.efi'
    stop_server TERM
    kill $DNSMASQ_PID 2>/dev/null; wait $DNSMASQ_PID 2>/dev/null
}

# pool exhaustion
scenario_tiny() {
    write_config tiny authoritative 198.18.0.101
    start_server tiny
    setmac c0 52:54:00:5c:00:71
    udhcpc_run t1 c0 3
    setmac c0 52:54:00:5c:00:72
    udhcpc_run t2 c0 3
    check "tiny pool: first client bound" "$W/t1.env" '^ip=198\.18\.0\.10[01]$'
    check "tiny pool: second client bound" "$W/t2.env" '^ip=198\.18\.0\.10[01]$'
    setmac c0 52:54:00:5c:00:73
    udhcpc_run t3 c0 2
    if [ -f "$W/t3.env" ] || grep -q "obtained\|lease of" "$W/t3.log"; then
        fail "tiny pool: the third client got an address"; show "$W/t3.log"
    else pass "tiny pool: the third client gets no offer"; fi
    check "tiny pool: the log says why" "$LOG" "WARN.*exhausted" "mac=52:54:00:5c:00:73"
    probe c0 52:54:00:5c:00:74 discover 7 1000 >"$W/p-tiny.out" 2>&1
    check "tiny pool: a PXE client gets no offer either" "$W/p-tiny.out" "^NO REPLY$"
    check_api "tiny pool: its event says why" 52:54:00:5c:00:74 '"kind":"dhcp","message":"DHCPDISCOVER: no answer: the address pool of subnet 198\.18\.0\.0/24 is exhausted'
    stop_server TERM
}

# authoritative with DHCPv6 (dhcp.ipv6), against ISC dhclient -6 as a real DHCPv6 client
scenario_auth_dhcpv6() {
    local d=$W/auth-dhcpv6 mac=52:54:00:5c:00:61 want
    write_config auth-dhcpv6 authoritative
    ip -n $SRV addr add fd00:5ce1::1/64 dev br0 nodad
    sed -i "s|^  listen: .*|  listen: \"[::]:$PORT\"|" "$d/stemcell.yaml"
    sed -i '/^  boot_files:/a\  ipv6:\n    server_ip: fd00:5ce1::1\n    prefix: fd00:5ce1::/64\n    lease_time: 10m\n    dns: [fd00:5ce1::1]' "$d/stemcell.yaml"
    start_server auth-dhcpv6
    check "DHCPv6 listens on port 547 on br0" "$LOG" "DHCPv6 listening on UDP" "interface=br0" "addr=\[::\]:547"

    # The MAC's modified EUI-64 interface id, worked out here independently of stemcell.
    IFS=: read -r m1 m2 m3 m4 m5 m6 <<<"$mac"
    want=$(printf 'fd00:5ce1::%x:%x:%x:%x' $((0x$m1$m2 ^ 0x0200)) $((0x${m3}ff)) $((0xfe$m4)) $((0x$m5$m6)))
    setmac c0 $mac
    # dhclient -6 needs c0's link-local address settled (DAD done).
    for _ in $(seq 100); do
        ip -n $CLI -6 addr show dev c0 scope link | grep -q tentative || break
        sleep 0.05
    done
    v6run() { # NAME: one exchange (dhclient -6 -1), hook environments in NAME.env.REASON
        local f rc
        rm -f "$W"/dhclient.c0.*
        inns $CLI timeout 30 dhclient -6 -v -1 -cf /dev/null -sf "$W/dhclient-hook.sh" \
            -lf "$W/$1.leases" -pf "$W/$1.pid" c0 >"$W/$1.log" 2>&1
        rc=$?
        for f in "$W"/dhclient.c0.*; do [ -f "$f" ] && mv "$f" "$W/$1.env.${f##*.}"; done
        [ $rc = 0 ] || fail "dhclient -6 $1 exited with $rc"
    }
    v6stop() { # NAME: release and stop
        local f
        rm -f "$W"/dhclient.c0.*
        inns $CLI timeout 20 dhclient -6 -v -r -cf /dev/null -sf "$W/dhclient-hook.sh" \
            -lf "$W/$1.leases" -pf "$W/$1.pid" c0 >>"$W/$1.log" 2>&1
        for f in "$W"/dhclient.c0.*; do [ -f "$f" ] && mv "$f" "$W/$1.env.${f##*.}"; done
    }
    v6run v6a
    check "dhclient -6 bound the MAC's EUI-64 address $want (computed here)" \
        "$W/v6a.env.BOUND6" "^new_ip6_address=$want$"
    check "... and the name server" "$W/v6a.env.BOUND6" "^new_dhcp6_name_servers=fd00:5ce1::1$"
    check "... after a SOLICIT, ADVERTISE, REQUEST and REPLY" "$W/v6a.log" "RCV: Advertise message"
    check "... with a 600 s valid lifetime" "$W/v6a.leases" "max-life 600"
    v6stop v6a
    check "dhclient -6 -r sent a RELEASE" "$W/v6a.log" "XMT: Release"
    check "... answered with a REPLY to the client's link-local address and port (the address came from the MAC in its DUID-LLT: c0's link-local predates its MAC)" "$LOG" \
        "DEBUG.*DHCPv6 reply" "to=\[fe80::[0-9a-f:]+%[0-9]+\]:546" "received=DHCPv6 RELEASE" "sent=DHCPv6 REPLY"

    # Nothing is stored: after a restart the same NIC gets the same address again.
    stop_server KILL
    start_server auth-dhcpv6
    rm -f "$W/v6b.leases"
    v6run v6b
    check "after SIGKILL and a restart the same address again (computed, nothing stored)" \
        "$W/v6b.env.BOUND6" "^new_ip6_address=$want$"
    v6stop v6b
    stop_server TERM
}

# ==== run ====================================================================================
[ "$SCENARIO" = all ] && SCENARIO=$SCENARIOS
for s in $SCENARIO; do
    echo "== $s ($(elapsed)s)"
    "scenario_${s//-/_}"
done
echo
echo "$PASSES passed, $FAILS failed in $(elapsed)s"
[ $FAILS -eq 0 ]
