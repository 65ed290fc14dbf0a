//go:build unix && !device

package main

import "syscall"

// raiseFileLimit raises this process's open-files limit (inherited by a
// spawned server) towards want, as far as it may; it returns the limit.
func raiseFileLimit(want uint64) uint64 {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0
	}
	if lim.Cur >= want {
		return lim.Cur
	}
	try := lim
	try.Cur = want
	if try.Max < want {
		try.Max = want // only root may raise the hard limit
	}
	if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &try) == nil {
		return want
	}
	lim.Cur = lim.Max
	if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim) == nil {
		return lim.Cur
	}
	return lim.Cur
}

// fileLimit is this process's open-files limit (0: unknown).
func fileLimit() uint64 {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0
	}
	return lim.Cur
}
