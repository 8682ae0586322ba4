#!/usr/bin/env bash
# benches/offsite.sh - off-site upload of a ~200 MB real etcd snapshot to a local S3 server
# (moto), compressed with zstd and encrypted with age:
#   talos-dr      file → zstd → age → multipart upload, one streaming pass (the code `snapshot` runs)
#   cli pipe      zstd -3 | age -r | aws s3 cp - (the standard tools, streaming)
#   cli files     zstd -3 -o; age -o; aws s3 cp (talos-backup's order: files, then upload)
#   plain upload  aws s3 cp of the uncompressed, unencrypted snapshot
# All in one run, interleaved per round; throughput is snapshot MiB per wall second. Also prints
# talos-dr's peak RSS (constant memory) and checks its object with `age -d | zstd -d | cmp`.
#
# Usage: benches/offsite.sh [SNAPSHOT]
#   SNAPSHOT  default /tmp/big.snapshot, made once when missing by the project's own maker
#             (cargo run --release --example make_etcd_snapshot -- SNAPSHOT --keys 64000
#             --value-bytes 2048; needs etcd-server, etcd-client)
# Environment: ROUNDS (default 3)
set -Eeuo pipefail
cd "$(dirname "$0")/.."

SNAP=${1:-/tmp/big.snapshot}
ROUNDS=${ROUNDS:-3}
MAKER=(cargo run --release --quiet --example make_etcd_snapshot --)
DRIVER=target/release/examples/offsite_upload

need() { command -v "$1" >/dev/null || { echo "$1 is required ($2)" >&2; exit 1; }; }
need age "apt-get install age"
need zstd "apt-get install zstd"
need bc "apt-get install bc"
command -v aws >/dev/null || python3 -m pip install -q awscli
python3 -c 'import moto.server' 2>/dev/null || python3 -m pip install -q 'moto[server]'
[[ -x /usr/bin/time ]] || apt-get install -y -qq time >/dev/null
if [[ ! -x $DRIVER ]]; then
  cargo build --release --example offsite_upload >&2
fi
if [[ ! -s $SNAP ]]; then
  echo "making $SNAP (~200 MB) with a real etcd..." >&2
  "${MAKER[@]}" "$SNAP" --keys 64000 --value-bytes 2048 >/dev/null
fi

WORK=$(mktemp -d)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 -m moto.server -H 127.0.0.1 -p "$PORT" >"$WORK/moto.log" 2>&1 &
MOTO=$!
trap 'kill $MOTO 2>/dev/null; rm -rf "$WORK"' EXIT
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1 AWS_REGION=us-east-1
EP=http://127.0.0.1:$PORT
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$PORT") 2>/dev/null && break; sleep 0.2; done
aws --endpoint-url "$EP" s3 mb s3://bench >/dev/null

age-keygen -o "$WORK/key.txt" 2>/dev/null
R=$(age-keygen -y "$WORK/key.txt")
SIZE=$(stat -c %s "$SNAP")
cat "$SNAP" >/dev/null # warm the page cache

now() { date +%s.%N; }
timed() { local t0 t1; t0=$(now); "$@" >/dev/null 2>&1 || { echo "failed: $*" >&2; exit 1; }; t1=$(now); echo "$t1 - $t0" | bc -l; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
clear_bucket() { aws --endpoint-url "$EP" s3 rm --recursive s3://bench >/dev/null; }

talos_dr() { "$DRIVER" "$SNAP" s3://bench/td "$R" "$EP"; }
cli_pipe() { zstd -3 -q -c "$SNAP" | age -r "$R" | aws --endpoint-url "$EP" s3 cp - s3://bench/pipe/x.snapshot.zst.age; }
cli_files() {
  zstd -3 -q -f -o "$WORK/x.snapshot.zst" "$SNAP" &&
    age -r "$R" -o "$WORK/x.snapshot.zst.age" "$WORK/x.snapshot.zst" &&
    aws --endpoint-url "$EP" s3 cp "$WORK/x.snapshot.zst.age" s3://bench/files/x.snapshot.zst.age &&
    rm -f "$WORK/x.snapshot.zst" "$WORK/x.snapshot.zst.age"
}
plain() { aws --endpoint-url "$EP" s3 cp "$SNAP" s3://bench/plain/x.snapshot; }

declare -a T P F U
for ((r = 1; r <= ROUNDS; r++)); do
  T+=("$(timed talos_dr)"); clear_bucket
  P+=("$(timed cli_pipe)"); clear_bucket
  F+=("$(timed cli_files)"); clear_bucket
  U+=("$(timed plain)"); clear_bucket
done

# Correctness and memory, once: the object opens with the standard tools; peak RSS.
rss=$( { /usr/bin/time -f %M "$DRIVER" "$SNAP" s3://bench/td "$R" "$EP" >"$WORK/up.txt"; } 2>&1 | tail -1)
url=$(awk '{print $3}' "$WORK/up.txt")
packed=$(awk '{print $2}' "$WORK/up.txt")
aws --endpoint-url "$EP" s3 cp "$url" - | age -d -i "$WORK/key.txt" | zstd -d -q -c | cmp - "$SNAP"

report() { # name, times...
  local name=$1; shift
  local m; m=$(printf '%s\n' "$@" | median)
  printf '%-14s median %7.3f s  %7.1f MiB/s   (runs: %s)\n' "$name" "$m" "$(echo "$SIZE / 1048576 / $m" | bc -l)" "$*"
}
printf 'snapshot: %s (%s bytes), zstd -3 + age X25519 → %s bytes; moto S3 on 127.0.0.1; %d rounds; %s CPUs\n' \
  "$SNAP" "$SIZE" "$packed" "$ROUNDS" "$(nproc)"
report "talos-dr" "${T[@]}"
report "cli pipe" "${P[@]}"
report "cli files" "${F[@]}"
report "plain upload" "${U[@]}"
mt=$(printf '%s\n' "${T[@]}" | median); mp=$(printf '%s\n' "${P[@]}" | median); mu=$(printf '%s\n' "${U[@]}" | median)
printf 'talos-dr / cli pipe = %.2f, talos-dr / plain upload = %.2f (time ratios, lower is better)\n' \
  "$(echo "$mt / $mp" | bc -l)" "$(echo "$mt / $mu" | bc -l)"
printf 'talos-dr peak RSS = %d KiB = %.1f MiB; its object decrypts and decompresses to the same bytes (cmp ok)\n' \
  "$rss" "$(echo "$rss / 1024" | bc -l)"
