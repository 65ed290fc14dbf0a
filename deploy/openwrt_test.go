package deploy

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sharespot/sharespot/internal/harness"
)

const (
	openwrtDir    = "openwrt/sharespot"
	openwrtInit   = openwrtDir + "/files/sharespot.init"
	openwrtConfig = openwrtDir + "/files/sharespot.config"
)

// openwrtShim stands in for OpenWrt's rc.common, functions.sh and procd.sh
// (not available off a router): config_get reads the package's UCI file,
// config_list_foreach its list lines, and procd's command is written out,
// one argument a line. It is a shim of OpenWrt, not a test of OpenWrt;
// what it checks is that the init script turns the configuration into a
// command line the real binary accepts.
const openwrtShim = `
set -e
UCI=$1 INIT=$2 OUT=$3
config_load() { :; }
uci_values() {
	awk -v k="$1" -v o="$2" '$1 == k && $2 == o { sub(/^[^\047]*\047/, ""); sub(/\047.*$/, ""); print }' "$UCI"
}
config_get() {
	v=$(uci_values option "$3")
	[ -n "$v" ] || v="$4"
	eval "$1=\$v"
}
config_get_bool() { config_get "$@"; }
config_list_foreach() {
	uci_values list "$2" | while IFS= read -r v; do "$3" "$v"; done
}
procd_open_instance() { :; }
procd_close_instance() { :; }
procd_set_param() { if [ "$1" = command ]; then shift; printf '%s\n' "$@" > "$OUT"; fi; }
procd_append_param() { if [ "$1" = command ]; then shift; printf '%s\n' "$@" >> "$OUT"; fi; }
. "$INIT"
start_service
`

// routerFixed are share's flags the init script gives from other
// settings, and routerExcluded those a router has no use for: every other
// flag of `sharespot share` must be a UCI option (flag a-b, option a_b).
var (
	routerFixed = map[string]string{
		"identity": "the device key is kept in the state directory",
	}
	routerExcluded = map[string]string{
		"help":             "not a setting",
		"version":          "not a setting: prints the version",
		"config":           "/etc/config/sharespot is the configuration",
		"hotspot":          "NetworkManager (nmcli) brings the hotspot up; OpenWrt's is in /etc/config/wireless (share uses iface)",
		"hotspot-password": "with --hotspot only",
		"allow-local":      "for trying Sharespot on one machine only",
		"ask":              "asks on a terminal; procd gives none",
	}
)

// shareFlags are the long flags of `sharespot share --help`, without the
// "no-" of a negatable one.
func shareFlags(t *testing.T, bin string) []string {
	t.Helper()
	out, err := exec.Command(bin, "share", "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("share --help: %v\n%s", err, out)
	}
	var flags []string
	for _, m := range regexp.MustCompile(`(?m)^\s+(?:-\w, )?--(?:\[no-\])?([a-z0-9-]+)`).FindAllStringSubmatch(string(out), -1) {
		flags = append(flags, m[1])
	}
	if len(flags) < 20 || !slices.Contains(flags, "gateway") || !slices.Contains(flags, "portal") {
		t.Fatalf("share --help lists %d flags %q: not the help this test reads", len(flags), flags)
	}
	return flags
}

