package main

import (
	"encoding/json"
	"fmt"
	"io"

	"github.com/alecthomas/kong"

	"github.com/sharespot/sharespot/internal/buildinfo"
	"github.com/sharespot/sharespot/internal/exitcode"
	"github.com/sharespot/sharespot/internal/protocol"
)

// scriptCommands are what scripts and shells use: --version and shell
// completion. (Exit codes: internal/exitcode; --json: on each command.)
type scriptCommands struct {
	ShowVersion kong.VersionFlag `name:"version" help:"Print the version (as the version command does) and exit."`
	Completion  CompletionCmd    `cmd:"" help:"Print a shell completion script for bash, zsh or fish."`
}

// scriptOptions are the parser's options for scripts: the --version
// text, and the exit codes after the root's --help.
func scriptOptions() []kong.Option {
	return []kong.Option{
		kong.Vars{"version": versionText()},
		kong.Help(func(opts kong.HelpOptions, ctx *kong.Context) error {
			if err := kong.DefaultHelpPrinter(opts, ctx); err != nil {
				return err
			}
			if ctx.Selected() == nil { // the root's help, not a command's
				fmt.Fprint(ctx.Stdout, "\n"+exitcode.Help())
			}
			return nil
		}),
	}
}

// writeJSON writes v as indented JSON: the --json outputs. Their field
// names are snake_case and stable; money is an integer count of the
// currency's minor unit, data a count of bytes.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// versionInfo is `version --json`.
type versionInfo struct {
	Version  string `json:"version"`          // the module's: v1.2.3, a pseudo-version, or (devel)
	Revision string `json:"revision"`         // the VCS revision, "" when not recorded
	Modified bool   `json:"modified"`         // built from a work tree with changes
	Go       string `json:"go"`               // the toolchain's version
	Build    string `json:"build"`            // full, or device
	Protocol int    `json:"protocol"`         // the protocol version
	Schema   int    `json:"schema,omitempty"` // the database schema's (not in the device build)
}

func versionJSON() versionInfo {
	in := buildinfo.Get()
	return versionInfo{Version: in.Version, Revision: in.Revision, Modified: in.Modified, Go: in.Go, Build: buildKind,
		Protocol: int(protocol.Version), Schema: schemaVersion()}
}
