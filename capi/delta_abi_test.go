package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
)

// TestDeltaABIFromC builds the library and testdata/delta_abi.c against
// include/tpde.h, and runs the C checks of the delta functions (the C ABI
// test of tests/c covers the rest). It needs a C compiler.
func TestDeltaABIFromC(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the shared library")
	}
	cc, err := exec.LookPath("cc")
	if err != nil {
		t.Skip("no C compiler")
	}
	if runtime.GOOS != "linux" && runtime.GOOS != "darwin" {
		t.Skip("shared library test for unix")
	}
	dir := t.TempDir()
	lib := filepath.Join(dir, "libtpde.so")
	build := exec.Command("go", "build", "-buildmode=c-shared", "-o", lib, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=1")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	bin := filepath.Join(dir, "delta_abi")
	comp := exec.Command(cc, "-std=c11", "-Wall", "-Wextra", "-Werror", "-I../include", "testdata/delta_abi.c",
		"-L"+dir, "-ltpde", "-Wl,-rpath,"+dir, "-lm", "-o", bin)
	if out, err := comp.CombinedOutput(); err != nil {
		t.Fatalf("cc: %v\n%s", err, out)
	}
	if out, err := exec.Command(bin).CombinedOutput(); err != nil {
		t.Fatalf("delta_abi: %v\n%s", err, out)
	} else {
		t.Logf("%s", out)
	}
}