// initOptions are the UCI options the init script reads.
func initOptions(t *testing.T) map[string]bool {
	t.Helper()
	b, err := os.ReadFile(openwrtInit)
	if err != nil {
		t.Fatal(err)
	}
	opts := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^\s*(?:config_get(?:_bool)? \w+|config_list_foreach) host (\w+)`).FindAllStringSubmatch(string(b), -1) {
		opts[m[1]] = true
	}
	return opts
}

// startService runs the init script's start_service on the UCI file conf
// and returns the command it sets.
func startService(t *testing.T, dir, name, conf string) []string {
	t.Helper()
	uci := filepath.Join(dir, name+".uci")
	if err := os.WriteFile(uci, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	shim := filepath.Join(dir, "shim.sh")
	if err := os.WriteFile(shim, []byte(openwrtShim), 0o700); err != nil {
		t.Fatal(err)
	}
	argsFile := filepath.Join(dir, name+".args")
	if out, err := exec.Command("sh", shim, uci, openwrtInit, argsFile).CombinedOutput(); err != nil {
		t.Fatalf("start_service: %v\n%s", err, out)
	}
	b, err := os.ReadFile(argsFile)
	if err != nil {
		t.Fatalf("start_service set no command: %v", err)
	}
	args := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(args) < 2 || args[0] != "/usr/bin/sharespot" || args[1] != "share" {
		t.Fatalf("command %q", args)
	}
	return args
}

// TestOpenWrtInit runs the init script on the shipped configuration and on
// one with every option set; checks that every flag of `sharespot share`
// a router needs is a UCI option the init script reads and turns into that
// flag; and that the real binary parses both command lines (it fails
// later: no server).
func TestOpenWrtInit(t *testing.T) {
	dir := t.TempDir()
	if out, err := exec.Command("sh", "-n", openwrtInit).CombinedOutput(); err != nil {
		t.Fatalf("sh -n: %v %s", err, out)
	}
	uci, err := os.ReadFile(openwrtConfig)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "bin"), 0o700); err != nil {
		t.Fatal(err)
	}
	bin, err := harness.BuildBinary(filepath.Join(dir, "bin"))
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, []byte("a CA the test does not reach\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	testable := strings.NewReplacer("option enabled '0'", "option enabled '1'",
		"'/etc/sharespot/state'", "'"+filepath.Join(dir, "state")+"'",
		"'/etc/sharespot/ca.pem'", "'"+caFile+"'",
		"'https://sharespot.example:8474'", "'http://127.0.0.1:1'", // nothing listens: share stops after parsing
	)
	shipped := strings.NewReplacer("option metrics ''", "option metrics '127.0.0.1:0'").Replace(testable.Replace(string(uci)))
	// Every option: the commented ones uncommented, the booleans set
	// away from their defaults.
	every := regexp.MustCompile(`(?m)^(\s*)#((?:option|list) )`).ReplaceAllString(shipped, "$1$2")
	every = strings.NewReplacer("option portal '1'", "option portal '0'", "option lan_dns '0'", "option lan_dns '1'",
		"option dashboard '0'", "option dashboard '1'", "option payouts '0'", "option payouts '1'").Replace(every)

	flags := shareFlags(t, bin)
	options := initOptions(t)
	lines := map[string][]string{"shipped": startService(t, dir, "shipped", shipped), "every": startService(t, dir, "every", every)}

	t.Run("shipped", func(t *testing.T) {
		line := strings.Join(lines["shipped"], " ")
		for _, want := range []string{"--gateway nftables", "--lan br-lan", "--uplink wwan0", "--ssid Sharespot", "--price 10", "--metrics 127.0.0.1:0", "--iface wlan0"} {
			if !strings.Contains(line, want) {
				t.Errorf("command %q lacks %q", line, want)
			}
		}
		if strings.Contains(line, "--no-portal") || strings.Contains(line, "--lan-dns") || strings.Contains(line, "--dashboard") {
			t.Errorf("command %q changes a default the configuration keeps", line)
		}
	})
	t.Run("every_flag_a_router_needs_is_an_option", func(t *testing.T) {
		args := lines["every"]
		for _, f := range flags {
			if _, ok := routerExcluded[f]; ok {
				if slices.Contains(args, "--"+f) {
					t.Errorf("--%s is given, but a router should not (%s)", f, routerExcluded[f])
				}
				continue
			}
			if !slices.Contains(args, "--"+f) && !slices.Contains(args, "--no-"+f) {
				t.Errorf("with every option set, the command lacks --%s: %q", f, args)
			}
			if _, ok := routerFixed[f]; ok {
				continue
			}
			opt := strings.ReplaceAll(f, "-", "_")
			if !options[opt] {
				t.Errorf("share's --%s has no UCI option %q read by the init script (or add it to routerExcluded with a reason)", f, opt)
			}
			if !regexp.MustCompile(`(?m)^\s*#?(option|list) ` + opt + ` `).Match(uci) {
				t.Errorf("the shipped configuration does not show option %q (commented out if it has no default)", opt)
			}
		}
		for opt := range options {
			if f := strings.ReplaceAll(opt, "_", "-"); opt != "enabled" && opt != "state" && !slices.Contains(flags, f) {
				t.Errorf("the init script reads option %q, but share has no --%s", opt, f)
			}
		}
	})
	// The real binary parses both command lines: it fails later (no
	// server), never on a flag.
	for name, args := range lines {
		t.Run("binary_parses_"+name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, bin, args[1:]...)
			cmd.Env = append(harness.CleanEnv(), "XDG_CONFIG_HOME="+filepath.Join(dir, "config"))
			out, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 1 || strings.Contains(string(out), "--help") {
				t.Fatalf("share with no server reachable: %v (want exit status 1, a failure after parsing):\n%s", err, out)
			}
			t.Logf("share stopped as expected without a server: %s", strings.TrimSpace(string(out)))
		})
	}
}

// openwrtStubs stand in for the OpenWrt buildroot's rules.mk, package.mk
// and golang-package.mk, with what the recipe's source settings need;
// openwrt.mk includes the recipe and runs its Build/Prepare, or prints
// where its source comes from.
var openwrtStubs = map[string]string{
	"rules.mk":           "CP:=cp -fpR\nBUILD_DIR:=$(TOPDIR)/build_dir\n",
	"include/package.mk": "PKG_BUILD_DIR ?= $(BUILD_DIR)/$(PKG_NAME)-$(PKG_VERSION)\nBuildPackage=\n",
	"feeds/packages/lang/golang/golang-package.mk": "GoBinPackage=\nGO_ARCH_DEPENDS:=\n",
	"openwrt.mk": "include Makefile\n.PHONY: prepare source\nprepare:\n\t$(Build/Prepare)\n" +
		"source:\n\t@echo 'build=$(PKG_BUILD_DIR) proto=$(PKG_SOURCE_PROTO) url=$(PKG_SOURCE_URL) version=$(PKG_SOURCE_VERSION)'\n",
}

