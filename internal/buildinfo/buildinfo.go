// Package buildinfo is the running binary's version, as the Go toolchain
// recorded it: the module's version and the VCS revision it was built from.
// The CLI's `version`, the server's /healthz and sharespot_build_info
// metric, and every client's User-Agent say the same.
package buildinfo

import (
	"runtime"
	"runtime/debug"
	"sync"
)

// Info is what the build recorded.
type Info struct {
	// Version is the main module's version ("v1.2.3", a pseudo-version,
	// or "(devel)" for a build from a work tree).
	Version string
	// Revision is the VCS revision (empty when not recorded, as under
	// `go test` or -buildvcs=false), Modified whether the work tree had
	// uncommitted changes.
	Revision string
	Modified bool
	// Go is the toolchain's version.
	Go string
}

var read = sync.OnceValue(func() Info {
	in := Info{Version: "(unknown)", Go: runtime.Version()}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return in
	}
	in.Version = bi.Main.Version
	if in.Version == "" {
		in.Version = "(devel)"
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			in.Revision = s.Value
		case "vcs.modified":
			in.Modified = s.Value == "true"
		}
	}
	return in
})

// Get returns the build's information.
func Get() Info { return read() }

// String is the version and a short revision: "v1.2.3 (0123456789ab)",
// "(devel) (0123456789ab, modified)".
func (in Info) String() string {
	v := in.Version
	if rev := in.Short(); rev != "" {
		v += " (" + rev
		if in.Modified {
			v += ", modified"
		}
		v += ")"
	}
	return v
}

// Short is the revision's first 12 characters.
func (in Info) Short() string {
	if len(in.Revision) > 12 {
		return in.Revision[:12]
	}
	return in.Revision
}

// UserAgent is what clients send: "sharespot/v1.2.3 (0123456789ab)".
func UserAgent() string { return "sharespot/" + Get().String() }
