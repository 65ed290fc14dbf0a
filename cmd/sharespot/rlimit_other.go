//go:build !unix && !device

package main

// raiseFileLimit does nothing where there is no RLIMIT_NOFILE; it returns
// 0 (unknown).
func raiseFileLimit(uint64) uint64 { return 0 }

// fileLimit is 0 (unknown) where there is no RLIMIT_NOFILE.
func fileLimit() uint64 { return 0 }
