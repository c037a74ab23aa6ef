#!/usr/bin/env bash
# Benchmark for issue 5 (acceptance 8), not a test: how long a restore drill (`pgkeep verify`)
# takes on a pgbench scale-50 backup, split per phase (restore, page-LSN scan, recovery,
# amcheck, verify_heapam, read-all, duplicate keys, stop, clean-up).
#
#   cargo build --release -p pgkeep
#   bash bench/verify-drill.sh                      # SCALE=50 JOBS=2 MEMORY=256
#   SCALE=10 PGKEEP=target/debug/pgkeep bash bench/verify-drill.sh
#
# Needs root or the postgres OS user (scripts/setup.sh), PostgreSQL server binaries and
# postgresql-contrib (amcheck). Everything lives in one temp directory, removed at the end.
set -euo pipefail

SCALE=${SCALE:-50}
JOBS=${JOBS:-2}
MEMORY=${MEMORY:-256}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PGKEEP_BIN=${PGKEEP:-${CARGO_TARGET_DIR:-$ROOT/target}/release/pgkeep}
[ -x "$PGKEEP_BIN" ] || { echo "no pgkeep binary at $PGKEEP_BIN: cargo build --release -p pgkeep (or set PGKEEP)" >&2; exit 2; }
BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -n "$BIN" ] || BIN=$(pg_config --bindir)

WORK=$(mktemp -d /tmp/pgkeep-bench-verify-XXXXXX)
chmod 755 "$WORK"
as_owner() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
cleanup() {
    as_owner "$BIN/pg_ctl" -D "$WORK/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

mkdir -p "$WORK/bin" "$WORK/scratch"
cp "$PGKEEP_BIN" "$WORK/bin/pgkeep"
chmod 755 "$WORK/bin/pgkeep" "$WORK/scratch"
[ "$(id -u)" -eq 0 ] && chown postgres "$WORK"
PORT=$((20000 + RANDOM % 20000))
as_owner "$BIN/initdb" -D "$WORK/data" -U postgres --auth=trust --data-checksums --no-instructions >/dev/null
cat >>"$WORK/data/postgresql.conf" <<CONF
listen_addresses = ''
unix_socket_directories = '$WORK'
port = $PORT
wal_level = replica
archive_mode = on
archive_command = '"$WORK/bin/pgkeep" --repo "$WORK/repo" archive-push "%p"'
shared_buffers = 256MB
max_wal_size = 4GB
CONF
as_owner "$BIN/pg_ctl" -D "$WORK/data" -l "$WORK/server.log" -w start >/dev/null
CONN="host=$WORK port=$PORT user=postgres dbname=postgres"
PGK=("$WORK/bin/pgkeep" --repo "$WORK/repo" --pg "$CONN")

echo "loading pgbench scale $SCALE ..." >&2
"$BIN/pgbench" -h "$WORK" -p "$PORT" -U postgres -i -s "$SCALE" -q postgres 2>/dev/null
SIZE=$("$BIN/psql" -h "$WORK" -p "$PORT" -U postgres -Atc "SELECT pg_size_pretty(pg_database_size('postgres'))" postgres)
"${PGK[@]}" --pgdata "$WORK/data" init >/dev/null
echo "backing up ..." >&2
"${PGK[@]}" --pgdata "$WORK/data" backup --quiet >/dev/null

echo "verifying (jobs $JOBS, memory ${MEMORY}MB) ..." >&2
START=$(date +%s.%N)
OUT=$(TMPDIR="$WORK/scratch" "${PGK[@]}" verify latest --jobs "$JOBS" --memory "$MEMORY" 2>/dev/null)
END=$(date +%s.%N)
echo "$OUT" | head -1
echo "$OUT" | grep '^phases:'
printf 'pgkeep verify of a pgbench scale-%s backup (database %s): %.1f s wall, %s CPU(s), jobs %s\n' \
    "$SCALE" "$SIZE" "$(awk -v a="$START" -v b="$END" 'BEGIN { print b - a }')" "$(nproc)" "$JOBS"
