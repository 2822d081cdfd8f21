#!/bin/bash
# stemcell's benchmarks, side by side with its peers in one run: TFTP (tftp-hpa), HTTP
# (nginx), DHCP (Kea), a 1,000-machine boot storm and a 100,000-machine inventory. Prints a
# Markdown table (benchmark, stemcell, peer, ratio, target, result) and writes it to
# target/bench/results.md. Run as root on Debian 12 from anywhere: `bash bench/run.sh`.
# See bench/README.md for what each number means.
#
# Knobs (environment): ONLY="tftp http dhcp dhcppg storm inventory" (a subset, in that order),
# REPS=3 (runs per measurement; medians are reported), CHEAP_REPS=5 (TFTP and the
# inventory), WRK_SECS=5, DHCP_PERIOD=5,
# DHCP_ROUNDS=$REPS, PERFDHCP_BIGBUF=1, STORM_SIZES="100 1000 5000" (machines per storm),
# STORM_RAMP=3 (seconds in which a storm's machines start), STORM_DEADLINE=120 (per machine),
# STORM_MAX_TRANSFERS (stemcell's tftp.max_transfers in the storm; default: stemcell's own),
# INV_MACHINES=100000, KEEP=1 (keep the work
# folder), CARGO_TARGET_DIR (where stemcell is built; default ./target), NO_BUILD=1 with
# STEMCELL=/path/to/stemcell to measure a binary as it is.
#
# Network rule: every server and client runs inside network namespaces made here (names with
# this shell's PID), on loopback or 198.18.0.0/15; they are removed on exit, failure and
# INT/TERM/HUP. Every load generator is bounded in count and time. Namespaces, veths,
# stemcell's config, its start (up to its "stemcell ready" line) and the clean-up are
# lab/lib.sh's.
set -uo pipefail
export PATH="$PATH:/usr/sbin:/sbin:$HOME/.cargo/bin"
export LC_ALL=C

BENCH=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$BENCH/.." && pwd)
# shellcheck source=../lab/lib.sh
. "$REPO/lab/lib.sh"
PY=/usr/bin/python3
[ -x $PY ] || PY=python3
LIB=("$PY" "$BENCH/benchlib.py")
REPS=${REPS:-3}
CHEAP_REPS=${CHEAP_REPS:-5} # TFTP and inventory runs take a second or two: more of them
WRK_SECS=${WRK_SECS:-5}
DHCP_PERIOD=${DHCP_PERIOD:-5}
DHCP_ROUNDS=${DHCP_ROUNDS:-$REPS}
DHCP_GENERATORS=${DHCP_GENERATORS:-3}
STORM_SIZES=${STORM_SIZES:-"100 1000 5000"}
STORM_RAMP=${STORM_RAMP:-3}
STORM_DEADLINE=${STORM_DEADLINE:-120}
INV_MACHINES=${INV_MACHINES:-100000}
ONLY=${ONLY:-"tftp http dhcp dhcppg storm inventory"}
OUT_DIR=$REPO/target/bench

P=scb$$
NS_LO=$P-lo NS_KS=$P-kea-s NS_KC=$P-kea-c NS_SS=$P-sc-s NS_SC=$P-sc-c NS_STS=$P-st-s NS_STC=$P-st-c NS_INV=$P-inv
W=$(mktemp -d "/tmp/$P.XXXXXX")
chmod 755 "$W" # in.tftpd and nginx's workers run as nobody
SAMPLES=$W/samples.txt
: >"$SAMPLES"
T0=$SECONDS
CREATED_POLICY=

cleanup() {
    trap '' PIPE INT TERM HUP
    lab_cleanup
    pg_down
    [ -n "$CREATED_POLICY" ] && rm -f /usr/sbin/policy-rc.d
    if [ "${KEEP:-}" = 1 ]; then echo "work folder kept: $W" >&2; else rm -rf "$W"; fi
}
# The private PostgreSQL cluster of the DHCP-on-PostgreSQL benchmark, if one runs.
PGD=
pg_down() {
    [ -n "$PGD" ] || return 0
    (cd / && runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGD/data" -m immediate -w stop >/dev/null 2>&1)
    rm -rf "$PGD"
    PGD=
}
trap cleanup EXIT
trap 'echo "bench: interrupted" >&2; exit 130' INT TERM HUP

log() { printf '[%4ds] %s\n' $((SECONDS - T0)) "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
sample() { echo "$1 $2" >>"$SAMPLES"; }
inns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }
want() { [[ " $ONLY " == *" $1 "* ]]; }
now() { date +%s.%N; }
secs_since() { $PY -c "import sys; print('%.4f' % (float(sys.argv[2]) - float(sys.argv[1])))" "$1" "$(now)"; }
calc() { $PY -c "print($1)"; }
# wait_for SECONDS COMMAND...: poll every 20 ms until COMMAND succeeds
wait_for() {
    local end=$(($(date +%s%N) + $1 * 1000000000)); shift
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s%N)" -lt $end ] || return 1
        sleep 0.02
    done
}
udp_bound() { inns "$1" ss -Hlun "sport = :$2" | grep -q .; }
tcp_bound() { inns "$1" ss -Hltn "sport = :$2" | grep -q .; }

[ "$(id -u)" = 0 ] || die "run as root (network namespaces, ports 67 and 69)"

