// Package deptest checks what a package links, as `go list -deps` sees it
// (tailscale's deptest idea): a test names the packages that must stay
// out of a build, and fails when an import brings one back.
package deptest

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
)

// Deps lists the packages pkg links (itself included) when built with
// tags, for GOOS/GOARCH goos/goarch ("" for this machine's).
func Deps(pkg, tags, goos, goarch string) ([]string, error) {
	args := []string{"list", "-deps"}
	if tags != "" {
		args = append(args, "-tags", tags)
	}
	cmd := exec.Command(goCommand(), append(args, pkg)...)
	cmd.Env = os.Environ()
	if goos != "" {
		cmd.Env = append(cmd.Env, "GOOS="+goos, "GOARCH="+goarch, "CGO_ENABLED=0")
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("deptest: go %s %s: %w\n%s", strings.Join(args, " "), pkg, err, stderr.String())
	}
	return strings.Fields(string(out)), nil
}

// Rule forbids the packages whose import path is Path or lies below it.
type Rule struct {
	Path string
	Why  string
}

// Violations returns, for each dependency a rule forbids, the rule's path
// and why, sorted.
func Violations(deps []string, rules []Rule) []string {
	var out []string
	for _, d := range deps {
		for _, r := range rules {
			if d == r.Path || strings.HasPrefix(d, r.Path+"/") {
				out = append(out, fmt.Sprintf("%s (%s)", d, r.Why))
				break
			}
		}
	}
	slices.Sort(out)
	return out
}

// ThirdParty counts the dependencies outside the standard library and the
// module itself (module is the module's path).
func ThirdParty(deps []string, module string) int {
	n := 0
	for _, d := range deps {
		first, _, _ := strings.Cut(d, "/")
		if strings.Contains(first, ".") && d != module && !strings.HasPrefix(d, module+"/") {
			n++
		}
	}
	return n
}

// goCommand is the go command of the toolchain running the test.
func goCommand() string {
	if p := filepath.Join(runtime.GOROOT(), "bin", "go"); fileExists(p) {
		return p
	}
	return "go"
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
