#!/usr/bin/env bash
# Issue 4, acceptance 7: how long a snapshot backup keeps the server in backup mode.
#
# Measures the time between pg_backup_start returning and pg_backup_stop being called
# (`backup_window_seconds` in `pgkeep backup --json`) for a ~1 GB database (pgbench scale 70)
# whose PGDATA and pg_wal are two subvolumes of a loop-mounted btrfs, and prints one line.
# A benchmark, not a test: nothing fails on a slow machine.
#
#   cargo build --release -p pgkeep && sudo bash bench/snapshot_window.sh
#
# Needs root (loop mount), btrfs-progs, PostgreSQL and the `postgres` OS user
# (scripts/setup.sh installs them). Environment: SCALE (default 70), RUNS (default 3),
# PGKEEP (default target/release/pgkeep, else $CARGO_TARGET_DIR/release/pgkeep).
set -euo pipefail
cd "$(dirname "$0")/.."
SCALE=${SCALE:-70}
RUNS=${RUNS:-3}
PGKEEP=${PGKEEP:-target/release/pgkeep}
[ -x "$PGKEEP" ] || PGKEEP="${CARGO_TARGET_DIR:-target}/release/pgkeep"
[ -x "$PGKEEP" ] || { echo "snapshot_window: build pgkeep first (cargo build --release -p pgkeep) or set PGKEEP" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "snapshot_window: needs root (loop-mounted btrfs)" >&2; exit 2; }
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
PORT=$(( 20000 + RANDOM % 20000 ))

W=$(mktemp -d /tmp/pgkeep-bench-XXXXXX)
chmod 755 "$W"
as_pg() { su postgres -s /bin/bash -c "$*"; }
cleanup() {
    as_pg "$PGBIN/pg_ctl -D $W/fs/data/pgdata -m immediate stop" >/dev/null 2>&1 || true
    umount "$W/fs" 2>/dev/null || umount -l "$W/fs" 2>/dev/null || true
    rm -rf "$W"
}
trap cleanup EXIT

truncate -s 8G "$W/fs.img"
mkfs.btrfs -q "$W/fs.img" >/dev/null 2>&1
mkdir "$W/fs" "$W/sock" "$W/repo"
mount -o loop "$W/fs.img" "$W/fs"
btrfs subvolume create "$W/fs/data" >/dev/null
btrfs subvolume create "$W/fs/wal" >/dev/null
chown postgres: "$W/fs/data" "$W/fs/wal" "$W/sock" "$W/repo"
chmod 700 "$W/fs/data" "$W/fs/wal"
install -m 755 "$PGKEEP" "$W/pgkeep"

as_pg "$PGBIN/initdb -D $W/fs/data/pgdata -X $W/fs/wal/pg_wal -U postgres --auth=trust --data-checksums" >/dev/null
cat >> "$W/fs/data/pgdata/postgresql.conf" <<EOF
port = $PORT
listen_addresses = ''
unix_socket_directories = '$W/sock'
wal_level = replica
archive_mode = on
archive_command = '"$W/pgkeep" --repo "$W/repo" archive-push "%p"'
shared_buffers = 256MB
max_wal_size = 4GB
EOF
as_pg "$PGBIN/pg_ctl -D $W/fs/data/pgdata -l $W/sock/postgres.log -w start" >/dev/null
PG="host=$W/sock port=$PORT user=postgres dbname=postgres"
"$W/pgkeep" --repo "$W/repo" --pg "$PG" --pgdata "$W/fs/data/pgdata" init >/dev/null
"$PGBIN/pgbench" -h "$W/sock" -p "$PORT" -U postgres -i -s "$SCALE" -q postgres >/dev/null 2>&1
SIZE=$("$PGBIN/psql" -h "$W/sock" -p "$PORT" -U postgres -Atc "SELECT pg_size_pretty(pg_database_size('postgres'))" postgres)
cat > "$W/pgkeep.toml" <<EOF
[[volume]]
name = "data"
driver = "btrfs"
path = "$W/fs/data"

[[volume]]
name = "wal"
driver = "btrfs"
path = "$W/fs/wal"
EOF

windows=()
spreads=()
for _ in $(seq "$RUNS"); do
    out=$("$W/pgkeep" --repo "$W/repo" --pg "$PG" --pgdata "$W/fs/data/pgdata" --config "$W/pgkeep.toml" backup --json)
    windows+=("$(printf '%s' "$out" | python3 -c 'import json,sys; print("%.3f" % json.load(sys.stdin)["backup_window_seconds"])')")
    spreads+=("$(printf '%s' "$out" | python3 -c 'import json,sys; print("%.3f" % json.load(sys.stdin)["snapshot"]["snapshot_spread_seconds"])')")
done
best=$(printf '%s\n' "${windows[@]}" | sort -n | head -1)
worst=$(printf '%s\n' "${windows[@]}" | sort -n | tail -1)
echo "snapshot_window: btrfs, 2 subvolumes (PGDATA, pg_wal), database $SIZE (pgbench scale $SCALE): pg_backup_start..pg_backup_stop window best ${best}s, worst ${worst}s over $RUNS runs (${windows[*]}); snapshot spread ${spreads[*]} s"
