#!/usr/bin/env bash
# Builds the S3 server that the Go tests of core/s3 (and the store on S3)
# run against: VersityGW (Apache-2.0), from the Go module proxy, once per
# machine and version, into the cache that core/s3/s3test looks in
# (${TPDE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tpde}/versitygw-<version>/bin).
# Prints the binary's path. About 1-3 minutes and 84 MB the first time.
# (MinIO is AGPL, so it is not used.)
set -euo pipefail
VERSION=v1.8.0 # keep in step with s3test.Version
CACHE="${TPDE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tpde}"
DIR="$CACHE/versitygw-$VERSION"
if [ -x "$DIR/bin/versitygw" ]; then
	echo "$DIR/bin/versitygw"
	exit 0
fi
command -v go >/dev/null || { echo ".ci/versitygw.sh: Go is required" >&2; exit 2; }
mkdir -p "$CACHE"
# Built into a temporary folder and renamed into place, so that an
# interrupted build never leaves a half binary where the tests look.
tmp="$(mktemp -d "$CACHE/versitygw-build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
echo ".ci/versitygw.sh: building versitygw $VERSION (once per machine)" >&2
(cd "$tmp" && GOBIN="$tmp/bin" GOFLAGS=-mod=mod go install "github.com/versity/versitygw/cmd/versitygw@$VERSION" >&2)
rm -rf "$DIR.new"
mkdir -p "$DIR.new/bin"
mv "$tmp/bin/versitygw" "$DIR.new/bin/versitygw"
rm -rf "$DIR"
mv "$DIR.new" "$DIR"
echo "$DIR/bin/versitygw"
