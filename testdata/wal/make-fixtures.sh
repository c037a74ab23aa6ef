#!/usr/bin/env bash
# Regenerates the WAL fixtures in this directory from a throw-away PostgreSQL cluster.
# Usage: testdata/wal/make-fixtures.sh        (PGBIN overrides /usr/lib/postgresql/15/bin)
# Runs the servers as the `postgres` OS user when invoked as root (PostgreSQL refuses root).
# The output is not byte-for-byte reproducible (system identifier, timestamps, xids
# differ per run); README.md describes what each file contains and the tests read the
# facts they assert from the files themselves or from pg_waldump / pg_controldata.
set -euo pipefail

PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
OUT=$(cd "$(dirname "$0")" && pwd)
WORK=$(mktemp -d /tmp/pgkeep-wal-fixtures.XXXXXX)
PRIMARY=$WORK/primary
STANDBY=$WORK/standby
ARCHIVE=$WORK/archive
PORT1=${PORT1:-54711}
PORT2=${PORT2:-54712}

as_pg() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
cleanup() {
    as_pg "$PGBIN/pg_ctl" -D "$STANDBY" -m immediate stop >/dev/null 2>&1 || true
    as_pg "$PGBIN/pg_ctl" -D "$PRIMARY" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

mkdir -p "$ARCHIVE"
[ "$(id -u)" = 0 ] && chown -R postgres "$WORK"

psql1() { as_pg "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$WORK" -p "$PORT1" -U postgres -d postgres "$@"; }
psql2() { as_pg "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$WORK" -p "$PORT2" -U postgres -d postgres "$@"; }

as_pg "$PGBIN/initdb" -D "$PRIMARY" -U postgres -A trust --wal-segsize=1 --data-checksums >/dev/null

cat >>"$PRIMARY/postgresql.conf" <<CONF
listen_addresses = ''
unix_socket_directories = '$WORK'
port = $PORT1
wal_level = replica
archive_mode = on
archive_command = 'test ! -f $ARCHIVE/%f && cp %p $ARCHIVE/%f'
wal_compression = off
full_page_writes = on
max_prepared_transactions = 4
max_wal_size = 256MB
min_wal_size = 32MB
checkpoint_timeout = 1h
autovacuum = off
fsync = off
wal_keep_size = 64MB
CONF

as_pg "$PGBIN/pg_ctl" -D "$PRIMARY" -l "$WORK/primary.log" -w start >/dev/null

# Start the interesting WAL at a segment boundary: segments written by initdb are not archived.
psql1 -c "SELECT pg_switch_wal()" >/dev/null

psql1 -o /dev/null <<'SQL'
CREATE TABLE t (id int PRIMARY KEY, v text);
INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 200) g;
-- an abort
BEGIN; INSERT INTO t VALUES (10001, 'rolled back'); ROLLBACK;
-- a commit with subtransactions
BEGIN;
INSERT INTO t VALUES (10002, 'top');
SAVEPOINT a; INSERT INTO t VALUES (10003, 'sub a');
SAVEPOINT b; INSERT INTO t VALUES (10004, 'sub b'); RELEASE b;
RELEASE a;
COMMIT;
-- two-phase commit: one committed, one rolled back
BEGIN; INSERT INTO t VALUES (10005, '2pc commit'); PREPARE TRANSACTION 'fx-commit';
COMMIT PREPARED 'fx-commit';
BEGIN; INSERT INTO t VALUES (10006, '2pc abort'); PREPARE TRANSACTION 'fx-abort';
ROLLBACK PREPARED 'fx-abort';
SELECT pg_create_restore_point('pgkeep-fixture-rp');
CHECKPOINT;
-- first change to each page after the checkpoint: full-page images
UPDATE t SET v = v || ' updated' WHERE id % 7 = 0;
-- one 2.2 MB record: longer than a 1 MiB segment, so some segment holds no record start;
-- a non-repeating payload, so a misassembled copy cannot match pg_waldump's hex dump
SELECT pg_logical_emit_message(false, 'pgkeep-fixture', string_agg(md5(g::text), ''))
       IS NOT NULL FROM generate_series(1, 68750) g;
-- a 1.3 MB incompressible value stored out of line: many ~2 kB TOAST records
ALTER TABLE t ALTER COLUMN v SET STORAGE EXTERNAL;
INSERT INTO t SELECT 20000, string_agg(md5(g::text), '') FROM generate_series(1, 40000) g;
SQL
psql1 -c "SELECT pg_switch_wal()" >/dev/null

# A base backup: the server writes and archives a .backup history file.
as_pg "$PGBIN/pg_basebackup" -h "$WORK" -p "$PORT1" -U postgres -D "$STANDBY" -R -c fast -X stream >/dev/null
psql1 -c "INSERT INTO t VALUES (30001, 'after backup')"

cat >>"$STANDBY/postgresql.conf" <<CONF
port = $PORT2
CONF
as_pg "$PGBIN/pg_ctl" -D "$STANDBY" -l "$WORK/standby.log" -w start >/dev/null

# Stop the primary cleanly; its shutdown checkpoint streams to the standby.
TARGET=$(psql1 -Atc "SELECT pg_current_wal_insert_lsn()")
as_pg "$PGBIN/pg_ctl" -D "$PRIMARY" -m fast -w stop >/dev/null
for _ in $(seq 1 100); do
    if [ "$(psql2 -Atc "SELECT pg_last_wal_replay_lsn() > '$TARGET'::pg_lsn")" = t ]; then break; fi
    sleep 0.2
done

# Promotion: timeline 2, a .history file, the old timeline's last segment archived as .partial.
as_pg "$PGBIN/pg_ctl" -D "$STANDBY" -w promote >/dev/null
psql2 -o /dev/null <<'SQL'
INSERT INTO t VALUES (40001, 'timeline 2');
SELECT pg_create_restore_point('pgkeep-fixture-tli2');
SQL
psql2 -c "SELECT pg_switch_wal()" >/dev/null
psql2 -c "INSERT INTO t VALUES (40002, 'timeline 2 again')"
psql2 -c "CHECKPOINT"
psql2 -c "SELECT pg_switch_wal()" >/dev/null
# wait until the archiver is idle
for _ in $(seq 1 100); do
    if [ -z "$(ls "$STANDBY/pg_wal/archive_status/" | grep '\.ready$' || true)" ]; then break; fi
    sleep 0.2
done
as_pg "$PGBIN/pg_ctl" -D "$STANDBY" -m fast -w stop >/dev/null

# Replace the fixtures.
find "$OUT" -maxdepth 1 -type f \( -name '0000000*' -o -name 'pg_control' -o -name 'pg_controldata.txt' \) -delete
cp "$ARCHIVE"/* "$OUT"/
cp "$STANDBY/global/pg_control" "$OUT/pg_control"
LC_ALL=C "$PGBIN/pg_controldata" -D "$STANDBY" >"$OUT/pg_controldata.txt"
chmod 644 "$OUT"/0000000* "$OUT/pg_control" "$OUT/pg_controldata.txt"
ls -l "$OUT"
