package main

import (
	"fmt"

	"github.com/sharespot/sharespot/internal/buildinfo"
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
type VersionCmd struct {
	JSON bool `help:"Print the versions as JSON."`
}

// Run prints the versions: the build's (module version and VCS revision),
// the protocol's and, in the full build, the database schema's.
func (c VersionCmd) Run(env *runEnv) error {
	if c.JSON {
		return writeJSON(env.stdout, versionJSON())
	}
	fmt.Fprintln(env.stdout, versionText())
	return nil
}

// versionText is what `version` and `--version` print.
func versionText() string {
	return fmt.Sprintf("sharespot %s, %s build, protocol %d%s", buildVersion(), buildKind, protocol.Version, schemaText())
}

// buildVersion is the module's version and VCS revision, as the Go
// toolchain recorded them.
func buildVersion() string { return buildinfo.Get().String() }