// TestOpenWrtSource: the recipe builds from a source that exists. By
// default, the checkout that holds it: its Build/Prepare (run with the
// buildroot's makefiles stubbed) copies a module from which the device
// build's packages all load; a wrong SHARESPOT_SRC fails saying what to
// set; SHARESPOT_GIT_REF builds a commit by git.
func TestOpenWrtSource(t *testing.T) {
	requireTool(t, "make")
	top := t.TempDir()
	for name, text := range openwrtStubs {
		p := filepath.Join(top, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	makeRecipe := func(t *testing.T, args ...string) (string, error) {
		t.Helper()
		args = append([]string{"-s", "-C", openwrtDir, "-f", filepath.Join(top, "openwrt.mk"), "TOPDIR=" + top, "INCLUDE_DIR=" + filepath.Join(top, "include")}, args...)
		cmd := exec.Command("make", args...)
		cmd.Env = slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "SHARESPOT_") })
		out, err := cmd.CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	fields := func(t *testing.T, line string) map[string]string {
		t.Helper()
		m := map[string]string{}
		for _, f := range strings.Fields(line) {
			k, v, _ := strings.Cut(f, "=")
			m[k] = v
		}
		return m
	}

	t.Run("local_checkout", func(t *testing.T) {
		out, err := makeRecipe(t, "source")
		if err != nil {
			t.Fatalf("make source: %v\n%s", err, out)
		}
		src := fields(t, out)
		if src["proto"] != "" || src["version"] != "" {
			t.Fatalf("by default the recipe fetches %s %s: want the local checkout", src["url"], src["version"])
		}
		if out, err := makeRecipe(t, "prepare"); err != nil {
			t.Fatalf("make prepare: %v\n%s", err, out)
		}
		build := src["build"]
		gomod, err := os.ReadFile(filepath.Join(build, "go.mod"))
		if err != nil || !strings.HasPrefix(string(gomod), "module github.com/sharespot/sharespot\n") {
			t.Fatalf("the prepared source's go.mod: %v %.60q", err, gomod)
		}
		list := exec.Command("go", "list", "-tags", "device", "-deps", "./cmd/sharespot")
		list.Dir, list.Env = build, append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=readonly")
		if out, err := list.CombinedOutput(); err != nil {
			t.Fatalf("the device build's packages do not load from the prepared source: %v\n%s", err, out)
		}
		var tests []string
		filepath.WalkDir(build, func(p string, d os.DirEntry, err error) error {
			if err == nil && (strings.HasSuffix(p, "_test.go") || d.Name() == "testdata") {
				tests = append(tests, p)
			}
			return err
		})
		if len(tests) > 0 {
			t.Errorf("the prepared source holds tests: %q", tests[:min(3, len(tests))])
		}
	})
	t.Run("not_a_checkout", func(t *testing.T) {
		out, err := makeRecipe(t, "prepare", "SHARESPOT_SRC="+t.TempDir())
		if err == nil || !strings.Contains(out, "is not a Sharespot checkout") || !strings.Contains(out, "SHARESPOT_GIT_REF") {
			t.Fatalf("make prepare with no checkout: %v\n%s", err, out)
		}
	})
	t.Run("git_commit", func(t *testing.T) {
		head, err := exec.Command("git", "rev-parse", "HEAD").Output()
		if err != nil {
			t.Fatalf("git rev-parse HEAD: %v", err)
		}
		ref := strings.TrimSpace(string(head))
		out, err := makeRecipe(t, "source", "SHARESPOT_GIT_REF="+ref)
		if err != nil {
			t.Fatalf("make source: %v\n%s", err, out)
		}
		src := fields(t, out)
		if src["proto"] != "git" || src["url"] != "https://github.com/sharespot/sharespot.git" || src["version"] != ref {
			t.Fatalf("SHARESPOT_GIT_REF=%s: %s", ref, out)
		}
		if err := exec.Command("git", "cat-file", "-e", src["version"]+"^{commit}").Run(); err != nil {
			t.Fatalf("the recipe's git reference %s is not a commit: %v", src["version"], err)
		}
	})
}

// requireTool skips t when the program is not on PATH, or fails it in CI
// (CI=true), where a skipped test proves nothing.
func requireTool(t *testing.T, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is required in CI", name)
		}
		t.Skipf("no %s", name)
	}
}
