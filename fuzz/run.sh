#!/bin/bash
# Build every cargo-fuzz target once and run each for SECONDS seconds, one after another:
#   bash fuzz/run.sh SECONDS [TARGET...]
# Each run starts from the committed corpus (fuzz/corpus/TARGET, where new inputs are
# added) and the seeds (fuzz/seeds/TARGET: real packets and names from the tests; for
# config_inventory the repo's real stemcell.yaml, inventory.yaml and OS spec). Every input
# is bounded by -timeout (seconds) and -rss_limit_mb. Exits non-zero if any target found
# something; the input is kept in fuzz/artifacts/TARGET/ and the command to replay it is
# printed.
#
# cargo-fuzz needs nightly compiler flags (-Zsanitizer=address, coverage instrumentation).
# The one toolchain here is stable, so the flags are allowed with RUSTC_BOOTSTRAP=1, which
# turns the stable compiler's unstable features on; nothing else is fetched.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

SECONDS_EACH=${1:?usage: fuzz/run.sh SECONDS [TARGET...]}
shift
ALL=(dhcp_decode_decide dhcp6_decode_decide tftp_packet path_jail config_inventory render_hostile_vars)
if (($#)); then TARGETS=("$@"); else TARGETS=("${ALL[@]}"); fi
# Seconds one input may take, and memory a run may hold, before it counts as a finding.
TIMEOUT=10
RSS_MB=1024

if ! cargo fuzz --version >/dev/null 2>&1; then
	echo "fuzz: installing cargo-fuzz"
	cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1

# Release with debug assertions and overflow checks, AddressSanitizer (cargo-fuzz's default).
cargo fuzz build

# config_inventory's seeds are the repo's own files, copied fresh so they never go stale.
cfg_seeds=fuzz/target/seeds/config_inventory
rm -rf "$cfg_seeds"
mkdir -p "$cfg_seeds"
for f in examples/lab/*.yaml examples/lab/os/*.yaml; do
	cp "$f" "$cfg_seeds/$(echo "$f" | tr / _)"
done

# The targets' scratch files (path_jail's directory tree) go to a folder of this run's own.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
export TMPDIR=$scratch

logs=fuzz/target/logs
mkdir -p "$logs"
failed=()
summary=()
for t in "${TARGETS[@]}"; do
	mkdir -p "fuzz/corpus/$t"
	seeds="fuzz/seeds/$t"
	[ "$t" = config_inventory ] && seeds=$cfg_seeds
	log="$logs/$t.log"
	echo "fuzz: $t for ${SECONDS_EACH}s (log: $log)"
	if cargo fuzz run "$t" "fuzz/corpus/$t" "$seeds" -- \
		-max_total_time="$SECONDS_EACH" -timeout="$TIMEOUT" -rss_limit_mb="$RSS_MB" \
		-print_final_stats=1 >"$log" 2>&1; then
		status=ok
	else
		status=FINDING
		failed+=("$t")
		tail -n 60 "$log"
		echo "fuzz: $t found something; replay it with:"
		echo "  RUSTC_BOOTSTRAP=1 cargo fuzz run $t fuzz/artifacts/$t/<file>"
		find "fuzz/artifacts/$t" -type f 2>/dev/null |
			sed 's/^/  artifact: /' || true
	fi
	runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
	rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
	took=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
	files=$(find "fuzz/corpus/$t" -type f | wc -l)
	bytes=$(du -sb "fuzz/corpus/$t" | cut -f1)
	summary+=("$(printf '%-20s %-8s runs=%-10s exec/s=%-7s time=%ss corpus=%s files, %s bytes' \
		"$t" "$status" "${runs:-?}" "${rate:-?}" "${took:-?}" "$files" "$bytes")")
done

echo
echo "fuzz: summary"
printf '  %s\n' "${summary[@]}"
if ((${#failed[@]})); then
	echo "fuzz: FINDINGS in ${failed[*]}" >&2
	exit 1
fi
echo "fuzz: no findings"
