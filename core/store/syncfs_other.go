//go:build !(linux && (amd64 || arm64))

package store

// sysSyncfs 0: no syncfs(2) here; syncAll falls back to sync(2).
const sysSyncfs = 0
