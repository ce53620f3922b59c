#!/usr/bin/env bash
# tpde build entry point. Every command sets up what it needs on a fresh
# machine (Go modules, the cached Python venv) and can be rerun at will.
#
#   ./build.sh            build python/tpde/libtpde.so (same as ./build.sh lib)
#   ./build.sh demo       the main job: real MiniLM weights, compress + restore + compare
#   ./build.sh test       every test: Go (with short fuzz runs), the C ABI, Python (builds the
#                         S3 test server once per machine: .ci/versitygw.sh)
#   ./build.sh bench      the benchmarks behind every figure in README.md and docs/
#   ./build.sh series     the checkpoint-series benchmark (trains MiniLM on the CPU once, cached)
#   ./build.sh store      the checkpoint-store benchmark (bench/store.py; trains two short runs once, cached)
#   ./build.sh integrations  the Trainer-callback overhead, DCP and DeepSpeed benchmarks (bench/hf_overhead.py, bench/dcp.py, bench/deepspeed_store.py)
#   ./build.sh dcp        DCP on the store: size against FileSystemWriter + zstd, 2-rank scaling against the codec's (bench/dcp.py)
#   ./build.sh deepspeed  DeepSpeed tags in a store against DeepSpeed's own files + zstd-3 (bench/deepspeed_store.py)
#   ./build.sh legacy     legacy (pre-zip) torch files against the same tensors as .safetensors (bench/legacy.py)
#   ./build.sh s3         an s3:// store against boto3 on the raw files, on a local S3 server (bench/s3.py)
#   ./build.sh scale      the store's ls, info and load at 10, 100 and 1,000 checkpoints (bench/store_scale.py)
#   ./build.sh runs       two fine-tunes of one base in one store, as runs (bench/runs.py)
#   ./build.sh render     README.md's measured blocks from bench/results/*.json (--check: diff only)
#   ./build.sh fuzz-corpus  fuzz every core/ target a while, keep the inputs in testdata/fuzz
#   ./build.sh venv       print the path of the cached venv (creating it if needed)
#   ./build.sh venv-size  measure that venv on disk, as du does, into bench/results/venv.json (README quotes it)
#   ./build.sh wheel      build a platform wheel into dist/
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"

LIB="python/tpde/libtpde.so"
LOCK=".ci/requirements.lock"
CACHE="${TPDE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tpde}"
# Fuzz budget per target, as a count of executions: a duration (-fuzztime 5s)
# makes go test fail now and then with "context deadline exceeded" when a
# slow input straddles the deadline on a loaded machine, which would make CI
# flaky without finding anything.
FUZZTIME="${TPDE_FUZZTIME:-20000x}"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

need_go() {
	command -v go >/dev/null 2>&1 || { echo "build.sh: Go is required (https://go.dev/dl/)" >&2; exit 2; }
}

build_lib() {
	need_go
	log "go build -buildmode=c-shared -> $LIB"
	go mod download
	# Built beside the target and renamed over it: a process that has the
	# old library loaded keeps its mapping intact (overwriting in place
	# would change the code under it).
	local tmp="${LIB%.so}.tmp-$$.so"
	CGO_ENABLED=1 go build -trimpath -buildmode=c-shared -o "$tmp" ./capi
	mv -f "$tmp" "$LIB"
	rm -f "${tmp%.so}.h" "${LIB%.so}.h" # the generated header is not the contract; include/tpde.h is
}

# ensure_venv creates the test/bench venv once per lock-file hash, outside the
# repo, so torch (a ~3 GB CUDA build on PyPI) is downloaded once per machine.
ensure_venv() {
	local hash venv
	hash="$(sha256sum "$LOCK" | cut -c1-16)"
	venv="$CACHE/venv-$hash"
	if [ ! -f "$venv/.complete" ]; then
		log "creating venv $venv from $LOCK (once per lock file)"
		rm -rf "$venv"
		mkdir -p "$CACHE"
		python3 -m venv "$venv"
		"$venv/bin/pip" install -q --upgrade pip wheel setuptools >&2
		# DS_BUILD_OPS=0: DeepSpeed installs without compiling its CUDA ops
		# (the tests use its CPU path, which JIT-builds the one op it needs).
		DS_BUILD_OPS=0 "$venv/bin/pip" install -r "$LOCK" >&2
		touch "$venv/.complete"
	fi
	echo "$venv"
}

# ensure_versitygw builds the S3 server of the object-storage tests once per
# machine (.ci/versitygw.sh, cached by version) and exports its path as
# TPDE_VERSITYGW, which the Go and Python tests read. A TPDE_VERSITYGW
# already set to a binary is used as it is.
ensure_versitygw() {
	if [ -n "${TPDE_VERSITYGW:-}" ] && [ -x "$TPDE_VERSITYGW" ]; then
		export TPDE_VERSITYGW
		return
	fi
	local bin
	bin="$(.ci/versitygw.sh)"
	export TPDE_VERSITYGW="$bin"
}

