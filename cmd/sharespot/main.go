// Command sharespot is the Sharespot server and device tool: one binary,
// one subcommand per role. main stays thin; the work lives in internal/.
//
// Built with -tags device, it is the device build for routers and phones
// that host or buy: share, scan, connect, wallet (balance, history, card),
// device and version, and no server code (server, demo, bench and the
// operator's wallet commands are left out; internal/deptest keeps it so).
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

	serverCommands `embed:""` // demo, server, bench: not in the device build

	Share    ShareCmd    `cmd:"" help:"Host: register your hotspot and sell data through the metering gateway."`
	Withdraw WithdrawCmd `cmd:"" help:"Host: stop offering your hotspot (by BSSID, or every one this device offers)."`
	Scan     ScanCmd     `cmd:"" help:"Guest: show the Sharespot hotspots in range, with their prices."`
	Connect  ConnectCmd  `cmd:"" help:"Guest: buy data from a hotspot and get online through it."`
	Wallet   WalletCmd   `cmd:"" help:"Wallets: operator funding and balances."`
	Device   DeviceCmd   `cmd:"" help:"This device's identity: ID and sign-in token."`
	Version  VersionCmd  `cmd:"" help:"Print the version and protocol version."`
}

type runEnv struct {
	ctx    context.Context
	stdout io.Writer
	stderr io.Writer
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
		if cmd := serverOnly(args); cmd != "" {
			fmt.Fprintf(os.Stderr, "sharespot: %q is not in this device build (built with -tags device); it runs on the server, with the full build\n", cmd)
			return 2
		}
		return parseFailed(os.Stderr, err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// The first Ctrl-C ends the command's work in order (a session ends
	// and settles); a second one stops the process at once.
	context.AfterFunc(ctx, stop)
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

// serverOnly names the full build's command args asks for, if this build
// lacks it ("" otherwise).
func serverOnly(args []string) string {
	if buildKind != "device" {
		return ""
	}
	var words []string
	for _, a := range args {
		if !strings.HasPrefix(a, "-") {
			words = append(words, a)
		}
	}
	switch {
	case len(words) == 0:
		return ""
	case words[0] == "server" || words[0] == "demo" || words[0] == "bench":
		return "sharespot " + words[0]
	case words[0] == "wallet" && len(words) > 1 && (words[1] == "fund" || words[1] == "audit"):
		return "sharespot wallet " + words[1]
	}
	return ""
}
