// Package netns builds throwaway Linux network namespaces for tests: a
// guest, a host and an internet, joined by veth pairs and a bridge on the
// host's LAN side so that several guests share one link, as Wi-Fi stations
// share an access point. It runs functions, listeners and dialers inside a
// namespace (an OS thread that entered it with setns(2); sockets stay in
// the namespace they were made in).
//
// Every namespace gets a unique name and is deleted by t.Cleanup, so tests
// can run in parallel and after a crashed run. Tests that need it call
// RequireRoot and RequireTools: they skip locally without root or the
// tools, and fail when CI=true, since a skipped test proves nothing.
//
// It is Linux-only by nature; on other systems New skips (or fails in CI).
package netns

import (
	"os"
	"os/exec"
	"testing"
)

// skipOrFail skips t locally and fails it in CI.
func skipOrFail(t testing.TB, msg string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s (CI=true: this test must run)", msg)
	}
	t.Skip(msg)
}

// RequireRoot skips t when not root (fails in CI).
func RequireRoot(t testing.TB) {
	t.Helper()
	if !supported {
		skipOrFail(t, "network namespaces need Linux")
	}
	if os.Geteuid() != 0 {
		skipOrFail(t, "needs root (network namespaces, nftables)")
	}
}

// RequireTools skips t when a tool is missing from PATH (fails in CI).
func RequireTools(t testing.TB, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			skipOrFail(t, "needs "+tool+" in PATH")
		}
	}
}
