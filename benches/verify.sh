#!/usr/bin/env bash
# benches/verify.sh - wall time of `talos-dr verify` vs `openssl dgst -sha256` and
# `etcdctl snapshot status` on a ~200 MB real etcd snapshot, plus verify's peak RSS.
#
# Usage: benches/verify.sh [SNAPSHOT]
#   SNAPSHOT    existing snapshot to use; default: make /tmp/big.snapshot (once) with
#               the project's own maker (cargo run --release --example make_etcd_snapshot --
#               /tmp/big.snapshot --keys 64000 --value-bytes 2048; needs etcd-server, etcd-client)
# Environment:
#   VERIFY_CMD  verifier command (default: target/release/talos-dr verify); before the CLI lands:
#               VERIFY_CMD=target/release/examples/verify_file benches/verify.sh
#   ROUNDS      rounds (default 5); the three commands run interleaved in every round
#
# Targets: verify <= 1.25x openssl, <= 1.5x etcdctl, peak RSS <= 64 MiB.
set -Eeuo pipefail
cd "$(dirname "$0")/.."

SNAP=${1:-/tmp/big.snapshot}
ROUNDS=${ROUNDS:-5}
read -r -a VERIFY <<<"${VERIFY_CMD:-target/release/talos-dr verify}"
MAKER=(cargo run --release --quiet --example make_etcd_snapshot --)

command -v /usr/bin/time >/dev/null || apt-get install -y time >/dev/null
[[ -x ${VERIFY[0]} ]] || { echo "verifier ${VERIFY[0]} not built (cargo build --release ...)" >&2; exit 1; }
if [[ ! -s $SNAP ]]; then
  echo "making $SNAP (~200 MB) with a real etcd..." >&2
  "${MAKER[@]}" "$SNAP" --keys 64000 --value-bytes 2048 >/dev/null
fi
export ETCDCTL_API=3

# Warm the page cache so all three read from memory.
cat "$SNAP" >/dev/null
"${VERIFY[@]}" "$SNAP" >/dev/null

now() { date +%s.%N; }
run_timed() { # prints wall seconds of "$@"
  local t0 t1
  t0=$(now); "$@" >/dev/null 2>&1 || { echo "failed: $*" >&2; exit 1; }; t1=$(now)
  echo "$t1 - $t0" | bc -l
}
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

declare -a V O E
for ((r = 1; r <= ROUNDS; r++)); do
  V+=("$(run_timed "${VERIFY[@]}" "$SNAP")")
  O+=("$(run_timed openssl dgst -sha256 "$SNAP")")
  E+=("$(run_timed etcdctl snapshot status "$SNAP")")
done
mv=$(printf '%s\n' "${V[@]}" | median)
mo=$(printf '%s\n' "${O[@]}" | median)
me=$(printf '%s\n' "${E[@]}" | median)
rss=$( { /usr/bin/time -f %M "${VERIFY[@]}" "$SNAP" >/dev/null; } 2>&1 | tail -1)

printf 'snapshot: %s (%s bytes), %d rounds\n' "$SNAP" "$(stat -c %s "$SNAP")" "$ROUNDS"
printf '%-28s median %.3f s   (runs: %s)\n' "verify (${VERIFY[*]##*/})" "$mv" "${V[*]}"
printf '%-28s median %.3f s   (runs: %s)\n' "openssl dgst -sha256" "$mo" "${O[*]}"
printf '%-28s median %.3f s   (runs: %s)\n' "etcdctl snapshot status" "$me" "${E[*]}"
printf 'verify / openssl = %.2f (target <= 1.25)\n' "$(echo "$mv / $mo" | bc -l)"
printf 'verify / etcdctl = %.2f (target <= 1.50)\n' "$(echo "$mv / $me" | bc -l)"
printf 'verify peak RSS  = %d KiB = %.1f MiB (target <= 64 MiB)\n' "$rss" "$(echo "$rss / 1024" | bc -l)"
