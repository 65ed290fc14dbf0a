package main

import (
	"fmt"
	"runtime/debug"

	"github.com/sharespot/sharespot/internal/protocol"
)

// WalletCmd groups wallet commands.
type WalletCmd struct {
	Balance WalletBalanceCmd `cmd:"" help:"This device's wallet balance."`
	History WalletHistoryCmd `cmd:"" help:"This device's wallet movements."`
	Card    WalletCardCmd    `cmd:"" help:"Fund this device's wallet by card (Stripe), for small top-ups below card minimums."`

	operatorWallet `embed:""` // fund, audit: on the server's database, not in the device build
}

// VersionCmd prints versions.
type VersionCmd struct{}

// Run prints the versions: the build's (module version and VCS revision),
// the protocol's and, in the full build, the database schema's.
func (VersionCmd) Run(env *runEnv) error {
	fmt.Fprintf(env.stdout, "sharespot %s, %s build, protocol %d%s\n", buildVersion(), buildKind, protocol.Version, schemaText())
	return nil
}

// buildVersion is the module's version and VCS revision, as the Go
// toolchain recorded them.
func buildVersion() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "(unknown)"
	}
	v := bi.Main.Version
	if v == "" {
		v = "(devel)"
	}
	var rev, modified string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				modified = ", modified"
			}
		}
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if rev != "" {
		v += " (" + rev + modified + ")"
	}
	return v
}
