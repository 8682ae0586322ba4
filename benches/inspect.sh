#!/usr/bin/env bash
# benches/inspect.sh - `talos-dr inspect` vs `talos-dr verify` of the same ~200 MB real etcd
# snapshot (64k keys) in one run: median wall time and peak RSS of each.
#
# Usage: benches/inspect.sh [SNAPSHOT]
#   SNAPSHOT    existing snapshot; default: make /tmp/big.snapshot (once) with the project's own
#               maker (cargo run --release --example make_etcd_snapshot -- /tmp/big.snapshot
#               --keys 64000 --value-bytes 2048; needs etcd-server, etcd-client)
# Environment:
#   BIN         talos-dr binary (default: target/release/talos-dr; build it with
#               cargo build --release)
#   ROUNDS      rounds (default 5); verify and inspect run interleaved in every round
#
# Targets: inspect <= 1.3x verify's time and <= 2x verify's peak RSS.
set -Eeuo pipefail
cd "$(dirname "$0")/.."

SNAP=${1:-/tmp/big.snapshot}
ROUNDS=${ROUNDS:-5}
BIN=${BIN:-target/release/talos-dr}
MAKER=(cargo run --release --quiet --example make_etcd_snapshot --)

command -v /usr/bin/time >/dev/null || apt-get install -y time >/dev/null
[[ -x $BIN ]] || { echo "$BIN not built (cargo build --release)" >&2; exit 1; }
if [[ ! -s $SNAP ]]; then
  echo "making $SNAP (~200 MB) with a real etcd..." >&2
  "${MAKER[@]}" "$SNAP" --keys 64000 --value-bytes 2048 >/dev/null
fi

# Warm the page cache so both read from memory.
cat "$SNAP" >/dev/null
"$BIN" verify "$SNAP" >/dev/null

now() { date +%s.%N; }
run_timed() { # prints wall seconds of "$@"
  local t0 t1
  t0=$(now); "$@" >/dev/null 2>&1 || { echo "failed: $*" >&2; exit 1; }; t1=$(now)
  echo "$t1 - $t0" | bc -l
}
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
peak_rss() { # KiB, from /usr/bin/time -v
  { /usr/bin/time -v "$@" >/dev/null; } 2>&1 | awk -F: '/Maximum resident set size/ {gsub(/ /, "", $2); print $2}'
}

declare -a V I
for ((r = 1; r <= ROUNDS; r++)); do
  V+=("$(run_timed "$BIN" verify "$SNAP")")
  I+=("$(run_timed "$BIN" inspect "$SNAP")")
done
mv=$(printf '%s\n' "${V[@]}" | median)
mi=$(printf '%s\n' "${I[@]}" | median)
rv=$(peak_rss "$BIN" verify "$SNAP")
ri=$(peak_rss "$BIN" inspect "$SNAP")
objects=$("$BIN" -o json inspect "$SNAP" --largest 0 | awk -F': ' '/^  "objects"/ {gsub(/,/, "", $2); print $2}')

printf 'snapshot: %s (%s bytes, %s live keys), %d rounds, %s CPUs\n' "$SNAP" "$(stat -c %s "$SNAP")" "$objects" "$ROUNDS" "$(nproc)"
printf '%-10s median %.3f s   peak RSS %6d KiB   (runs: %s)\n' verify "$mv" "$rv" "${V[*]}"
printf '%-10s median %.3f s   peak RSS %6d KiB   (runs: %s)\n' inspect "$mi" "$ri" "${I[*]}"
printf 'inspect / verify: time %.2f (target <= 1.30), peak RSS %.2f (target <= 2.00)\n' \
  "$(echo "$mi / $mv" | bc -l)" "$(echo "$ri / $rv" | bc -l)"
