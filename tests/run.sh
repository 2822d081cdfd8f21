#!/bin/bash
# The whole test suite: unit tests, the real binary driven by curl, real DHCP/TFTP clients in
# network namespaces, QEMU machines through real firmware, and the page in Chromium.
# Run as root on Debian 12: `bash tests/run.sh`.
#
# A test whose requirement is missing here (root, QEMU, OVMF, Chromium, a client tool) is
# skipped, recorded in <target>/skipped-tests.txt, and listed at the end, never counted as a
# pass; with CI=true it fails instead (tests/common/mod.rs: `skip`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-debian.sh
export PATH="$HOME/.cargo/bin:$PATH"
SKIPPED=${CARGO_TARGET_DIR:-target}/skipped-tests.txt
mkdir -p "$(dirname "$SKIPPED")"
: >"$SKIPPED"
report_skips() {
	if [ -s "$SKIPPED" ]; then
		echo
		echo "SKIPPED $(wc -l <"$SKIPPED") test(s), not run here:"
		sed 's/^/  skipped: /' "$SKIPPED"
	fi
}
trap report_skips EXIT
# Everything is built first; then the tests run in two phases. First every target whose tests
# need no QEMU machine, one binary after another (four tests at a time inside each). Then the
# binaries that boot QEMU machines (one vCPU each under TCG), side by side: they share the
# machine places of tests/common's `Slot` (file locks under <target>/qemu-slots, PXE_PARALLEL
# / DEB_PARALLEL, default 2), so both cores stay busy until the last machine is done instead
# of one binary's long scenario leaving a core idle while the next binary waits its turn.
QEMU_TESTS=(debian pxe_boot disk_rule)
cargo test --locked --all-targets --no-run
light=(--lib --bins --examples --benches)
for f in tests/*.rs; do
	t=$(basename "$f" .rs)
	[[ " ${QEMU_TESTS[*]} " == *" $t "* ]] || light+=(--test "$t")
done
cargo test --locked "${light[@]}" -- --test-threads 4 "$@"
LOGS=$(mktemp -d)
declare -A pid
for t in "${QEMU_TESTS[@]}"; do
	(
		start=$SECONDS
		rc=0
		cargo test --locked --test "$t" -- --test-threads 4 "$@" >"$LOGS/$t.log" 2>&1 || rc=$?
		echo "==== cargo test --test $t: exit $rc after $((SECONDS - start)) s (run beside the other QEMU binaries)" >>"$LOGS/$t.log"
		exit "$rc"
	) &
	pid[$t]=$!
done
failed=()
for t in "${QEMU_TESTS[@]}"; do
	wait "${pid[$t]}" || failed+=("$t")
	cat "$LOGS/$t.log"
done
rm -rf "$LOGS"
if [ "${#failed[@]}" -gt 0 ]; then
	echo "FAILED: the QEMU test binaries ${failed[*]}" >&2
	exit 1
fi
