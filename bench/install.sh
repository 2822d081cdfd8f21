#!/bin/bash
# shellcheck disable=SC2317 # functions run through traps
# stemcell's install benchmarks (the real-OS issue's "Performance"), in one run, on QEMU
# machines through real firmware (TCG: no KVM here), as root on Debian 12:
#
#   bash bench/install.sh           # about 45 minutes on 2 cores
#   ONLY="phases stream fleet" REPS=3 FLEET=10 bash bench/install.sh
#
#   phases  a SeaBIOS machine and an OVMF machine powered on at the same moment, side by
#           side, each from power-on to `configured` (Debian 12 installed from the lab's
#           image, booted, its role applied by Puppet); each phase's seconds: firmware, stem
#           cell, image stream, first boot, Puppet (stemcell's own phase timestamps).
#   stream  is the network the image stream's bottleneck? One machine runs bench/stream.sh.j2
#           in the stem cell: the install's own pipeline (kickstarts/snippets/image.sh.j2)
#           REPS times from stemcell over HTTP and REPS times from a copy in the machine's
#           RAM, alternating, each onto a fresh ext4. Target: the network's rate >= 0.8x the
#           local copy's (median of the paired ratios).
#   fleet   FLEET machines (SeaBIOS) powered on at once, each to `installed`: power-on to
#           installed and the image stream per machine (median, max), against the lone
#           SeaBIOS machine of `phases`; stemcell's CPU time and the image bytes it sent.
#
# Prints a Markdown table, also written to target/bench/install.md, then every sample.
# Exit status 3 if the stream target is missed, 1 if a machine failed.
#
# Everything runs in one network namespace made here (scbi<PID>, 198.18.0.0/24 on a
# bridge), removed on exit, failure and INT/TERM/HUP, with every QEMU machine in it. KEEP=1
# keeps the work folder (consoles, server log). Knobs: ONLY, REPS (3), FLEET (10), MEM (MiB
# per machine in phases and stream: 2048), FLEET_MEM (1280), NO_BUILD=1 with STEMCELL=PATH
# (measure a given binary), CARGO_TARGET_DIR.
set -uo pipefail
export PATH="$PATH:/usr/sbin:/sbin:$HOME/.cargo/bin"
export LC_ALL=C
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY no_proxy NO_PROXY
BENCH=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$BENCH/.." && pwd)
# shellcheck source=../lab/lib.sh
. "$ROOT/lab/lib.sh"
ONLY=${ONLY:-"phases stream fleet"}
REPS=${REPS:-3}
FLEET=${FLEET:-10}
MEM=${MEM:-2048}
FLEET_MEM=${FLEET_MEM:-1280}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
OUT_DIR=$TARGET/bench
NS=scbi$$
W=$(mktemp -d "/tmp/scbi$$.XXXXXX")
chmod 755 "$W"
D=$W/site
SAMPLES=$W/samples.txt
ROWS=$W/rows.md
: >"$SAMPLES"
: >"$ROWS"
T0=$SECONDS
FAILED=0 MISSED=0

cleanup() {
	trap '' PIPE INT TERM HUP
	lab_cleanup
	if [ "${KEEP:-}" = 1 ]; then echo "work folder kept: $W" >&2; else rm -rf "$W"; fi
}
trap cleanup EXIT
trap 'echo "bench: interrupted" >&2; exit 130' INT TERM HUP
log() { printf '[%4ds] %s\n' $((SECONDS - T0)) "$*" >&2; }
die() {
	log "ERROR: $1"
	[ -n "${2:-}" ] && [ -f "$2" ] && tail -n 30 "$2" | tr -d '\r' | sed 's/^/    | /' >&2
	exit 1
}
want() { [[ " $ONLY " == *" $1 "* ]]; }
sample() { echo "$*" >>"$SAMPLES"; }
row() { printf '| %s | %s | %s | %s | %s |\n' "$@" >>"$ROWS"; }
# median of the numbers on stdin, one per line ("?" when there are none)
median() { sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) print "?"; else if (NR % 2) print a[(NR + 1) / 2]; else printf "%.2f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
maximum() { sort -g | tail -n 1; }
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

[ "$(id -u)" = 0 ] || die "run as root (network namespaces, tap devices, mmdebstrap)"
for t in qemu-system-x86_64 mmdebstrap jq curl; do command -v $t >/dev/null || die "no $t: run scripts/setup-debian.sh"; done
[ -r /usr/share/ovmf/OVMF.fd ] || die "no /usr/share/ovmf/OVMF.fd (Debian's ovmf)"

