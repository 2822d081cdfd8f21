#!/bin/bash
# The stemcell lab demo: a private network namespace with a bridge on 198.18.0.1/24,
# stemcell serving the example lab there, and one machine's life walked through over HTTP
# (boot script -> install script -> log -> done -> boots from disk -> re-arm).
# Everything it creates is removed on exit, Ctrl-C or failure. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-debian.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --locked

NS="stemcell-demo-$$"
STATE="$(mktemp -d)"
LOG="$STATE/stemcell.log"
cleanup() {
  [ -n "${SERVER_PID:-}" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null || true
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$STATE"
}
trap cleanup EXIT INT TERM

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "network namespace $NS with bridge br0 at 198.18.0.1/24"
ip netns add "$NS"
ip -n "$NS" link set lo up
ip -n "$NS" link add br0 type bridge
ip -n "$NS" addr add 198.18.0.1/24 dev br0
ip -n "$NS" link set br0 up

# The example config, with the state kept in a scratch folder for this run.
CONF="$STATE/stemcell.yaml"
sed -e "s#^state_dir: .*#state_dir: $STATE/state#" \
    -e "s#^inventory: .*#inventory: $PWD/examples/lab/inventory.yaml#" \
    -e "s#^kickstarts: .*#kickstarts: $PWD/kickstarts#" \
    -e "s#^admin_token_file: .*#admin_token_file: $PWD/examples/lab/admin.token#" \
    -e "s#^  kernel: .*#  kernel: $PWD/target/stemcell/vmlinuz#" \
    -e "s#^  initrd: .*#  initrd: $PWD/target/stemcell/initrd.img#" \
    examples/lab/stemcell.yaml > "$CONF"

step "stemcell check"
./target/release/stemcell check --config "$CONF"

step "stemcell serve (inside $NS)"
ip netns exec "$NS" ./target/release/stemcell serve --config "$CONF" 2>"$LOG" &
SERVER_PID=$!
for _ in $(seq 100); do grep -q "http listening" "$LOG" && break; sleep 0.1; done
grep "http listening" "$LOG"

IN() { ip netns exec "$NS" "$@"; }
URL=http://198.18.0.1:8080
MAC=52:54:00:12:34:56
TOKEN_HDR="Authorization: Bearer $(cat examples/lab/admin.token)"

step "web01 ($MAC) netboots: its iPXE boot script"
SCRIPT=$(IN curl -sf "$URL/boot/$MAC.ipxe")
echo "$SCRIPT"
TOKEN=$(echo "$SCRIPT" | tr ' ' '\n' | sed -n 's/^stemcell.token=//p')

step "the stem cell fetches its install script (with its token)"
IN curl -sf "$URL/install/$MAC?token=$TOKEN" | head -20
echo "..."
step "without the token it is refused"
IN curl -s -o /dev/null -w "HTTP %{http_code}\n" "$URL/install/$MAC"

step "the install streams its log and reports done"
printf 'partitioning /dev/vda\nwriting the system\n' | IN curl -sf --data-binary @- "$URL/install/$MAC/log?token=$TOKEN"
IN curl -sf -X POST "$URL/install/$MAC/done?token=$TOKEN"

step "its next netboot: boot from the local disk (no reinstall loop)"
IN curl -sf "$URL/boot/$MAC.ipxe"

step "the machine's history"
IN curl -sf "$URL/api/v1/machines/$MAC" | python3 -c '
import json, sys
m = json.load(sys.stdin)
print("%s %s role=%s state=%s" % (m["mac"], m["hostname"], m["role"], m["state"]))
for e in m["events"]:
    print("  %-8s %s" % (e["kind"], e["message"]))'

step "re-arm it (admin API): the next netboot reinstalls"
IN curl -sf -X POST -H "$TOKEN_HDR" "$URL/api/v1/machines/$MAC/reinstall" >/dev/null
IN curl -sf "$URL/boot/$MAC.ipxe" | grep -E "^(echo|kernel)" | cut -c1-120

step "done; cleaning up"
