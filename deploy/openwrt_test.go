package deploy

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sharespot/sharespot/internal/harness"
)

// openwrtShim stands in for OpenWrt's rc.common, functions.sh and procd.sh
// (not available off a router): config_get reads the package's UCI file,
// and procd's command is written out, one argument a line. It is a shim
// of OpenWrt, not a test of OpenWrt; what it checks is that the init
// script turns the shipped configuration into a command line the real
// binary accepts.
const openwrtShim = `
set -e
UCI=$1 INIT=$2 OUT=$3
config_load() { :; }
config_get() {
	v=$(awk -v o="$3" '$1 == "option" && $2 == o { sub(/^[^\047]*\047/, ""); sub(/\047.*$/, ""); print }' "$UCI")
	[ -n "$v" ] || v="$4"
	eval "$1=\$v"
}
config_get_bool() { config_get "$@"; }
procd_open_instance() { :; }
procd_close_instance() { :; }
procd_set_param() { if [ "$1" = command ]; then shift; printf '%s\n' "$@" > "$OUT"; fi; }
procd_append_param() { if [ "$1" = command ]; then shift; printf '%s\n' "$@" >> "$OUT"; fi; }
. "$INIT"
start_service
`

func TestOpenWrtInit(t *testing.T) {
	dir := t.TempDir()
	if out, err := exec.Command("sh", "-n", "openwrt/sharespot/files/sharespot.init").CombinedOutput(); err != nil {
		t.Fatalf("sh -n: %v %s", err, out)
	}
	uci, err := os.ReadFile("openwrt/sharespot/files/sharespot.config")
	if err != nil {
		t.Fatal(err)
	}
	conf := strings.NewReplacer("option enabled '0'", "option enabled '1'",
		"'/etc/sharespot/state'", "'"+filepath.Join(dir, "state")+"'",
		"'https://sharespot.example:8474'", "'http://127.0.0.1:1'", // nothing listens: share stops after parsing
		"option metrics ''", "option metrics '127.0.0.1:0'").Replace(string(uci))
	if err := os.WriteFile(filepath.Join(dir, "sharespot"), []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	shim := filepath.Join(dir, "shim.sh")
	if err := os.WriteFile(shim, []byte(openwrtShim), 0o700); err != nil {
		t.Fatal(err)
	}
	argsFile := filepath.Join(dir, "args")
	if out, err := exec.Command("sh", shim, filepath.Join(dir, "sharespot"), "openwrt/sharespot/files/sharespot.init", argsFile).CombinedOutput(); err != nil {
		t.Fatalf("start_service: %v\n%s", err, out)
	}
	b, err := os.ReadFile(argsFile)
	if err != nil {
		t.Fatalf("start_service set no command: %v", err)
	}
	args := strings.Split(strings.TrimSpace(string(b)), "\n")
	if args[0] != "/usr/bin/sharespot" || args[1] != "share" {
		t.Fatalf("command %q", args)
	}
	line := strings.Join(args, " ")
	for _, want := range []string{"--gateway nftables", "--lan br-lan", "--uplink wwan0", "--ssid Sharespot", "--price 10", "--metrics 127.0.0.1:0"} {
		if !strings.Contains(line, want) {
			t.Errorf("command %q lacks %q", line, want)
		}
	}
	// The real binary parses that command line: it fails later (no
	// server), never on a flag.
	if err := os.Mkdir(filepath.Join(dir, "bin"), 0o700); err != nil {
		t.Fatal(err)
	}
	bin, err := harness.BuildBinary(filepath.Join(dir, "bin"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args[1:]...)
	cmd.Env = append(harness.CleanEnv(), "XDG_CONFIG_HOME="+filepath.Join(dir, "config"))
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("share with no server reachable succeeded:\n%s", out)
	}
	for _, usage := range []string{"unknown flag", "unexpected argument", "--help", "expected"} {
		if strings.Contains(string(out), usage) {
			t.Fatalf("the binary refused the init script's command line:\n%s", out)
		}
	}
	t.Logf("share stopped as expected without a server: %s", strings.TrimSpace(string(out)))
}
