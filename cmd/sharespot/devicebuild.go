//go:build device

package main

// The device build: share, scan, connect, wallet (balance, history, card),
// device and version; nothing that runs or reads a server.
type (
	serverCommands struct{}
	operatorWallet struct{}
)

const buildKind = "device"

func schemaText() string { return "" }

func schemaVersion() int { return 0 }
