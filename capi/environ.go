package main

/*
#include <stdlib.h>
*/
import "C"

import (
	"os"
	"strings"
	"unsafe"
)

// remoteEnv lists the variables a store on object storage is configured
// by (core/s3.ConfigFromEnv, and the AWS SDK's credential chain).
var remoteEnv = []string{
	"AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
	"AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_CONFIG_FILE",
	"AWS_SHARED_CREDENTIALS_FILE", "AWS_EC2_METADATA_DISABLED", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE",
	"TPDE_S3_CACHE", "TPDE_S3_MAX_ATTEMPTS", "TPDE_S3_TIMEOUT", "TPDE_S3_GRACE",
}

// refreshRemoteEnv copies remoteEnv from the process environment into Go's.
// Go reads the environment once, when the library loads; a host that sets
// AWS_* later (a Python program, a test) would otherwise open its store
// with what was set before. Called only when a remote store is opened.
func refreshRemoteEnv(path string) {
	if !strings.HasPrefix(path, "s3://") {
		return
	}
	for _, name := range remoteEnv {
		cname := C.CString(name)
		v := C.getenv(cname)
		C.free(unsafe.Pointer(cname))
		if v == nil {
			_ = os.Unsetenv(name)
		} else {
			_ = os.Setenv(name, C.GoString(v))
		}
	}
}
