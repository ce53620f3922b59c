package api

import "github.com/tpde/tpde/core/par"

// Version is the library version (tpde_version).
const Version = "0.1.0"

// ABIVersion is the TPDE_ABI_VERSION this façade implements: bumped, with
// include/tpde.h and python/tpde/_native.py, when a call's signature or
// meaning changes.
const ABIVersion = 13

// SetThreads sets the worker count of calls that pass threads 0; n <= 0
// restores the default, the number of CPUs.
func SetThreads(n int32) { par.SetDefaultThreads(int(n)) }

// Threads is the worker count of calls that pass threads 0.
func Threads() int32 { return int32(par.Threads(0)) }
