// Command sharespot is the Sharespot server and device tool: one binary,
// one subcommand per role. main stays thin; the work lives in internal/.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/alecthomas/kong"

	"github.com/sharespot/sharespot/internal/client"
)

// CLI is the command line.
type CLI struct {
	Config string `name:"config" env:"SHARESPOT_CONFIG" help:"Configuration file (JSON; default ${config_default})." placeholder:"FILE"`

	Demo    DemoCmd        `cmd:"" help:"Run the whole flow on this machine: a server, a host and a guest, real bytes, real ledger."`
	Server  ServerGroupCmd `cmd:"" help:"Run the Sharespot server: registry, relay, sessions, wallet; or make an operator's dashboard link."`
	Share   ShareCmd       `cmd:"" help:"Host: register your hotspot and sell data through the metering gateway."`
	Scan    ScanCmd        `cmd:"" help:"Guest: show the Sharespot hotspots in range, with their prices."`
	Connect ConnectCmd     `cmd:"" help:"Guest: buy data from a hotspot and get online through it."`
	Wallet  WalletCmd      `cmd:"" help:"Wallets: operator funding and balances."`
	Device  DeviceCmd      `cmd:"" help:"This device's identity: ID and sign-in token."`
	Version VersionCmd     `cmd:"" help:"Print the version and protocol version."`
	Bench   BenchCmd       `cmd:"" help:"Load benchmarks: paid flows open loop, idle streams, relay latency."`
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
	args := os.Args[1:]
	if len(args) == 0 {
		args = []string{"--help"} // a first try gets the commands, not an error
	}
	kctx, err := parser.Parse(args)
	if err != nil {
		return parseFailed(os.Stderr, err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := kctx.Run(&runEnv{ctx: ctx, stdout: os.Stdout, stderr: os.Stderr}); err != nil {
		fmt.Fprintln(os.Stderr, "sharespot:", errText(err))
		return 1
	}
	return 0
}

// parseFailed reports a command line that did not parse: the error and
// where the flags are described, not the whole usage (which buried the
// one line that mattered). It returns the exit code.
func parseFailed(w io.Writer, err error) int {
	fmt.Fprintln(w, "sharespot:", errText(err))
	cmd := "sharespot"
	var pe *kong.ParseError
	if errors.As(err, &pe) && pe.Context != nil {
		if n := pe.Context.Selected(); n != nil {
			cmd = n.FullPath()
		}
	}
	fmt.Fprintf(w, "Run \"%s --help\" for help.\n", cmd)
	var ec interface{ ExitCode() int }
	if errors.As(err, &ec) {
		return ec.ExitCode()
	}
	return 2
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
