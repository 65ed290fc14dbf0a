//go:build !device

package main

import (
	"fmt"

	"github.com/sharespot/sharespot/internal/store"
)

// serverCommands are the commands of the full build that run or read a
// server (the device build has none).
type serverCommands struct {
	Demo   DemoCmd        `cmd:"" help:"Run the whole flow on this machine: a server, a host and a guest, real bytes, real ledger."`
	Server ServerGroupCmd `cmd:"" help:"Run the Sharespot server: registry, relay, sessions, wallet; or make an operator's dashboard link."`
	Bench  BenchCmd       `cmd:"" help:"Load benchmarks: paid flows open loop, idle streams, relay latency."`
}

// operatorWallet are the operator's wallet commands, on the server's
// database.
type operatorWallet struct {
	Fund  WalletFundCmd  `cmd:"" help:"Operator: add money to an account's wallet (on the server's database)."`
	Audit WalletAuditCmd `cmd:"" help:"Operator: check that money and sessions are consistent (on the server's database)."`
}

const buildKind = "full"

func schemaText() string { return fmt.Sprintf(", schema %d", store.SchemaVersion()) }

// schemaVersion is the database schema's version (0: none, the device build).
func schemaVersion() int { return store.SchemaVersion() }