# ---- stemcell, the stem cell and the OS image (the demo's caches) ---------------------------
if [ "${NO_BUILD:-}" = 1 ]; then
	BIN=${STEMCELL:?NO_BUILD=1 needs STEMCELL=path}
else
	log "cargo build --release"
	(cd "$ROOT" && cargo build --release --locked -q) || die "cargo build failed"
	BIN=$TARGET/release/stemcell
fi
"$BIN" image build --out "$TARGET/stemcell" --cache "$TARGET/stemcell-cache" >"$W/image.txt" 2>&1 ||
	die "stemcell image build failed" "$W/image.txt"
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1735689600} \
	"$BIN" os build debian-12 --config "$ROOT/examples/lab/stemcell.yaml" --out "$TARGET/os-images" >"$W/os.txt" 2>&1 ||
	die "stemcell os build failed" "$W/os.txt"
CUR=$TARGET/os-images/debian-12/current.json
SIZE=$(jq -r .size "$CUR")
log "OS image: $(jq -r .sha256 "$CUR" | cut -c1-16)…, $SIZE bytes"

# ---- the site: the lab's OS and Puppet code, the install and the bench templates ------------
LAB_HTTP_URL=$LAB_URL lab_config "$D" authoritative "$TARGET/stemcell"
cp "$ROOT/kickstarts/debian.sh.j2" "$BENCH/stream.sh.j2" "$D/kickstarts/"
cp -r "$ROOT/kickstarts/snippets" "$D/kickstarts/"
mkdir -p "$D/os"
cp "$ROOT/examples/lab/os/debian-12.yaml" "$D/os/"
cp -r "$ROOT/examples/lab/puppet" "$D/puppet"
printf 'os: os\nimages: %s\npuppet: puppet\n' "$TARGET/os-images" >>"$D/stemcell.yaml"
MAC_BIOS=52:54:00:be:00:01 MAC_UEFI=52:54:00:be:00:02 MAC_STREAM=52:54:00:be:00:03
fleet_mac() { printf '52:54:00:be:01:%02x' "$1"; }
{
	cat <<EOF
defaults:
  unknown: ignore
roles:
  web:
    template: debian.sh.j2
    os: debian-12
    vars: { console: "ttyS0,115200", disk: /dev/vda }
  stream:
    template: stream.sh.j2
    os: debian-12
    vars: { disk: /dev/vda, reps: "$REPS" }
machines:
  "$MAC_BIOS": { hostname: bench-bios, role: web }
  "$MAC_UEFI": { hostname: bench-uefi, role: web }
  "$MAC_STREAM": { hostname: bench-stream, role: stream }
EOF
	for i in $(seq "$FLEET"); do printf '  "%s": { hostname: fleet%02d, role: web }\n' "$(fleet_mac "$i")" "$i"; done
} >"$D/inventory.yaml"
lab_check "$BIN" "$D" || die "stemcell check failed" "$D/check.txt"
{ lab_netns "$NS" && lab_bridge "$NS"; } || die "cannot make namespace $NS"
for i in $(seq 0 $((FLEET + 2))); do lab_tap "$NS" "tap$i" || die "cannot make tap$i"; done
lab_serve "$NS" "$BIN" "$D" || die "stemcell did not start" "$D/server.log"
SERVER=$LAB_PID
log "stemcell serves in $NS (pid $SERVER)"

jqm() { lab_api "$NS" "/api/v1/machines/$1" | jq -r "$2" 2>/dev/null; }
# power_on NAME FIRMWARE TAP MAC MEM: sets LAB_PID; the console is $W/NAME.console
power_on() {
	truncate -s 4G "$W/$1.img"
	LAB_DISK_BUS=virtio lab_qemu "$NS" "$2" "$3" "$4" "$W/$1.img" "$W/$1.console" -m "$5" -smp 1 ||
		die "QEMU did not start for $1"
}
# until_state SECONDS PID MAC STATE...: waits for one of STATEs (or failed); echoes the state
until_state() {
	local end=$((SECONDS + $1)) pid=$2 mac=$3 s
	shift 3
	while :; do
		s=$(lab_state "$NS" "$mac")
		for want in "$@" failed config-failed; do [ "$s" = "$want" ] && { echo "$s"; return 0; }; done
		if ! kill -0 "$pid" 2>/dev/null || [ $SECONDS -ge "$end" ]; then
			echo "${s:-none}"
			return 1
		fi
		sleep 2
	done
}
# sec A B: (B - A) / 1000 with one decimal, "?" unless both are set
sec() { awk -v a="$1" -v b="$2" 'BEGIN { if (a > 0 && b > 0) printf "%.1f", (b - a) / 1000; else printf "?" }'; }
# console_stream CONSOLE: the install's own image-stream seconds
console_stream() { grep -a '^install: image ok' "$1" | tr -d '\r' | sed -n 's/.* in \([0-9.]*\) s.*/\1/p' | tail -n 1; }

