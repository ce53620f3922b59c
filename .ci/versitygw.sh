#!/usr/bin/env bash
# Builds the S3 server the tests and benchmarks run against, VersityGW
# (Apache-2.0; MinIO is AGPL), from the Go module proxy, once per machine,
# into a cache keyed by its version:
#
#   ${TPDE_CACHE:-$HOME/.cache/tpde}/versitygw-v1.8.0/bin/versitygw
#
# ($XDG_CACHE_HOME/tpde for ~/.cache/tpde where that is set, as build.sh's
# venv cache), and prints that path on stdout (progress goes to stderr). A binary already
# there that runs `--version` is reused. The build goes into a temporary
# folder beside it and is renamed into place, so a build that is killed never
# leaves a half-written binary where the tests look; concurrent callers wait
# on a lock instead of building twice. ./build.sh test calls this and exports
# TPDE_VERSITYGW with the path (tests/s3server.py and core/s3/s3test read it).
set -euo pipefail

VERSION="v1.8.0"
MODULE="github.com/versity/versitygw/cmd/versitygw"
DIR="${TPDE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tpde}/versitygw-$VERSION"
BIN="$DIR/bin/versitygw"

runs() { [ -x "$1" ] && "$1" --version >/dev/null 2>&1; }

if runs "$BIN"; then
	echo "$BIN"
	exit 0
fi

command -v go >/dev/null 2>&1 || {
	echo ".ci/versitygw.sh: Go is required to build the S3 test server (VersityGW $VERSION)" >&2
	exit 2
}

mkdir -p "$DIR/bin"
# One builder at a time: a second caller waits here, then finds the binary.
if command -v flock >/dev/null 2>&1; then
	exec 9>"$DIR/.lock"
	flock 9
	if runs "$BIN"; then
		echo "$BIN"
		exit 0
	fi
	# Holding the lock, no other build runs: what a killed build left is stale.
	rm -rf "$DIR"/bin/.build-*
fi

tmp="$(mktemp -d "$DIR/bin/.build-XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
printf '\033[1m==> %s\033[0m\n' "building VersityGW $VERSION from the Go module proxy into $DIR (once per machine)" >&2
start=$(date +%s)
# Built from a folder outside any module, so no go.mod around the caller
# (tpde's own included) takes part; -mod=mod lets go resolve the module's
# dependencies from its own go.mod.
if ! (cd "$tmp" && GOBIN="$tmp" GOFLAGS="-mod=mod${GOFLAGS:+ $GOFLAGS}" go install "$MODULE@$VERSION" >&2); then
	echo ".ci/versitygw.sh: FAILED: go install $MODULE@$VERSION (output above)" >&2
	exit 1
fi
if ! runs "$tmp/versitygw"; then
	echo ".ci/versitygw.sh: FAILED: the built $tmp/versitygw does not run --version" >&2
	exit 1
fi
mv -f "$tmp/versitygw" "$BIN" # a rename within one folder: atomic
echo ".ci/versitygw.sh: built in $(($(date +%s) - start)) s: $BIN" >&2
echo "$BIN"
