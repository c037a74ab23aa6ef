#!/usr/bin/env bash
# Install what a fresh Debian machine lacks for pgkeep's demo and test suite. Idempotent:
# on a machine that already has everything it only checks.
#
#   - PostgreSQL server + contrib (Debian's `postgresql` package), without a default cluster
#   - an unprivileged OS user for the servers the tests and the demo start (`postgres`)
#   - btrfs-progs and xfsprogs (snapshot tests on loop-mounted file systems)
#   - strace (tests trace archive-push's fsync calls and the order of expire's unlink, fsync and
#     snapshot deletion)
#   - cargo-nextest (the test runner), if the toolchain lacks it
#   - a Python venv with moto[server] (fake EC2 and S3 APIs for the EBS and s3:// tests) at
#     $PGKEEP_MOTO_VENV (default /opt/pgkeep-venv)
#   - gcp-storage-emulator in that venv (a GCS server for the gs:// tests)
#   - Azurite 3 from the npm registry at $PGKEEP_AZURITE_DIR (default /opt/pgkeep-azurite; an
#     Azure Blob Storage server for the az:// tests), with Node.js from Debian when missing
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "setup.sh: not root and no sudo; install postgresql, postgresql-contrib, btrfs-progs, xfsprogs yourself" >&2
    fi
fi

missing=()
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing+=(postgresql postgresql-contrib)
ls /usr/lib/postgresql/*/lib/amcheck.so >/dev/null 2>&1 || missing+=(postgresql-contrib)
command -v mkfs.btrfs >/dev/null 2>&1 || missing+=(btrfs-progs)
command -v mkfs.xfs >/dev/null 2>&1 || missing+=(xfsprogs)
command -v mkfs.ext4 >/dev/null 2>&1 || missing+=(e2fsprogs)
command -v strace >/dev/null 2>&1 || missing+=(strace)
/usr/bin/python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)

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

VENV="${PGKEEP_MOTO_VENV:-/opt/pgkeep-venv}"
if ! [ -x "$VENV/bin/moto_server" ] || ! "$VENV/bin/python" -c 'import moto, boto3' >/dev/null 2>&1; then
    echo "setup.sh: creating $VENV with moto[server]" >&2
    $SUDO /usr/bin/python3 -m venv "$VENV"
    $SUDO "$VENV/bin/pip" install -q --disable-pip-version-check 'moto[server]>=5.1,<6'
fi

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
echo "setup.sh: ready ($(ls -d /usr/lib/postgresql/*/bin | tr '\n' ' '))" >&2