# ---- packages ----------------------------------------------------------------------------
PACKAGES=(atftp tftpd-hpa nginx wrk kea-dhcp4-server kea-admin ipxe time curl iproute2 procps python3 gcc libc6-dev gnuplot-nox)
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    for _ in $(seq 300); do # another engineer's apt: wait (up to 10 minutes), never run beside it
        pgrep -x apt-get >/dev/null || pgrep -x apt >/dev/null || pgrep -x dpkg >/dev/null || break
        sleep 2
    done
    pgrep -x apt-get >/dev/null && die "apt-get is still running elsewhere; try again later"
    # Services these packages ship (tftpd-hpa, nginx, kea) must not start on the host.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && CREATED_POLICY=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    ls /var/lib/apt/lists/*_Packages* >/dev/null 2>&1 || apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$W/apt.log" 2>&1 ||
        { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$W/apt.log" 2>&1; } ||
        { tail -20 "$W/apt.log" >&2; die "apt-get install failed"; }
    if [ -d /run/systemd/system ]; then
        for s in tftpd-hpa nginx kea-dhcp4-server; do
            [[ " ${missing[*]} " == *" ${s%-server} "* || " ${missing[*]} " == *" $s "* ]] &&
                systemctl disable --now "$s" >/dev/null 2>&1
        done
    fi
    [ -n "$CREATED_POLICY" ] && rm -f /usr/sbin/policy-rc.d && CREATED_POLICY=
fi
for t in atftp in.tftpd nginx wrk kea-dhcp4 perfdhcp /usr/bin/time curl ss gnuplot; do
    command -v $t >/dev/null || die "$t is missing"
done

# ---- build -------------------------------------------------------------------------------
if [ "${NO_BUILD:-}" = 1 ]; then
    BIN=${STEMCELL:?NO_BUILD=1 needs STEMCELL=/path/to/stemcell}
else
    TD=${CARGO_TARGET_DIR:-$REPO/target}
    log "building stemcell (release) in $TD"
    (cd "$REPO" && CARGO_TARGET_DIR=$TD cargo build --release --quiet) || die "cargo build failed"
    BIN=$TD/release/stemcell
fi
[ -x "$BIN" ] || die "no stemcell binary at $BIN"
if want storm; then # the storm's generator: its own package and Cargo.lock (bench/storm), release
    STORM_TD=${CARGO_TARGET_DIR:-$REPO/target}/bench-storm
    log "building the storm generator (bench/storm, release) in $STORM_TD"
    (cd "$BENCH/storm" && CARGO_TARGET_DIR=$STORM_TD cargo build --release --locked --quiet) || die "cargo build of bench/storm failed"
    STORM=$STORM_TD/release/storm
fi
mkdir -p "$OUT_DIR"

# kea_config DIR LEASE_DATABASE: DIR/kea-dhcp4.json for the DHCP benchmarks (s0, one thread,
# 198.18.0.0/16 with the pool stemcell gets), its lease database given as JSON
kea_config() {
    cat >"$1/kea-dhcp4.json" <<EOF
{ "Dhcp4": {
    "interfaces-config": { "interfaces": [ "s0" ], "dhcp-socket-type": "udp" },
    "lease-database": $2,
    "multi-threading": { "enable-multi-threading": false },
    "valid-lifetime": 3600,
    "subnet4": [ { "id": 1, "subnet": "198.18.0.0/16",
                   "pools": [ { "pool": "198.18.1.0 - 198.18.255.250" } ],
                   "option-data": [ { "name": "routers", "data": "198.18.0.1" },
                                    { "name": "domain-name-servers", "data": "198.18.0.1" } ] } ],
    "loggers": [ { "name": "kea-dhcp4", "severity": "WARN", "output_options": [ { "output": "$1/kea.log" } ] } ]
} }
EOF
}

# A stemcell folder (lab_config; the caller sets its LAB_* knobs): DIR MODE
write_config() { lab_config "$@" || die "cannot write the config in $1"; }
# start_stemcell NS DIR: serve DIR's config in NS (fresh log DIR/stemcell.log); sets SC_PID
# once it is ready (lab_serve: its "stemcell ready" line, every socket bound)
start_stemcell() {
    : >"$2/stemcell.log"
    lab_serve "$1" "$BIN" "$2" "$2/stemcell.log" || { tail "$2/stemcell.log" >&2; die "stemcell did not start in $1"; }
    SC_PID=$LAB_PID
}
stop_pid() { kill -TERM "$1" 2>/dev/null; wait "$1" 2>/dev/null; }
netns() { lab_netns "$1" || die "cannot create namespace $1"; }

# ==== 1. TFTP and 2. HTTP: one namespace, on its loopback ===================================
if want tftp || want http; then
    netns $NS_LO
    L=$W/lo
    LAB_IFACE=lo LAB_SERVER_IP=127.0.0.1 LAB_LISTEN=127.0.0.1:8080 LAB_TFTP_ROOT=tftp write_config "$L" off
    mkdir -p "$L/tftp" "$L/www/stemcell" "$L/www/boot" "$L/nginx/tmp"
    head -c 50000000 /dev/urandom >"$L/tftp/big.bin"
    cp /usr/lib/ipxe/undionly.kpxe /usr/lib/ipxe/snponly.efi "$L/tftp/" # the boot files must exist
    head -c 10000000 /dev/urandom >"$L/stemcell/vmlinuz"
    head -c 1000000 /dev/urandom >"$L/stemcell/initrd.img"
    ln "$L/stemcell/vmlinuz" "$L/www/stemcell/vmlinuz" # the same bytes for both servers
    chmod -R a+rX "$L"
    "${LIB[@]}" inventory 2000 "$L/inventory.yaml" --prefix 52:54:02 || die "inventory"
    head -n 1000 "$L/inventory.yaml.macs" >"$L/installed.macs"
    tail -n 1000 "$L/inventory.yaml.macs" >"$L/pending.macs"
    start_stemcell $NS_LO "$L"
    LO_SC=$SC_PID
fi

if want tftp; then
    log "TFTP: 50 MB file, atftp against stemcell (127.0.0.1) and tftp-hpa's in.tftpd (127.0.0.2)"
    # in.tftpd only answers on an address that was on an interface when it started.
    ip -n $NS_LO addr add 127.0.0.2/8 dev lo || die "cannot add 127.0.0.2"
    ip netns exec $NS_LO in.tftpd -L -s "$L/tftp" -a 127.0.0.2:69 >"$W/in.tftpd.log" 2>&1 &
    HPA_PID=$!
    wait_for 10 eval "inns $NS_LO ss -Hlun 'src 127.0.0.2 and sport = :69' | grep -q ." || die "in.tftpd did not start"
    # tftp_run ADDR OPTS...: seconds for one 50 MB fetch (empty on failure)
    tftp_run() {
        local addr=$1 s; shift
        rm -f "$L/out.bin"
        s=$(now)
        inns $NS_LO timeout 120 atftp "$@" -g -r big.bin -l "$L/out.bin" "$addr" >/dev/null 2>"$W/atftp.err" || { cat "$W/atftp.err" >&2; return 1; }
        secs_since "$s"
        [ "$(stat -c %s "$L/out.bin")" = 50000000 ] || return 1
    }
    for variant in default bs1428 ws16 bs1428ws16; do
        case $variant in
            default) opts=() ;;
            bs1428) opts=(--option "blksize 1428") ;;
            ws16) opts=(--option "windowsize 16") ;;
            bs1428ws16) opts=(--option "blksize 1428" --option "windowsize 16") ;;
        esac
        for rep in $(seq "$CHEAP_REPS"); do
            order="hpa sc"; ((rep % 2 == 0)) && order="sc hpa"
            for srv in $order; do
                addr=127.0.0.1; [ "$srv" = hpa ] && addr=127.0.0.2
                t=$(tftp_run $addr "${opts[@]}") || { log "  $variant $srv: transfer FAILED"; continue; }
                if [ "$rep" = 1 ] && ! cmp -s "$L/out.bin" "$L/tftp/big.bin"; then
                    log "  $variant $srv: the file arrived CORRUPTED"; continue
                fi
                mbps=$(calc "round(50.0 / $t, 2)")
                sample "tftp.$variant.$srv" "$mbps"
                log "  $variant $srv: $t s, $mbps MB/s"
            done
        done
    done
    rm -f "$L/out.bin"
    stop_pid $HPA_PID