py() { PYTHONPATH="$ROOT/python${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 "$VENV/bin/python" "$@"; }

run_go_tests() {
	log "go vet + go test"
	go vet ./...
	go test -count=1 ./...
	# The store's tests again with each add's re-code in the background
	# (core/store/main_test.go; the Go default is inline).
	TPDE_STORE_RECODE=background go test -count=1 ./core/store/
	# The pure-Go fallback (what non-amd64 machines run) of the SSE2 kernels
	# in core/transform and core/delta; it must keep building and passing.
	log "go vet + go test, -tags purego"
	go vet -tags purego ./...
	go test -count=1 -tags purego ./core/...
	log "fuzz targets, $FUZZTIME executions each"
	local pkg target fuzzlog
	fuzzlog="$(mktemp)"
	for pkg in $(go list ./core/...); do
		for target in $(go test -list '^Fuzz' "$pkg" | grep '^Fuzz' || true); do
			if ! go test -run '^$' -fuzz "^${target}\$" -fuzztime "$FUZZTIME" "$pkg" >"$fuzzlog" 2>&1; then
				# Show this run's own output: a rerun would not reproduce a
				# random find. A failing input is saved under testdata/fuzz.
				echo "fuzz $pkg $target failed:" >&2
				cat "$fuzzlog" >&2
				rm -f "$fuzzlog"
				exit 1
			fi
			echo "fuzz ok: $pkg $target"
		done
	done
	rm -f "$fuzzlog"
}

run_c_tests() {
	log "C ABI test (include/tpde.h against the built library)"
	local out
	out="$(mktemp -d)"
	cc -std=c11 -Wall -Wextra -Werror -Iinclude tests/c/abi_test.c -Lpython/tpde -ltpde \
		-Wl,-rpath,"$ROOT/python/tpde" -lpthread -o "$out/abi_test"
	"$out/abi_test"
	rm -rf "$out"
}

cmd="${1:-lib}"
shift || true
case "$cmd" in
lib | build)
	build_lib
	;;
venv)
	ensure_venv
	;;
venv-size)
	VENV="$(ensure_venv)"
	[ "$#" -gt 0 ] || set -- --json bench/results/venv.json
	python3 bench/venv_size.py "$VENV" "$@"
	;;
test)
	build_lib
	VENV="$(ensure_venv)"
	ensure_versitygw
	run_go_tests
	run_c_tests
	log "pytest"
	py -m pytest -q tests "$@"
	;;
demo)
	build_lib
	VENV="$(ensure_venv)"
	py bench/demo.py "$@"
	;;
bench)
	build_lib
	VENV="$(ensure_venv)"
	# No options: the full run, recorded in the committed bench/results/run.json
	# (then ./build.sh render). With options (--quick, ...): exactly as given.
	[ "$#" -gt 0 ] || set -- --json bench/results/run.json
	py bench/run.py "$@"
	;;
series)
	build_lib
	VENV="$(ensure_venv)"
	# No options: the full run, recorded in the committed bench/results/series.json.
	[ "$#" -gt 0 ] || set -- --json bench/results/series.json
	py bench/series.py "$@"
	;;
store)
	build_lib
	VENV="$(ensure_venv)"
	# No options: the full run (with the 4 GB memory part), recorded in the
	# committed bench/results/store.json. With options: exactly as given.
	[ "$#" -gt 0 ] || set -- --memory --json bench/results/store.json
	py bench/store.py "$@"
	;;
s3)
	build_lib
	VENV="$(ensure_venv)"
	ensure_versitygw
	# No options: the full run, recorded in the committed bench/results/s3.json.
	[ "$#" -gt 0 ] || set -- --json bench/results/s3.json
	PYTHONPATH="$ROOT/tests" py bench/s3.py "$@"
	;;
legacy)
	build_lib
	VENV="$(ensure_venv)"
	# Legacy (pre-zip) torch files against the same tensors as .safetensors,
	# recorded in the committed bench/results/legacy.json.
	[ "$#" -gt 0 ] || set -- --json bench/results/legacy.json
	py bench/legacy.py "$@"
	;;
scale)
	build_lib
	VENV="$(ensure_venv)"
	# Whether a store's cost grows with its history, recorded in the
	# committed bench/results/store_scale.json.
	[ "$#" -gt 0 ] || set -- --json bench/results/store_scale.json
	py bench/store_scale.py "$@"
	;;
runs)
	build_lib
	VENV="$(ensure_venv)"
	# Runs in one store: a second fine-tune's first checkpoint against its
	# own store, recorded in the committed bench/results/runs.json.
	[ "$#" -gt 0 ] || set -- --json bench/results/runs.json
	py bench/runs.py "$@"
	;;
integrations)
	build_lib
	VENV="$(ensure_venv)"
	# The training integrations' targets: the Trainer callback's overhead,
	# DCP's rank scaling and size, DeepSpeed's size across tags, recorded in
	# bench/results/.
	py bench/hf_overhead.py --json bench/results/hf_overhead.json
	py bench/dcp.py --json bench/results/dcp.json
	py bench/deepspeed_store.py --json bench/results/deepspeed.json
	;;
dcp)
	build_lib
	VENV="$(ensure_venv)"
	# DCP alone (also part of integrations), recorded in the committed
	# bench/results/dcp.json. With options: exactly as given.
	[ "$#" -gt 0 ] || set -- --json bench/results/dcp.json
	py bench/dcp.py "$@"
	;;
deepspeed)
	build_lib
	VENV="$(ensure_venv)"
	# A real MiniLM fine-tuning run under DeepSpeed, its tags in one store,
	# recorded in the committed bench/results/deepspeed.json.
	[ "$#" -gt 0 ] || set -- --json bench/results/deepspeed.json
	py bench/deepspeed_store.py "$@"
	;;
render)
	# README.md's (and docs/*.md's) measured blocks from bench/results/*.json;
	# --check: change nothing, exit 1 with a diff when they differ. Standard library only.
	python3 bench/render.py "$@"
	;;
wheel)
	VENV="$(ensure_venv)"
	"$VENV/bin/pip" wheel --no-deps -w dist . "$@"
	;;
fuzz-corpus)
	# Fuzz every core/ target for a while and keep what the fuzzer found in
	# each package's testdata/fuzz (commit it); see .ci/fuzz-corpus.sh.
	need_go
	.ci/fuzz-corpus.sh "$@"
	;;
*)
	sed -n '2,/^set -e/{/^#/p}' "$0" >&2
	exit 2
	;;
esac
