// Command sharespot is the Sharespot server and device tool: one binary,
// one subcommand per role. main stays thin; the work lives in internal/.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/sharespot/sharespot/internal/client"
)

// CLI is the command line.
type CLI struct {
	Config string `name:"config" env:"SHARESPOT_CONFIG" help:"Configuration file (JSON; default ${config_default})." placeholder:"FILE"`

	Demo    DemoCmd    `cmd:"" help:"Run the whole flow on this machine: a server, a host and a guest, real bytes, real ledger."`
	Server  ServerCmd  `cmd:"" help:"Run the Sharespot server: registry, relay, sessions, wallet."`
	Share   ShareCmd   `cmd:"" help:"Host: register your hotspot and sell data through the metering gateway."`
	Scan    ScanCmd    `cmd:"" help:"Guest: show the Sharespot hotspots in range, with their prices."`
	Connect ConnectCmd `cmd:"" help:"Guest: buy data from a hotspot and get online through it."`
	Wallet  WalletCmd  `cmd:"" help:"Wallets: operator funding and balances."`
	Device  DeviceCmd  `cmd:"" help:"This device's identity: ID and sign-in token."`
	Version VersionCmd `cmd:"" help:"Print the version and protocol version."`
	Bench   BenchCmd   `cmd:"" help:"Load benchmarks: paid flows open loop, idle streams, relay latency."`
}

func main() { os.Exit(run()) }

// run is the whole program; it returns the exit code.
func run() int {
	var cli CLI
	parser, err := newParser(&cli, os.Args[1:], os.LookupEnv)
	if err != nil {
		fmt.Fprintln(os.Stderr, "sharespot:", err)
		return 2
	}
	kctx, err := parser.Parse(os.Args[1:])
	parser.FatalIfErrorf(err)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := kctx.Run(&runEnv{ctx: ctx, stdout: os.Stdout, stderr: os.Stderr}); err != nil {
		fmt.Fprintln(os.Stderr, "sharespot:", errText(err))
		return 1
	}
	return 0
}

// errText is an error as it may be printed: an error can carry the other
// party's or the server's text, so each of its lines goes through
// client.SafeText.
func errText(err error) string {
	lines := strings.Split(err.Error(), "\n")
	for i, l := range lines {
		lines[i] = client.SafeText(l)
	}
	return strings.Join(lines, "\n")
}