# ---- phases: SeaBIOS and OVMF side by side --------------------------------------------------
BIOS_INSTALLED=
if want phases; then
	log "phases: bench-bios (SeaBIOS) and bench-uefi (OVMF) powered on together, each to configured"
	declare -A ON_MS PID
	for m in bios uefi; do
		case $m in bios) fw=bios tap=tap0 mac=$MAC_BIOS ;; *) fw=uefi-ipxe tap=tap1 mac=$MAC_UEFI ;; esac
		ON_MS[$m]=$(date +%s%3N)
		power_on "bench-$m" "$fw" "$tap" "$mac" "$MEM"
		PID[$m]=$LAB_PID
	done
	for m in bios uefi; do
		case $m in bios) mac=$MAC_BIOS ;; *) mac=$MAC_UEFI ;; esac
		s=$(until_state 2700 "${PID[$m]}" "$mac" configured)
		if [ "$s" != configured ]; then
			FAILED=1
			log "bench-$m ended $s, not configured"
			tail -n 20 "$W/bench-$m.console" | tr -d '\r' | sed 's/^/    | /' >&2
			continue
		fi
		read -r nb im in bo co < <(jqm "$mac" '.phases | [.netboot, .image, .installed, .booted, .configured] | map(. // 0) | @tsv')
		on=${ON_MS[$m]}
		stream=$(console_stream "$W/bench-$m.console")
		puppet=$(jqm "$mac" '.last_run.millis / 1000')
		for p in "firmware $on $nb" "stem_cell $nb $im" "image_stream $im $in" "first_boot $in $bo" "puppet $bo $co" "total $on $co"; do
			read -r name a b <<<"$p"
			sample "phase $m $name $(sec "$a" "$b")"
		done
		sample "phase $m install_image_pipeline ${stream:-?}"
		sample "phase $m puppet_own_run $puppet"
		[ $m = bios ] && BIOS_INSTALLED=$(sec "$on" "$in") BIOS_STREAM=${stream:-?}
	done
	for m in bios uefi; do lab_stop "${PID[$m]}"; done
	for p in firmware stem_cell image_stream first_boot puppet total; do
		b=$(awk -v p="$p" '$1 == "phase" && $2 == "bios" && $3 == p { print $4 }' "$SAMPLES")
		u=$(awk -v p="$p" '$1 == "phase" && $2 == "uefi" && $3 == p { print $4 }' "$SAMPLES")
		row "power-on to configured: $p (s)" "${b:-?}" "${u:-?}" "SeaBIOS \\| OVMF, powered on together" "(reported)"
	done
fi

# ---- stream: the install's pipeline from the network and from RAM ---------------------------
if want stream; then
	log "stream: bench-stream, the image pipeline $REPS times from the network and $REPS times from RAM"
	power_on bench-stream bios "tap2" "$MAC_STREAM" $((MEM + 512))
	s=$(until_state 2700 "$LAB_PID" "$MAC_STREAM" installed)
	lab_stop "$LAB_PID"
	grep -a '^BENCH ' "$W/bench-stream.console" | tr -d '\r' >"$W/stream.txt"
	if [ "$s" != installed ] || [ "$(grep -c '^BENCH stream' "$W/stream.txt")" != $((2 * REPS)) ]; then
		FAILED=1
		log "bench-stream ended $s with $(grep -c '^BENCH stream' "$W/stream.txt") of $((2 * REPS)) runs"
		tail -n 20 "$W/bench-stream.console" | tr -d '\r' | sed 's/^/    | /' >&2
	else
		sed 's/^BENCH //' "$W/stream.txt" >>"$SAMPLES"
		rate() { awk -v k="$1" '$2 == "stream" && $3 == k { printf "%.1f\n", $6 / $5 / 1e6 }' "$W/stream.txt" | median; }
		net=$(rate network) loc=$(rate local)
		# paired: local seconds / network seconds of the same run number (rate ratio)
		ratio=$(awk '$2 == "stream" { if ($3 == "network") n[$4] = $5; else l[$4] = $5 } END { for (r in n) if (r in l) printf "%.3f\n", l[r] / n[r] }' "$W/stream.txt" | median)
		dl=$(awk '$2 == "download" { printf "%.1f\n", $5 / $4 / 1e6 }' "$W/stream.txt")
		ok=$(awk -v r="$ratio" 'BEGIN { print (r != "?" && r + 0 >= 0.8) ? "met" : "MISSED" }')
		[ "$ok" = met ] || MISSED=1
		row "image stream rate (MB/s of archive: fetch, sha256, zstd, tar)" "$net" "$loc" "network \| RAM copy; ratio $ratio" ">= 0.8x: $ok"
		row "image download alone (MB/s: wget to RAM, nothing unpacked)" "$dl" "" "what the network path alone carries" "(reported)"
	fi