fi

if want http; then
    log "HTTP: wrk -t2 -c4 -d${WRK_SECS}s against stemcell (:8080) and nginx (:8081)"
    cat >"$L/nginx/nginx.conf" <<EOF
# Debian's stock shape (worker_processes auto, sendfile, tcp_nopush, an access log), own paths.
worker_processes auto;
pid $L/nginx/nginx.pid;
error_log $L/nginx/error.log warn;
events { worker_connections 1024; }
http {
    sendfile on;
    tcp_nopush on;
    types_hash_max_size 2048;
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log $L/nginx/access.log;
    client_body_temp_path $L/nginx/tmp/body;
    proxy_temp_path $L/nginx/tmp/proxy;
    fastcgi_temp_path $L/nginx/tmp/fastcgi;
    uwsgi_temp_path $L/nginx/tmp/uwsgi;
    scgi_temp_path $L/nginx/tmp/scgi;
    server {
        listen 127.0.0.1:8081;
        root $L/www;
    }
}
EOF
    ip netns exec $NS_LO nginx -c "$L/nginx/nginx.conf" -g 'daemon off;' >"$W/nginx.out" 2>&1 &
    NGINX_PID=$!
    wait_for 10 tcp_bound $NS_LO 8081 || { cat "$W/nginx.out" "$L/nginx/error.log" >&2; die "nginx did not start"; }
    log "  installing 1000 machines and arming 1000 pending ones through the HTTP API"
    inns $NS_LO "${LIB[@]}" install http://127.0.0.1:8080 "$L/installed.macs" >&2 || die "could not install the machines"
    inns $NS_LO "${LIB[@]}" arm http://127.0.0.1:8080 "$L/pending.macs" >&2 || die "could not arm the machines"
    # nginx's small static file: an installed machine's real boot script, byte for byte.
    inns $NS_LO curl -fsS "http://127.0.0.1:8080/boot/$(head -n 1 "$L/installed.macs").ipxe" >"$L/www/boot/static.ipxe" || die "boot script"
    chmod a+r "$L/www/boot/static.ipxe"
    inns $NS_LO curl -fsS -o /dev/null http://127.0.0.1:8081/boot/static.ipxe || die "nginx does not serve the static file"
    log "  boot script: $(wc -c <"$L/www/boot/static.ipxe") bytes; nginx static copy at /boot/static.ipxe"
    cat >"$L/boot.lua" <<'EOF'
