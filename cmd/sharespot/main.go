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

	"connectrpc.com/connect"
	"github.com/alecthomas/kong"

	"github.com/sharespot/sharespot/internal/client"
	"github.com/sharespot/sharespot/internal/exitcode"
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

	DashboardLink  DashboardLinkCmd `cmd:"" name:"dashboard-link" help:"Host: print a fresh one-time sign-in link to your dashboard (also while share runs)."`
	scriptCommands `embed:""`       // completion, --version
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
	parser, err := newParser(&cli, os.Args[1:], os.LookupEnv, scriptOptions()...)
	if err != nil {
		fmt.Fprintln(os.Stderr, "sharespot:", err)
		return int(exitcode.Usage)
	}
	args := os.Args[1:]
	if len(args) == 0 {
		args = []string{"--help"} // a first try gets the commands, not an error
	}
	kctx, err := parser.Parse(args)
	if err != nil {
		if cmd := serverOnly(args); cmd != "" {
			fmt.Fprintf(os.Stderr, "sharespot: %q is not in this device build (built with -tags device); it runs on the server, with the full build\n", cmd)
			return int(exitcode.Usage)
		}
		return parseFailed(os.Stderr, err)
	}
	ctx, stop := notifyContext()
	defer stop()
	err = kctx.Run(&runEnv{ctx: ctx, stdout: os.Stdout, stderr: os.Stderr})
	code, quiet := exitcode.Of(ctx, err)
	if !quiet {
		fmt.Fprintln(os.Stderr, "sharespot:", errText(err))
	}
	return int(code)
}

// notifyContext is a context that the first SIGINT or SIGTERM cancels,
// with an *exitcode.Signaled cause (the exit code). The first ends the
// command's work in order (a session ends and settles); a second one
// stops the process at once.
func notifyContext() (context.Context, func()) {
	ctx, cancel := context.WithCancelCause(context.Background())
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		select {
		case s := <-sigs:
			signal.Stop(sigs) // the default again: the next one stops at once
			cancel(&exitcode.Signaled{Signal: s})
		case <-ctx.Done():
		}
	}()
	return ctx, func() { signal.Stop(sigs); cancel(nil) }
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
	return int(exitcode.Usage) // not kong's own 80
}

// errText is an error as it may be printed: an error can carry the other
// party's or the server's text, so each of its lines goes through
// client.SafeText. A refusal by the server reads as the server's sentence,
// without the RPC code before it ("failed_precondition: …"): the code is
// for programs, the sentence for people.
func errText(err error) string {
	s := err.Error()
	var ce *connect.Error
	if errors.As(err, &ce) && refusal(ce.Code()) {
		s = strings.Replace(s, ce.Error(), ce.Message(), 1)
	}
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		lines[i] = client.SafeText(l)
	}
	return strings.Join(lines, "\n")
}

// refusal reports whether code is the server refusing a request for a
// reason its message gives a person, rather than a failure to reach it
// or of its own.
func refusal(code connect.Code) bool {
	switch code {
	case connect.CodeInvalidArgument, connect.CodeFailedPrecondition, connect.CodeResourceExhausted,
		connect.CodePermissionDenied, connect.CodeNotFound, connect.CodeAlreadyExists, connect.CodeOutOfRange:
		return true
	}
	return false
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