fi

# ---- fleet: FLEET machines installing at once -----------------------------------------------
if want fleet; then
	log "fleet: $FLEET machines (SeaBIOS, $FLEET_MEM MiB each) powered on at once, each to installed"
	declare -A FPID FON
	c0=$(cpu_ticks "$SERVER")
	t0=$(date +%s%3N)
	for i in $(seq "$FLEET"); do
		FON[$i]=$(date +%s%3N)
		power_on "fleet$i" bios "tap$((i + 2))" "$(fleet_mac "$i")" "$FLEET_MEM"
		FPID[$i]=$LAB_PID
	done
	left=$FLEET end=$((SECONDS + 3600))
	declare -A FIN
	while [ "$left" -gt 0 ] && [ $SECONDS -lt $end ]; do
		for i in $(seq "$FLEET"); do
			[ -n "${FIN[$i]:-}" ] && continue
			s=$(lab_state "$NS" "$(fleet_mac "$i")")
			if [ "$s" = installed ] || [ "$s" = failed ] || ! kill -0 "${FPID[$i]}" 2>/dev/null; then
				FIN[$i]=${s:-none}
				lab_stop "${FPID[$i]}" # its next boot would be Debian: not what this measures
				left=$((left - 1))
			fi
		done
		sleep 2
	done
	t1=$(date +%s%3N)
	c1=$(cpu_ticks "$SERVER")
	ok=0
	for i in $(seq "$FLEET"); do
		mac=$(fleet_mac "$i")
		if [ "${FIN[$i]:-}" != installed ]; then
			FAILED=1
			log "fleet$i ended ${FIN[$i]:-still running after an hour}"
			continue
		fi
		ok=$((ok + 1))
		read -r im in < <(jqm "$mac" '.phases | [.image, .installed] | map(. // 0) | @tsv')
		sample "fleet $i installed $(sec "${FON[$i]}" "$in") image_stream $(console_stream "$W/fleet$i.console") image_phase $(sec "$im" "$in")"
	done
	col() { awk -v k="$1" '$1 == "fleet" { for (i = 3; i < NF; i += 2) if ($i == k) print $(i + 1) }' "$SAMPLES"; }
	row "fleet: machines installed" "$ok of $FLEET" "1 of 1" "$FLEET at once \| the lone SeaBIOS machine" "all"
	row "fleet: power-on to installed (s), median / max" "$(col installed | median) / $(col installed | maximum)" "${BIOS_INSTALLED:-?}" "$FLEET at once \| alone (with OVMF beside it)" "(reported)"
	row "fleet: image pipeline (s), median / max" "$(col image_stream | median) / $(col image_stream | maximum)" "${BIOS_STREAM:-?}" "$FLEET at once \| alone" "(reported)"
	hz=$(getconf CLK_TCK)
	row "fleet: stemcell CPU (s) / image bytes sent" "$(awk -v a="$c0" -v b="$c1" -v hz="$hz" 'BEGIN { printf "%.1f", (b - a) / hz }')" "$((ok * SIZE / 1000000)) MB" "over $(sec "$t0" "$t1") s of wall time" "(reported)"
fi

# ---- the table ------------------------------------------------------------------------------
mkdir -p "$OUT_DIR"
{
	echo "# stemcell install benchmarks ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, QEMU TCG)"
	echo
	echo "| benchmark | value | beside it | the two columns | target |"
	echo "|---|---|---|---|---|"
	cat "$ROWS"
	echo
	echo "Samples:"
	sed 's/^/    /' "$SAMPLES"
} | tee "$OUT_DIR/install.md"
log "done in $((SECONDS - T0)) s; table in $OUT_DIR/install.md"
[ "$FAILED" = 0 ] || exit 1
[ "$MISSED" = 0 ] || exit 3
exit 0
