#!/usr/bin/env bash
# benches/check.sh - `check --remote --read-data` throughput against plain downloads of the same
# objects from a local S3 server (moto). COPIES copies of a ~200 MB real etcd snapshot are uploaded
# zstd + age as `snapshot` does (the offsite_upload example), then, interleaved per round:
#   talos-dr check  talos-dr check --remote --read-data: download, sha256 vs manifest, age -d,
#                   zstd -d, plain sha256 + trailer vs the verified snapshot; nothing on disk
#   aws cp          aws s3 cp s3://…/OBJECT - > /dev/null for each object (download only)
#   aws pipe        aws s3 cp - | age -d | zstd -d | sha256sum for each object (the same work
#                   with the standard tools)
# Throughput is packed MiB per wall second (the bytes that cross the network). Also prints the
# check's peak RSS (bounded memory for any size).
#
# Usage: benches/check.sh [SNAPSHOT]
#   SNAPSHOT  default /tmp/big.snapshot, made once when missing by the project's own maker
#             (needs etcd-server, etcd-client)
# Environment: ROUNDS (default 3), COPIES (default 3)
set -Eeuo pipefail
cd "$(dirname "$0")/.."

SNAP=${1:-/tmp/big.snapshot}
ROUNDS=${ROUNDS:-3}
COPIES=${COPIES:-3}
BIN=target/release/talos-dr
DRIVER=target/release/examples/offsite_upload

need() { command -v "$1" >/dev/null || { echo "$1 is required ($2)" >&2; exit 1; }; }
need age "apt-get install age"
need zstd "apt-get install zstd"
need bc "apt-get install bc"
command -v aws >/dev/null || python3 -m pip install -q awscli
python3 -c 'import moto.server' 2>/dev/null || python3 -m pip install -q 'moto[server]'
[[ -x /usr/bin/time ]] || apt-get install -y -qq time >/dev/null
if [[ ! -x $BIN || ! -x $DRIVER ]]; then
  cargo build --release --bin talos-dr --example offsite_upload >&2
fi
if [[ ! -s $SNAP ]]; then
  echo "making $SNAP (~200 MB) with a real etcd..." >&2
  cargo run --release --quiet --example make_etcd_snapshot -- "$SNAP" --keys 64000 --value-bytes 2048 >/dev/null
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
chmod 600 "$WORK/key.txt"
R=$(age-keygen -y "$WORK/key.txt")
for ((i = 1; i <= COPIES; i++)); do
  "$DRIVER" "$SNAP" s3://bench/td "$R" "$EP" >/dev/null
  sleep 1 # one object per second: names carry the time
done
mapfile -t OBJECTS < <(aws --endpoint-url "$EP" s3 ls s3://bench/td/ | awk '$4 ~ /\.age$/ {print $4}')
PACKED=$(aws --endpoint-url "$EP" s3 ls s3://bench/td/ | awk '$4 ~ /\.age$/ {s += $3} END {print s}')

PROFILE=$WORK/profile
mkdir -p "$PROFILE"
cat >"$PROFILE/profile.toml" <<TOML
name = "bench"
[[nodes]]
address = "10.0.0.11"
role = "controlplane"
[backup]
compress = true
recipients = ["$R"]
identity_file = "$WORK/key.txt"
[offsite]
url = "s3://bench/td"
endpoint = "$EP"
path_style = true
TOML

now() { date +%s.%N; }
timed() { local t0 t1; t0=$(now); "$@" >/dev/null 2>&1 || { echo "failed: $*" >&2; exit 1; }; t1=$(now); echo "$t1 - $t0" | bc -l; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

td_check() { "$BIN" --config-dir "$PROFILE" -q check --remote --read-data; }
aws_cp() { for o in "${OBJECTS[@]}"; do aws --endpoint-url "$EP" s3 cp "s3://bench/td/$o" - >/dev/null || return 1; done; }
aws_pipe() {
  for o in "${OBJECTS[@]}"; do
    aws --endpoint-url "$EP" s3 cp "s3://bench/td/$o" - | age -d -i "$WORK/key.txt" | zstd -d -q -c | sha256sum >/dev/null || return 1
  done
}

declare -a T C P
for ((r = 1; r <= ROUNDS; r++)); do
  T+=("$(timed td_check)")
  C+=("$(timed aws_cp)")
  P+=("$(timed aws_pipe)")
done
rss=$( { /usr/bin/time -f %M "$BIN" --config-dir "$PROFILE" -q check --remote --read-data >/dev/null; } 2>&1 | tail -1)
"$BIN" --config-dir "$PROFILE" -o json check --remote --read-data >"$WORK/check.json"
python3 - "$WORK/check.json" "${#OBJECTS[@]}" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
n = int(sys.argv[2])
assert d["damaged"] == [] and d["errors"] == [], d
read = [o for o in d["offsite"] if o["read"] and o["ok"]]
assert len(read) == n, d
PY

report() { # name, times...
  local name=$1; shift
  local m; m=$(printf '%s\n' "$@" | median)
  printf '%-16s median %7.3f s  %7.1f MiB/s   (runs: %s)\n' "$name" "$m" "$(echo "$PACKED / 1048576 / $m" | bc -l)" "$*"
}
printf 'snapshot: %s (%s bytes) x %d copies, zstd -3 + age → %s packed bytes in all; moto S3 on 127.0.0.1; %d rounds; %s CPUs\n' \
  "$SNAP" "$(stat -c %s "$SNAP")" "${#OBJECTS[@]}" "$PACKED" "$ROUNDS" "$(nproc)"
report "talos-dr check" "${T[@]}"
report "aws s3 cp" "${C[@]}"
report "aws|age|zstd" "${P[@]}"
mt=$(printf '%s\n' "${T[@]}" | median); mc=$(printf '%s\n' "${C[@]}" | median); mp=$(printf '%s\n' "${P[@]}" | median)
printf 'check / aws s3 cp = %.2f, check / aws|age|zstd = %.2f (time ratios, lower is better)\n' \
  "$(echo "$mt / $mc" | bc -l)" "$(echo "$mt / $mp" | bc -l)"
printf 'check peak RSS = %d KiB = %.1f MiB; every copy read and matched (check.json: no damage)\n' \
  "$rss" "$(echo "$rss / 1024" | bc -l)"
