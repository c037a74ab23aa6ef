#!/usr/bin/env bash
# Regenerates testdata/wal/pg<MAJOR>/: one 1 MiB WAL segment of a real PostgreSQL MAJOR
# cluster, its pg_control, the commit xids the server reported, and (16+) what pg_walinspect
# says of every record in the segment. The oracle files are the server's own reading, made
# when the segment was; the tests compare pgkeep-wal's decoder with them offline.
# Usage: testdata/wal/make-major-fixtures.sh MAJOR   (14, 16, 17, 18: server binaries from
# /opt/pgkeep-pg/MAJOR/bin, where scripts/setup.sh installs them; PGBIN overrides)
# Runs the server as the `postgres` OS user when invoked as root. Not byte-for-byte
# reproducible (system identifier, times, xids differ per run).
set -euo pipefail

MAJOR=$1
PGBIN=${PGBIN:-/opt/pgkeep-pg/$MAJOR/bin}
PSQL=${PSQL:-/usr/lib/postgresql/15/bin/psql}
OUT=$(cd "$(dirname "$0")" && pwd)/pg$MAJOR
WORK=$(mktemp -d /tmp/pgkeep-major-fixture.XXXXXX)
PORT=${PORT:-54720}

as_pg() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
cleanup() {
    as_pg "$PGBIN/pg_ctl" -D "$WORK/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT
[ "$(id -u)" = 0 ] && chown postgres "$WORK"
sql() { as_pg "$PSQL" -X -q -A -t -v ON_ERROR_STOP=1 -h "$WORK" -p "$PORT" -U postgres -d postgres "$@"; }

as_pg "$PGBIN/initdb" -D "$WORK/data" -U postgres -A trust --wal-segsize=1 --data-checksums >/dev/null
as_pg "$PGBIN/pg_ctl" -D "$WORK/data" -l "$WORK/log" -w start \
    -o "-c listen_addresses= -c unix_socket_directories=$WORK -c port=$PORT -c autovacuum=off -c wal_keep_size=64MB -c checkpoint_timeout=1h" >/dev/null

if [ "$MAJOR" -ge 16 ]; then sql -c "CREATE EXTENSION pg_walinspect" >/dev/null; fi
# The fixture's segment starts at a boundary, so its first record is whole.
sql -c "SELECT pg_create_restore_point('start'); SELECT pg_switch_wal()" >/dev/null
SEG=$(sql -c "SELECT pg_walfile_name(pg_current_wal_insert_lsn())")
START=$(sql -c "SELECT pg_current_wal_insert_lsn()")
# Catalog and heap work, full-page images after a checkpoint, a multi-block VACUUM, a
# subtransaction, an abort, a record crossing pages; then commits whose xids are kept.
sql >/dev/null <<'SQL'
CREATE TABLE f (id int PRIMARY KEY, v text);
INSERT INTO f SELECT g, md5(g::text) FROM generate_series(1, 400) g;
CHECKPOINT;
UPDATE f SET v = 'u' WHERE id % 40 = 0;
DELETE FROM f WHERE id % 50 = 1;
VACUUM f;
BEGIN; INSERT INTO f VALUES (-1, 'a'); SAVEPOINT s; INSERT INTO f VALUES (-2, 'b'); RELEASE s; COMMIT;
BEGIN; INSERT INTO f VALUES (-3, 'aborted'); ROLLBACK;
SELECT pg_logical_emit_message(true, 'pgkeep', repeat('m', 20000));
SQL
: >"$WORK/commits.txt"
for i in 1 2 3; do
    sql -c "INSERT INTO f VALUES (-10 - $i, 'c') RETURNING pg_current_xact_id()" >>"$WORK/commits.txt"
done
END=$(sql -c "SELECT pg_current_wal_insert_lsn()")
[ "$(sql -c "SELECT pg_walfile_name('$END')")" = "$SEG" ] || { echo "the workload left segment $SEG" >&2; exit 1; }
if [ "$MAJOR" -ge 16 ]; then
    # lsn rmgr xid total_length [block_id:spc/db/rel/fork/blk/fpi ...], one record a line
    sql -F ' ' >"$WORK/walinspect.txt" <<SQL
SELECT r.start_lsn, r.resource_manager, r.xid, r.record_length,
       coalesce((SELECT string_agg(format('%s:%s/%s/%s/%s/%s/%s', b.block_id, b.reltablespace, b.reldatabase,
                         b.relfilenode, b.relforknumber, b.relblocknumber, coalesce(b.block_fpi_length, 0) > 0), ' '
                         ORDER BY b.block_id)
                 FROM pg_get_wal_block_info('$START', '$END', false) b WHERE b.start_lsn = r.start_lsn), '')
FROM pg_get_wal_records_info('$START', '$END') r ORDER BY r.start_lsn
SQL
fi
sql -c "SELECT pg_switch_wal()" >/dev/null
as_pg "$PGBIN/pg_ctl" -D "$WORK/data" -m fast -w stop >/dev/null

rm -rf "$OUT"
mkdir -p "$OUT"
cp "$WORK/data/pg_wal/$SEG" "$WORK/data/global/pg_control" "$WORK/commits.txt" "$OUT/"
[ -f "$WORK/walinspect.txt" ] && cp "$WORK/walinspect.txt" "$OUT/"
echo "$START $END" >"$OUT/range.txt"
"$PGBIN/postgres" --version >"$OUT/version.txt"
echo "pg$MAJOR: segment $SEG, records $START .. $END" >&2
