#!/bin/bash
# The whole test suite: unit tests, the real binary driven by curl, and (as they land)
# real DHCP/TFTP clients in network namespaces and QEMU machines through real firmware.
# Run as root on Debian 12: `bash tests/run.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-debian.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo test --locked --all-targets -- --test-threads 4 "$@"
