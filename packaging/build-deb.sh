#!/usr/bin/env bash
# Build the Debian package of pgkeep (needs cargo-deb: `cargo install cargo-deb --locked`).
#
#   bash packaging/build-deb.sh                        # release build (default features: ebs, s3,
#                                                      # azure, gcs; LTO, ~12 min on 2 cores) -> target/debian/
#   bash packaging/build-deb.sh --binary PGKEEP OUT    # package a binary built already (the tests:
#                                                      # the debug build), no cargo build
#
# The man pages and completions are generated from the binary being packaged (its clap
# definitions) into pgkeep-generated/ beside it, where crates/pgkeep/Cargo.toml's
# [package.metadata.deb] assets pick them up.
set -euo pipefail
cd "$(dirname "$0")/.."

deb_args=()
if [ "${1:-}" = "--binary" ]; then
    [ $# -eq 3 ] || { echo "build-deb.sh: usage: --binary PGKEEP OUT_DIR" >&2; exit 2; }
    # A target directory of its own, laid out as cargo-deb expects a release build.
    CARGO_TARGET_DIR="$(mktemp -d)"
    export CARGO_TARGET_DIR
    trap 'rm -rf "$CARGO_TARGET_DIR"' EXIT
    mkdir -p "$CARGO_TARGET_DIR/release"
    cp "$2" "$CARGO_TARGET_DIR/release/pgkeep"
    out="$3"
    deb_args+=(--fast)
else
    cargo build --release --locked -p pgkeep
    out="target/debian"
fi
target="${CARGO_TARGET_DIR:-target}"
bin="$target/release/pgkeep"
gen="$target/release/pgkeep-generated"
rm -rf "$gen"
mkdir -p "$gen/man" "$gen/completions" "$out"
"$bin" generate man "$gen/man" >/dev/null
# Debian installs man pages compressed (-n: no name or time stamp, so builds are reproducible).
gzip -9n "$gen"/man/*.1
for shell in bash zsh fish; do
    "$bin" generate completions "$shell" "$gen/completions" >/dev/null
done
cargo deb -p pgkeep --no-build "${deb_args[@]}" --output "$out"
