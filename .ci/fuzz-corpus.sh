#!/usr/bin/env bash
# Grows the committed fuzz corpora. For every Fuzz* target in the given
# packages (default ./core/...) it runs the fuzzer for a bounded time, then
# copies the inputs the fuzzer found interesting, which Go keeps only in
# $(go env GOCACHE)/fuzz/<import path>/<Target>/, into
# <package>/testdata/fuzz/<Target>/, where plain `go test` runs each one as
# a regression seed (one subtest per file). Commit those directories.
#
#   .ci/fuzz-corpus.sh [package pattern ...]      (or ./build.sh fuzz-corpus)
#
# Environment (defaults in brackets):
#   TPDE_CORPUS_FUZZTIME   budget per target: a duration or a count of
#                          executions, as go test -fuzztime takes it [75s]
#   TPDE_CORPUS_PARALLEL   fuzz worker processes [1]
#   TPDE_CORPUS_MAX_BYTES  total bytes for all targets' corpora, shared
#                          evenly between the targets [2500000]
#   TPDE_CORPUS_MAX_FILE   largest single input kept, bytes [32768]
#   TPDE_CORPUS_TARGETS    regexp of the target names to run [.]
#   TPDE_CORPUS_RETRIES    retries, a minute apart, of a package that does
#                          not build (others may be editing it) [3]
#
# Files already in testdata/fuzz are never removed (some are failures kept
# as regression tests) and count against their target's share; the share's
# remainder is filled with the smallest new inputs first, so the largest
# are the ones dropped. Go has already minimised every cached input.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