-- one of MACS (a file, one MAC a line) at random for every request
local macs = {}
for line in io.lines(os.getenv("MACS")) do macs[#macs + 1] = line end
math.randomseed(os.time())
request = function()
    return wrk.format("GET", "/boot/" .. macs[math.random(#macs)] .. ".ipxe")
end
EOF
    # server_ticks NAME: CPU ticks (user + system) so far of the server NAME's run measures
    server_ticks() {
        local pids=$LO_SC p t=0
        [[ $1 == *.nginx ]] && pids="$NGINX_PID $(pgrep -P "$NGINX_PID" | tr '\n' ' ')"
        for p in $pids; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done
        echo $t
    }
    # wrk_run NAME URL [MACS]: one wrk run; samples NAME.rps and NAME.mbps (and, for the
    # kernel, the server's CPU seconds per GB sent)
    wrk_run() {
        local name=$1 url=$2 macs=${3:-} out=$W/wrk.$1.out rps mbps bad t0 t1 cpu=
        t0=$(server_ticks "$name")
        if [ -n "$macs" ]; then
            inns $NS_LO env MACS="$macs" timeout $((WRK_SECS + 30)) wrk -t2 -c4 -d"${WRK_SECS}s" --timeout 10s -s "$L/boot.lua" "$url" >"$out" 2>&1
        else
            inns $NS_LO timeout $((WRK_SECS + 30)) wrk -t2 -c4 -d"${WRK_SECS}s" --timeout 10s "$url" >"$out" 2>&1
        fi
        t1=$(server_ticks "$name")
        read -r rps mbps bad < <("${LIB[@]}" wrk "$out")
        if [[ $name == kernel.* ]]; then
            cpu=$(calc "round(($t1 - $t0) / $(getconf CLK_TCK) / max(0.001, $mbps * $WRK_SECS / 1000), 3)")
            sample "http.$name.cpu_per_gb" "$cpu"
            cpu=", server CPU $cpu s per GB"
        else
            cpu=$(calc "round(($t1 - $t0) / $(getconf CLK_TCK) / max(1, $rps * $WRK_SECS) * 1e6, 2)")
            sample "http.$name.cpu_us" "$cpu"
            cpu=", server CPU $cpu µs per request"
        fi
        if [ "${bad:-1}" != 0 ]; then log "  $name: $bad errors or non-2xx responses (see $out with KEEP=1)"; sample "http.errors.$name" "$bad"; fi
        sample "http.$name.rps" "$rps"
        sample "http.$name.mbps" "$mbps"
        log "  $name: $rps req/s, $mbps MB/s$cpu"
    }
    for rep in $(seq "$REPS"); do
        if ((rep % 2)); then
            wrk_run kernel.nginx http://127.0.0.1:8081/stemcell/vmlinuz
            wrk_run kernel.sc http://127.0.0.1:8080/stemcell/vmlinuz
            wrk_run static.nginx http://127.0.0.1:8081/boot/static.ipxe
            wrk_run script_installed.sc http://127.0.0.1:8080/ "$L/installed.macs"
            wrk_run script_pending.sc http://127.0.0.1:8080/ "$L/pending.macs"
        else
            wrk_run kernel.sc http://127.0.0.1:8080/stemcell/vmlinuz
            wrk_run kernel.nginx http://127.0.0.1:8081/stemcell/vmlinuz
            wrk_run script_pending.sc http://127.0.0.1:8080/ "$L/pending.macs"
            wrk_run script_installed.sc http://127.0.0.1:8080/ "$L/installed.macs"
            wrk_run static.nginx http://127.0.0.1:8081/boot/static.ipxe
        fi
    done
    log "  stemcell's RSS after the HTTP runs: $(awk '/VmRSS/ {print $2, $3}' /proc/"$LO_SC"/status)"
    stop_pid $NGINX_PID
fi
[ -n "${LO_SC:-}" ] && stop_pid "$LO_SC"

# ==== 3. DHCP: perfdhcp against Kea and stemcell, each in its own namespace pair =============
if want dhcp; then
    log "DHCP: $DHCP_GENERATORS perfdhcp at once, -r RATE/$DHCP_GENERATORS each, -p $DHCP_PERIOD, stepping the rate; Kea 2 (memfile, persist, one thread) vs stemcell (authoritative, journal synced before each ACK)"
    for pair in "$NS_KS $NS_KC" "$NS_SS $NS_SC"; do
        read -r srv_ns cli_ns <<<"$pair"
        netns "$srv_ns"; netns "$cli_ns"
        lab_link "$srv_ns" s0 198.18.0.1/16 "$cli_ns" c0 198.18.0.2/16 || die "veth"
        # one relay address per generator: 198.18.0.2, .3, ...
        for g in $(seq 2 "$DHCP_GENERATORS"); do ip -n "$cli_ns" addr add "198.18.0.$((g + 1))/16" dev c0 || die "address"; done
    done
    D=$W/dhcp-sc
    LAB_IFACE=s0 LAB_TFTP_ROOT='' LAB_SUBNETS='    - subnet: 198.18.0.0/16
      pool: [198.18.1.0, 198.18.255.250]
      router: 198.18.0.1
      dns: [198.18.0.1]
      lease_time: 1h' write_config "$D" authoritative
    "${LIB[@]}" inventory 10 "$D/inventory.yaml" --prefix 52:54:03 || die "inventory"
    K=$W/kea
    mkdir -p "$K"
    kea_config "$K" '{ "type": "memfile", "persist": true, "name": "'"$K"'/leases4.csv", "lfc-interval": 0 }'
    # dhcp_start SERVER: a fresh server (empty lease store) in its namespace; sets SRV_PID
    dhcp_start() {
        if [ "$1" = kea ]; then
            rm -f "$K"/leases4.csv* "$K"/*.pid
            KEA_PIDFILE_DIR=$K KEA_LOCKFILE_DIR=$K ip netns exec $NS_KS kea-dhcp4 -c "$K/kea-dhcp4.json" >>"$K/kea.out" 2>&1 &
            SRV_PID=$!
            wait_for 20 udp_bound $NS_KS 67 || { tail "$K/kea.out" "$K/kea.log" >&2; die "Kea did not start"; }
        else
            rm -rf "$D/state"
            start_stemcell $NS_SS "$D"
            SRV_PID=$SC_PID
        fi
    }
    # perfdhcp's own socket must not be what overflows on this small shared machine: give it a
    # large receive buffer (bench/rcvbuf.c, an LD_PRELOAD for the load generator only).
    PERFDHCP=(perfdhcp)
    if [ "${PERFDHCP_BIGBUF:-1}" = 1 ]; then
        if cc -shared -fPIC -O2 -o "$W/rcvbuf.so" "$BENCH/rcvbuf.c" -ldl 2>"$W/cc.err"; then
            PERFDHCP=(env LD_PRELOAD="$W/rcvbuf.so" perfdhcp)
        else
            log "  (no C compiler: perfdhcp keeps its default receive buffer)"
        fi
    fi
    # udp_rcvbuf_errors NS: datagrams the kernel dropped in NS because a socket's buffer was full
    # shellcheck disable=SC2016 # $6 is awk's
    udp_rcvbuf_errors() { inns "$1" awk '/^Udp:/ { if (h) print $6; else h = 1 }' /proc/net/snmp; }
    cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; } # utime + stime, all threads
    # dhcp_run SERVER RATE: one perfdhcp run against a fresh server; 0 if it kept up. Sets
    # LIMIT to where the drops were: "server" (its socket overflowed) or "client" (perfdhcp's did).
    dhcp_run() {
        local srv=$1 rate=$2 sns=$NS_SS cns=$NS_SC out achieved drops ra sent acks ok=1 s0 c0 t0 s1 c1 t1 us bound g0 g1 gus
        [ "$srv" = kea ] && sns=$NS_KS cns=$NS_KC
        dhcp_start "$srv"
        out=$W/perfdhcp.$srv.$rate.out
        s0=$(udp_rcvbuf_errors $sns) c0=$(udp_rcvbuf_errors $cns) t0=$(cpu_ticks $SRV_PID)
        # DHCP_GENERATORS perfdhcp processes at once, each RATE/G, its own relay address (giaddr)
        # and its own MAC range (50,000 clients in all, so the pool never runs out)
        local g outs=() pids=()
        # the generators' CPU: what this shell's reaped children used (perfdhcp under timeout)
        g0=$(awk '{print $16 + $17}' /proc/$$/stat)
        for g in $(seq "$DHCP_GENERATORS"); do
            outs+=("$out.$g")
            inns $cns timeout $((DHCP_PERIOD + 20)) "${PERFDHCP[@]}" -4 -r $((rate / DHCP_GENERATORS)) -R $((50000 / DHCP_GENERATORS)) \
                -p "$DHCP_PERIOD" -b "mac=02:0$g:00:00:00:00" -l "198.18.0.$((g + 1))" 198.18.0.1 >"$out.$g" 2>&1 &
            pids+=($!)
        done
        wait "${pids[@]}"
        g1=$(awk '{print $16 + $17}' /proc/$$/stat)
        s1=$(udp_rcvbuf_errors $sns) c1=$(udp_rcvbuf_errors $cns) t1=$(cpu_ticks $SRV_PID)
        stop_pid "$SRV_PID"
        read -r achieved drops ra sent acks < <("${LIB[@]}" perfdhcp "${outs[@]}")
        if [ "$srv" = sc ]; then # every ACK the generators received has its record in the journal
            bound=$(grep -c '"state":"bound"' "$D/state/leases.journal")
            sample dhcp.sc.acks_not_in_journal $((acks > bound ? acks - bound : 0))
            [ "$bound" -ge "$acks" ] || log "  stemcell @ $rate/s: $acks ACKs received but only $bound leases in its journal: NOT DURABLE"
        fi
        # Kept up: under 1% drops in both halves of the exchange, at (nearly) the rate asked.
        if $PY -c "import sys; a,d,r,rate=map(float,sys.argv[1:]); sys.exit(0 if d<1 and r<1 and a>=0.95*rate else 1)" "$achieved" "$drops" "$ra" "$rate"; then ok=0; fi
        us=$(calc "round(($t1 - $t0) * 1e6 / $(getconf CLK_TCK) / max(1, $acks), 1)")
        gus=$(calc "round(($g1 - $g0) * 1e6 / $(getconf CLK_TCK) / max(1, $acks), 1)")
        [ $ok = 0 ] && sample "dhcp.cpu.$srv.$rate" "$us"
        sample "dhcp.gencpu" "$gus"
        if [ $((c1 - c0)) -gt $((s1 - s0)) ]; then LIMIT=client
        elif [ $((s1 - s0)) -gt $((sent / 200)) ]; then LIMIT=server # over 0.5% overflowed the server's socket
        elif [ "$sent" -lt $((rate * DHCP_PERIOD * 95 / 100)) ] || $PY -c "import sys; sys.exit(0 if max(map(float, sys.argv[1:])) < 1 else 1)" "$drops" "$ra"; then
            LIMIT=generator # perfdhcp could not send (or count) that fast; under 1% was lost
        elif [ $((s1 - s0)) -gt 0 ]; then LIMIT=server
        else LIMIT=late; fi # answers lost or later than perfdhcp's 1 s
        log "  $srv @ $rate/s: sent $sent DISCOVERs, achieved $achieved/s, drops $drops% (DISCOVER-OFFER) $ra% (REQUEST-ACK); socket overflows: server $((s1 - s0)), perfdhcp $((c1 - c0)); server CPU $us µs per DORA, generators $gus µs -> $([ $ok = 0 ] && echo kept up || echo "fell behind ($LIMIT)")"
        return $ok
    }
    LADDER=(1000 2000 4000 6000 8000 10000 12000 14000 16000 20000 24000 28000 32000 40000 48000 56000 64000)
    declare -A BEST PREV
    for round in $(seq "$DHCP_ROUNDS"); do
        declare -A IDX=() FINISHED=() LIM=() AGAIN=()
        for srv in kea sc; do
            BEST[$srv]=0
            IDX[$srv]=0
            LIM[$srv]=none
            if [ -n "${PREV[$srv]:-}" ]; then # later rounds start one step below the last result
                for i in "${!LADDER[@]}"; do [ "${LADDER[$i]}" = "${PREV[$srv]}" ] && IDX[$srv]=$((i > 0 ? i - 1 : 0)); done
            fi
            FINISHED[$srv]=
        done
        step=0
        while [ -z "${FINISHED[kea]}" ] || [ -z "${FINISHED[sc]}" ]; do
            order="kea sc"; (((step + round) % 2)) && order="sc kea"
            step=$((step + 1))
            for srv in $order; do
                [ -n "${FINISHED[$srv]}" ] && continue
                i=${IDX[$srv]}
                if dhcp_run "$srv" "${LADDER[$i]}"; then
                    BEST[$srv]=${LADDER[$i]}
                    IDX[$srv]=$((i + 1))
                    [ $((i + 1)) -ge ${#LADDER[@]} ] && FINISHED[$srv]=1
                elif [ -z "${AGAIN[$srv.$i]:-}" ]; then
                    AGAIN[$srv.$i]=1 # a step not kept up is run once more before it counts (a busy moment of the shared machine)
                    log "  $srv @ ${LADDER[$i]}/s: once more"
                elif [ "${BEST[$srv]}" != 0 ] || [ "$i" = 0 ]; then
                    FINISHED[$srv]=1
                    LIM[$srv]=$LIMIT
                else
                    IDX[$srv]=$((i - 1)) # started too high this round: step down
                fi
            done
        done
        for srv in kea sc; do
            sample "dhcp.$srv" "${BEST[$srv]}"
            sample "dhcp.limit.$srv" "${LIM[$srv]}"
            PREV[$srv]=${BEST[$srv]}
        done
        log "  round $round: Kea ${BEST[kea]}/s (next step: ${LIM[kea]}), stemcell ${BEST[sc]}/s (next step: ${LIM[sc]})"
    done
fi

# ==== 3b. DHCP with the leases in PostgreSQL ===================================================
# Kea 2.2 with its PostgreSQL lease backend and stemcell with store.postgres, on one private
# PostgreSQL cluster (fsync and synchronous_commit on, as packaged), each server started on a
# freshly made database for every run; the same perfdhcp rule as above (< 1% drops both ways,
# ≥ 95% of the rate), a ladder of rates for each, alternating who goes first.
if want dhcppg; then
    PGBIN=$(find /usr/lib/postgresql -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -1)
    [ -x "$PGBIN/initdb" ] || die "PostgreSQL's server is missing (apt-get install postgresql)"
    log "DHCP on PostgreSQL: perfdhcp against Kea (PostgreSQL lease backend, 1 thread) and stemcell (store.postgres), one database server"
    PGD=$(mktemp -d "/tmp/$P-pg.XXXXXX")
    PGPW=bench-$$-$RANDOM$RANDOM
    mkdir -p "$PGD/sock" && echo "$PGPW" >"$PGD/pw" && chown -R postgres:postgres "$PGD"
    (cd / && runuser -u postgres -- "$PGBIN/initdb" -D "$PGD/data" -U stemcell --pwfile "$PGD/pw" -A scram-sha-256 >"$W/initdb.log" 2>&1) ||
        { cat "$W/initdb.log" >&2; die "initdb failed"; }
    (cd / && runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGD/data" -l "$PGD/log" -w -o "-k $PGD/sock -c listen_addresses='' -c max_connections=50" start >/dev/null) ||
        { cat "$PGD/log" >&2; die "PostgreSQL did not start"; }
    pgq() { PGPASSWORD=$PGPW psql -X -q -At -v ON_ERROR_STOP=1 -h "$PGD/sock" -U stemcell -d "${2:-postgres}" -c "$1"; }
    NS_PKS=$P-pk-s NS_PKC=$P-pk-c NS_PSS=$P-ps-s NS_PSC=$P-ps-c
    for pair in "$NS_PKS $NS_PKC" "$NS_PSS $NS_PSC"; do
        read -r srv_ns cli_ns <<<"$pair"
        netns "$srv_ns"; netns "$cli_ns"
        lab_link "$srv_ns" s0 198.18.0.1/16 "$cli_ns" c0 198.18.0.2/16 || die "veth"
    done
    PD=$W/dhcppg-sc
    LAB_IFACE=s0 LAB_TFTP_ROOT='' LAB_SUBNETS='    - subnet: 198.18.0.0/16
      pool: [198.18.1.0, 198.18.255.250]
      router: 198.18.0.1
      dns: [198.18.0.1]
      lease_time: 1h' write_config "$PD" authoritative
    "${LIB[@]}" inventory 10 "$PD/inventory.yaml" --prefix 52:54:03 || die "inventory"
    cp "$PGD/pw" "$PD/pg.password"
    printf 'store:\n  postgres:\n    url: "host=%s dbname=stemcell user=stemcell"\n    password_file: pg.password\n' "$PGD/sock" >>"$PD/stemcell.yaml"
    PK=$W/kea-pg
    mkdir -p "$PK"
    kea_config "$PK" '{ "type": "postgresql", "name": "kea", "user": "stemcell", "password": "'"$PGPW"'", "host": "'"$PGD"'/sock" }'
    # pg_fresh DB: an empty database DB (Kea's with its schema from kea-admin)
    pg_fresh() {
        { pgq "DROP DATABASE IF EXISTS $1 WITH (FORCE)" && pgq "CREATE DATABASE $1"; } || die "cannot make database $1"
        if [ "$1" = kea ]; then
            kea-admin db-init pgsql -u stemcell -p "$PGPW" -n kea -h "$PGD/sock" >"$PK/kea-admin.log" 2>&1 ||
                { cat "$PK/kea-admin.log" >&2; die "kea-admin db-init pgsql failed"; }
        fi
    }
    pg_start_server() { # kea|sc: sets SRV_PID, SNS, CNS
        if [ "$1" = kea ]; then
            SNS=$NS_PKS CNS=$NS_PKC
            pg_fresh kea
            rm -f "$PK"/*.pid
            KEA_PIDFILE_DIR=$PK KEA_LOCKFILE_DIR=$PK ip netns exec $SNS kea-dhcp4 -c "$PK/kea-dhcp4.json" >>"$PK/kea.out" 2>&1 &
            SRV_PID=$!
            wait_for 20 udp_bound $SNS 67 || { tail "$PK/kea.out" "$PK/kea.log" >&2; die "Kea (PostgreSQL) did not start"; }
        else
            SNS=$NS_PSS CNS=$NS_PSC
            pg_fresh stemcell
            rm -rf "$PD/state"
            start_stemcell $SNS "$PD"
            SRV_PID=$SC_PID
        fi
    }
    proc_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
    # The database's CPU: every process of the cluster (the postmaster's children included).
    db_ticks() {
        local t=0 p pm
        pm=$(head -1 "$PGD/data/postmaster.pid")
        for p in $pm $(pgrep -P "$pm"); do t=$((t + $(proc_ticks "$p"))); done
        echo $t
    }
    pg_run() { # kea|sc RATE: 0 if it kept up
        local srv=$1 rate=$2 out achieved drops ra sent acks t0 t1 d0 d1 us db ok=1
        pg_start_server "$srv"
        out=$W/perfdhcp-pg.$srv.$rate.out
        t0=$(proc_ticks "$SRV_PID") d0=$(db_ticks)
        inns "$CNS" timeout $((DHCP_PERIOD + 20)) perfdhcp -4 -r "$rate" -R 50000 -p "$DHCP_PERIOD" -l 198.18.0.2 198.18.0.1 >"$out" 2>&1
        t1=$(proc_ticks "$SRV_PID") d1=$(db_ticks)
        stop_pid "$SRV_PID"
        read -r achieved drops ra sent acks < <("${LIB[@]}" perfdhcp "$out")
        if $PY -c "import sys; a,d,r,rate=map(float,sys.argv[1:]); sys.exit(0 if d<1 and r<1 and a>=0.95*rate else 1)" "$achieved" "$drops" "$ra" "$rate"; then ok=0; fi
        us=$(calc "round(($t1 - $t0) * 1e6 / $(getconf CLK_TCK) / max(1, $acks), 1)")
        db=$(calc "round(($d1 - $d0) * 1e6 / $(getconf CLK_TCK) / max(1, $acks), 1)")
        if [ $ok = 0 ]; then sample "dhcppg.cpu.$srv.$rate" "$us"; sample "dhcppg.dbcpu.$srv.$rate" "$db"; fi
        log "  $srv @ $rate/s: sent $sent, achieved $achieved/s, drops $drops% / $ra%; CPU per DORA: server $us µs, database $db µs -> $([ $ok = 0 ] && echo kept up || echo fell behind)"
        return $ok
    }
    PG_LADDER=(200 400 600 800 1000 1500 2000 2500 3000 4000 5000 6000 8000 10000 12000 16000 20000)
    declare -A PBEST PPREV
    for round in $(seq "$DHCP_ROUNDS"); do
        order="kea sc"; ((round % 2)) || order="sc kea"
        for srv in $order; do
            i=0
            if [ -n "${PPREV[$srv]:-}" ]; then # later rounds start one step below the last result
                for j in "${!PG_LADDER[@]}"; do [ "${PG_LADDER[$j]}" = "${PPREV[$srv]}" ] && i=$((j > 0 ? j - 1 : 0)); done
            fi
            PBEST[$srv]=0
            while [ "$i" -lt ${#PG_LADDER[@]} ]; do
                if pg_run "$srv" "${PG_LADDER[$i]}"; then
                    PBEST[$srv]=${PG_LADDER[$i]}; i=$((i + 1))
                elif [ "${PBEST[$srv]}" = 0 ] && [ "$i" -gt 0 ]; then
                    i=$((i - 1)) # started too high this round: step down
                else
                    break
                fi
            done
            sample "dhcppg.$srv" "${PBEST[$srv]}"
            PPREV[$srv]=${PBEST[$srv]}
        done
        log "  round $round: Kea (PostgreSQL) ${PBEST[kea]}/s, stemcell (PostgreSQL) ${PBEST[sc]}/s"
    done
    pg_down
fi

# ==== 4. Boot storm ===========================================================================
if want storm; then
    STORM_MAX=0
    for n in $STORM_SIZES; do [ "$n" -gt "$STORM_MAX" ] && STORM_MAX=$n; done
    [ "$STORM_MAX" -le 8000 ] || die "STORM_SIZES: at most 8000 machines (the storm's subnet is a /19)"
    log "Boot storm: $STORM_SIZES machines (each size started within ${STORM_RAMP} s) through PXE DHCP, TFTP undionly.kpxe, iPXE DHCP, boot script, kernel + initrd"
    netns $NS_STS; netns $NS_STC
    lab_link $NS_STS s0 198.18.0.1/24 $NS_STC c0 198.18.0.2/24 || die "veth"
    # The machines' subnet is behind the generator, which is also their relays (198.18.32.1-4:
    # four sockets, machine i behind relay i mod 4, as four relays on one subnet would be).
    ip -n $NS_STC route add local 198.18.32.0/19 dev lo
    ip -n $NS_STS route add 198.18.32.0/19 via 198.18.0.2
    S=$W/storm
    LAB_IFACE=s0 LAB_TFTP_ROOT=/usr/lib/ipxe LAB_TFTP_MORE="${STORM_MAX_TRANSFERS:+  max_transfers: $STORM_MAX_TRANSFERS}" \
        LAB_SUBNETS='    - subnet: 198.18.0.0/24
      pool: [198.18.0.100, 198.18.0.199]
      router: 198.18.0.1
      lease_time: 1h
    - subnet: 198.18.32.0/19
      pool: [198.18.32.10, 198.18.63.250]
      router: 198.18.32.1
      dns: [198.18.0.1]
      lease_time: 1h' write_config "$S" authoritative
    head -c 10000000 /dev/urandom >"$S/stemcell/vmlinuz"
    head -c 1000000 /dev/urandom >"$S/stemcell/initrd.img"
    "${LIB[@]}" inventory "$STORM_MAX" "$S/inventory.yaml" --prefix 52:54:01 || die "inventory"
    for rep in $(seq "$REPS"); do
        for n in $STORM_SIZES; do
            rm -rf "$S/state"
            start_stemcell $NS_STS "$S"
            out=$W/storm.$n.$rep.json
            t0=$(awk '{print $14 + $15}' "/proc/$SC_PID/stat")
            inns $NS_STC timeout $((STORM_DEADLINE + 60)) "$STORM" --macs "$S/inventory.yaml.macs" -n "$n" \
                --server 198.18.0.1 --relay 198.18.32.1,198.18.32.2,198.18.32.3,198.18.32.4 --ramp "$STORM_RAMP" \
                --deadline "$STORM_DEADLINE" --tftp-file /usr/lib/ipxe/undionly.kpxe >"$out" 2>"$W/storm.$n.$rep.err" ||
                { cat "$W/storm.$n.$rep.err" >&2; die "the storm generator failed"; }
            t1=$(awk '{print $14 + $15}' "/proc/$SC_PID/stat")
            sample "storm.$n.server_rss_mb" "$(awk '/VmHWM/ {printf "%.0f", $2 / 1024}' "/proc/$SC_PID/status")"
            stop_pid $SC_PID
            sample "storm.$n.server_cpu" "$(calc "round(($t1 - $t0) / $(getconf CLK_TCK), 2)")"
            "${LIB[@]}" storm "$out" "$SAMPLES" >&2 || die "cannot read the storm's result $out"
            log "  storm of $n, run $rep done ($(grep -c ' WARN \| ERROR ' "$S/stemcell.log") warnings/errors in stemcell's log)"
        done
    done
fi

# ==== 5. Inventory of 100,000 machines ========================================================
if want inventory; then
    log "Inventory: $INV_MACHINES machines (reserved IPs, 2 roles, base.sh.j2): stemcell check, and serve start-up"
    netns $NS_INV
    ip -n $NS_INV link add d0 type veth peer name d1 || die "veth"
    ip -n $NS_INV addr add 198.18.0.1/15 dev d0 && ip -n $NS_INV link set d0 up && ip -n $NS_INV link set d1 up
    I=$W/inv
    LAB_IFACE=d0 LAB_TFTP_ROOT='' LAB_SUBNETS='    - subnet: 198.18.0.0/15
      pool: [198.19.255.0, 198.19.255.250]
      router: 198.18.0.1
      lease_time: 1h' write_config "$I" authoritative
    "${LIB[@]}" inventory "$INV_MACHINES" "$I/inventory.yaml" --ips 198.18.1.0 || die "inventory"
    sample inv.machines "$INV_MACHINES"
    log "  inventory.yaml: $(($(stat -c %s "$I/inventory.yaml") / 1024)) KiB"
    cat "$I/inventory.yaml" >/dev/null # in the page cache for every run alike
    for rep in $(seq "$CHEAP_REPS"); do
        /usr/bin/time -v "$BIN" check --config "$I/stemcell.yaml" >"$W/check.out" 2>"$W/check.time" || { cat "$W/check.out" "$W/check.time" >&2; die "stemcell check failed"; }
        el=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$W/check.time")
        secs=$($PY -c "import sys; p=sys.argv[1].split(':'); print(round(sum(float(x)*60**i for i,x in enumerate(reversed(p))),3))" "$el")
        rss=$(awk -F': ' '/Maximum resident set size/ {printf "%.1f", $2/1024}' "$W/check.time")
        sample inv.check.secs "$secs"; sample inv.check.rss_mb "$rss"
        rm -rf "$I/state"
        : >"$I/stemcell.log"
        s=$(now)
        lab_serve $NS_INV "$BIN" "$I" "$I/stemcell.log" || die "stemcell did not start with the big inventory"
        pid=$LAB_PID
        up=$("${LIB[@]}" logtime "$I/stemcell.log" "$LAB_READY")
        startup=$(calc "round($up - $s, 3)")
        sleep 0.5
        hwm=$(awk '/VmHWM/ {printf "%.1f", $2/1024}' /proc/$pid/status)
        stop_pid $pid
        sample inv.serve.secs "$startup"; sample inv.serve.rss_mb "$hwm"
        log "  check: $secs s, max RSS $rss MB; serve: \"$LAB_READY\" after $startup s, peak RSS $hwm MB"
    done
fi

# ==== report ====================================================================================
log "done in $((SECONDS - T0)) s"
ver() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || echo "not installed"; }
PNG=
if want storm; then # the storm's cost curve: machines vs p50 and p99, total and per phase
    "${LIB[@]}" stormdata "$SAMPLES" "$W/storm.dat" || die "storm data"
    PNG=$OUT_DIR/storm.png
    gnuplot >"$W/gnuplot.log" 2>&1 <<EOF || { cat "$W/gnuplot.log" >&2; die "gnuplot failed"; }
set terminal pngcairo size 1200,520 font ",10"
set output "$PNG"
set multiplot layout 1,2 title "stemcell boot storm: seconds per machine by storm size (medians of $REPS runs; machines start within $STORM_RAMP s)"
set logscale x
set xrange [$(calc "min(int(x) for x in '$STORM_SIZES'.split()) * 0.7"):$(calc "max(int(x) for x in '$STORM_SIZES'.split()) * 1.4")]
set xtics ($(for n in $STORM_SIZES; do printf '"%s" %s,' "$n" "$n"; done | sed 's/,$//'))
set xlabel "machines"
set ylabel "seconds"
set grid
set key top left
set yrange [0:*]
names = "total PXE-DHCP TFTP iPXE-DHCP script kernel+initrd"
set title "p50"
plot for [i=0:5] "$W/storm.dat" using 1:(column(2 + 2 * i)) with linespoints lw (i == 0 ? 3 : 1.5) pt 7 title word(names, i + 1)
set title "p99"
plot for [i=0:5] "$W/storm.dat" using 1:(column(3 + 2 * i)) with linespoints lw (i == 0 ? 3 : 1.5) pt 7 title word(names, i + 1)
unset multiplot
EOF
fi
{
    echo "# stemcell benchmarks"
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) at the end;"
    echo "stemcell $(git -C "$REPO" describe --tags --always --dirty 2>/dev/null || "$BIN" --version) (binary of $(date -u -r "$BIN" '+%Y-%m-%d %H:%M UTC')),"
    echo "tftp-hpa $(ver tftpd-hpa), nginx $(ver nginx), Kea and perfdhcp $(ver kea-dhcp4-server), PostgreSQL $(ver postgresql), atftp $(ver atftp), wrk $(ver wrk)."
    echo "Parts run: $ONLY. $CHEAP_REPS runs of TFTP and the inventory, $REPS of HTTP, DHCP and the storm; peer and stemcell alternate."
    echo
    "${LIB[@]}" report "$SAMPLES"
} >"$OUT_DIR/results.md"
cat "$OUT_DIR/results.md"
echo
echo "written to $OUT_DIR/results.md${PNG:+ and $PNG}"
# BENCHMARKS.md (the repo's reference numbers, so that every later change can be compared with
# them): the machine, the versions, the commands, the results and the storm's plot beside it
# (bench/storm.png). BENCHMARKS=path writes it elsewhere (its plot beside it), BENCHMARKS=none not at all.
MD=${BENCHMARKS:-$REPO/BENCHMARKS.md}
if [ "$MD" != none ]; then
    PNG_REL=bench/storm.png
    [ "$MD" = "$REPO/BENCHMARKS.md" ] || PNG_REL=$(basename "$MD" .md).storm.png
    [ -n "$PNG" ] && { mkdir -p "$(dirname "$MD")/$(dirname "$PNG_REL")"; cp "$PNG" "$(dirname "$MD")/$PNG_REL"; }
    {
        echo "# Benchmarks"
        echo
        echo "Written by \`bench/run.sh\` at the end of a run (bench/README.md says what each number means"
        echo "and how it is measured). Run it again and compare: \`git diff BENCHMARKS.md\`."
        echo
        echo "## The run"
        echo
        echo "- When: $(date -u '+%Y-%m-%d %H:%M UTC'), $((SECONDS - T0)) s; load average at the end $(cut -d' ' -f1-3 /proc/loadavg)"
        echo "- Command: \`$(for v in ONLY REPS CHEAP_REPS WRK_SECS DHCP_PERIOD DHCP_ROUNDS DHCP_GENERATORS STORM_SIZES STORM_RAMP INV_MACHINES; do printf '%s="%s" ' "$v" "${!v:-}"; done)bash bench/run.sh\`"
        echo "- Parts: $ONLY"
        echo "- Machine: $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo), $(nproc) cores (shared with other work),"
        echo "  $(awk '/^MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo) RAM, Linux $(uname -r), $(. /etc/os-release && echo "$PRETTY_NAME")"
        echo "- stemcell: $(git -C "$REPO" describe --tags --always --dirty 2>/dev/null) ($("$BIN" --version 2>/dev/null), release build)"
        echo "- Peers and tools (Debian packages): nginx $(ver nginx), Kea $(ver kea-dhcp4-server), perfdhcp $(ver kea-admin),"
        echo "  tftp-hpa $(ver tftpd-hpa), atftp $(ver atftp), wrk $(ver wrk), gnuplot $(ver gnuplot-nox); $(rustc --version 2>/dev/null)"
        echo
        echo "## Commands"
        echo
        want tftp && echo "- TFTP: \`atftp [--option \"blksize 1428\"] [--option \"windowsize 16\"] -g -r big.bin -l out.bin ADDR\` (50 MB), stemcell at 127.0.0.1, \`in.tftpd -L -s DIR -a 127.0.0.2:69\`"
        want http && echo "- HTTP: \`wrk -t2 -c4 -d${WRK_SECS}s URL\` (kernel: a 10 MB file; scripts: \`-s boot.lua\` picking one of 1,000 MACs), nginx at :8081 (sendfile, Debian's stock shape)"
        want dhcp && echo "- DHCP: $DHCP_GENERATORS × \`perfdhcp -4 -r RATE/$DHCP_GENERATORS -R 50000/$DHCP_GENERATORS -p $DHCP_PERIOD -b mac=02:0G:00:00:00:00 -l ADDR 198.18.0.1\` at once (each its own relay address and MAC range), the rate stepped up to the first step not kept up; Kea (memfile persist, one thread) and stemcell (authoritative, journal fdatasync'ed before each ACK)"
        want dhcppg && echo "- DHCP on PostgreSQL: \`perfdhcp -4 -r RATE -R 50000 -p $DHCP_PERIOD -l 198.18.0.2 198.18.0.1\` (one, as a relay) against Kea with \`\"lease-database\": { \"type\": \"postgresql\" }\` (schema by \`kea-admin db-init pgsql\`, one thread) and stemcell with \`store.postgres\`, one private PostgreSQL cluster (Unix socket, fsync and synchronous_commit on), a fresh database for every run"
        want storm && echo "- Storm: \`storm --macs MACS -n N --server 198.18.0.1 --relay 198.18.32.1,198.18.32.2,198.18.32.3,198.18.32.4 --ramp $STORM_RAMP --deadline $STORM_DEADLINE --tftp-file /usr/lib/ipxe/undionly.kpxe\` (bench/storm, release) for N in $STORM_SIZES"
        want inventory && echo "- Inventory: \`/usr/bin/time -v stemcell check\` and \`stemcell serve\` to \"stemcell ready\" with $INV_MACHINES machines"
        echo
        echo "## Results"
        echo
        sed -n '/^| benchmark/,$p' "$OUT_DIR/results.md"
        if [ -n "$PNG" ]; then
            echo
            echo "## Boot storm cost curve"
            echo
            echo "![seconds per machine by storm size, p50 and p99, total and per phase]($PNG_REL)"
        fi
    } >"$MD"
    echo "written to $MD"
fi
if grep -q '| FAIL |' "$OUT_DIR/results.md"; then exit 3; fi
