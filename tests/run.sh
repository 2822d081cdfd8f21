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
cargo test --locked --all-targets -- --test-threads 4 "$@"