FUZZTIME="${TPDE_CORPUS_FUZZTIME:-75s}"
PARALLEL="${TPDE_CORPUS_PARALLEL:-1}"
MAX_BYTES="${TPDE_CORPUS_MAX_BYTES:-2500000}"
MAX_FILE="${TPDE_CORPUS_MAX_FILE:-32768}"
TARGETS="${TPDE_CORPUS_TARGETS:-.}"
RETRIES="${TPDE_CORPUS_RETRIES:-3}"
[ $# -gt 0 ] || set -- ./core/...

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
# bytes_in DIR, files_in DIR: total size and count of DIR's files (0 if none).
bytes_in() { if [ -d "$1" ]; then find "$1" -maxdepth 1 -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}'; else echo 0; fi; }
files_in() { if [ -d "$1" ]; then find "$1" -maxdepth 1 -type f | wc -l; else echo 0; fi; }

# targets_of PKG: the package's fuzz targets, retrying while it fails to
# build (a file someone else is editing).
targets_of() {
	local out try
	for ((try = 0; ; try++)); do
		if out="$(go test -list '^Fuzz' "$1" 2>&1)"; then
			grep '^Fuzz' <<<"$out" | grep -E -- "$TARGETS" || true
			return 0
		fi
		if ((try >= RETRIES)); then
			echo "$out" >&2
			return 1
		fi
		log "$1 does not build; retrying in 60s ($((try + 1))/$RETRIES)"
		sleep 60
	done
}

# fuzz PKG TARGET LOG: one bounded fuzzing run, retried while the package
# does not build.
fuzz() {
	local try
	for ((try = 0; ; try++)); do
		go test -run '^$' -fuzz "^${2}\$" -fuzztime "$FUZZTIME" -parallel "$PARALLEL" "$1" >"$3" 2>&1 && return 0
		grep -q -E '\[(build|setup) failed\]' "$3" && ((try < RETRIES)) || return 1
		log "$1 does not build; retrying in 60s ($((try + 1))/$RETRIES)"
		sleep 60
	done
}

cache="$(go env GOCACHE)/fuzz"
failed=()
declare -a plan # "dir importpath target"
for pkg in $(go list "$@"); do
	dir="$(go list -f '{{.Dir}}' "$pkg")"
	if ! list="$(targets_of "$pkg")"; then
		failed+=("$pkg (does not build)")
		continue
	fi
	for target in $list; do
		plan+=("$dir $pkg $target")
	done
done
[ ${#plan[@]} -gt 0 ] || { echo "fuzz-corpus: no fuzz targets in $*" >&2; exit 1; }
share=$((MAX_BYTES / ${#plan[@]}))
log "${#plan[@]} targets, $FUZZTIME each, -parallel $PARALLEL; corpus share $share bytes per target"

summary=() # one line per target
for entry in "${plan[@]}"; do
	read -r dir pkg target <<<"$entry"
	dest="$dir/testdata/fuzz/$target"
	rel="${dest#"$ROOT"/}"
	before="$(find "$dest" -maxdepth 1 -type f 2>/dev/null | sort || true)"
	fuzzlog="$(mktemp)"
	log "fuzz $pkg $target"
	if ! fuzz "$pkg" "$target" "$fuzzlog"; then
		after="$(find "$dest" -maxdepth 1 -type f 2>/dev/null | sort || true)"
		if [ "$before" = "$after" ] && grep -q 'context deadline exceeded' "$fuzzlog"; then
			# A slow input straddled the -fuzztime deadline: nothing was
			# found, and what the run cached is still good.
			echo "fuzz-corpus: $target stopped at its deadline (not a failure)" >&2
		else
			# A real failure: Go saved the input under testdata/fuzz; it
			# stays there as the regression test for the fix.
			cat "$fuzzlog" >&2
			rm -f "$fuzzlog"
			failed+=("$pkg $target (fuzzing failed; input saved in $rel)")
			continue
		fi
	fi
	rm -f "$fuzzlog"

	mkdir -p "$dest"
	used="$(bytes_in "$dest")"
	added=()
	if [ -d "$cache/$pkg/$target" ]; then
		while read -r size path; do
			name="${path##*/}"
			[ -e "$dest/$name" ] && continue
			((size <= MAX_FILE)) || continue
			((used + size <= share)) || break # ascending sizes: nothing later fits
			cp "$path" "$dest/$name"
			used=$((used + size))
			added+=("$dest/$name")
		done < <(find "$cache/$pkg/$target" -maxdepth 1 -type f -printf '%s %p\n' | sort -n)
	fi

	# Every file must load as this target's arguments: the cache may hold
	# entries written by an older signature of the target, which the fuzzer
	# skips silently but go test reports as malformed. Drop those and check
	# again.
	ok=0
	for attempt in 1 2; do
		if out="$(go test -count=1 -run "^${target}\$" "$pkg" 2>&1)"; then
			ok=1
			break
		fi
		bad="$(grep -o "\"[^\"]*testdata/fuzz/$target/[^\"]*\"" <<<"$out" | tr -d '"' | sort -u || true)"
		[ -n "$bad" ] || break
		for f in $bad; do # relative to the package directory
			f="$dest/${f##*/}"
			case " ${added[*]} " in *" $f "*) rm -f "$f" ;; esac
		done
	done
	if [ "$ok" = 0 ]; then
		echo "$out" >&2
		rm -f "${added[@]}"
		failed+=("$pkg $target (the corpus does not pass go test; nothing added)")
		continue
	fi
	[ -n "$(ls -A "$dest")" ] || rmdir "$dest"
	summary+=("$(printf '%-48s %5d files %8d bytes' "$rel" "$(files_in "$dest")" "$(bytes_in "$dest")")")
done

log "corpora"
printf '%s\n' "${summary[@]}"
total=0
for entry in "${plan[@]}"; do
	read -r dir pkg target <<<"$entry"
	total=$((total + $(bytes_in "$dir/testdata/fuzz/$target")))
done
printf '%-48s %20d bytes\n' "total" "$total"
if [ ${#failed[@]} -gt 0 ]; then
	printf 'fuzz-corpus: FAILED: %s\n' "${failed[@]}" >&2
	exit 1
fi
