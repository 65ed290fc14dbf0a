package deptest

import (
	"strings"
	"testing"
)

const module = "github.com/sharespot/sharespot"

// serverSide is what no device-side package may link: the server's
// packages, its database drivers, its bus and its payment platform's SDK.
var serverSide = []Rule{
	{module + "/internal/store", "the server's database"},
	{module + "/internal/session", "the server's state machine"},
	{module + "/internal/ledger", "the server's ledger"},
	{module + "/internal/auth", "the server's sign-in"},
	{module + "/internal/account", "the server's accounts"},
	{module + "/internal/registry", "the server's registry"},
	{module + "/internal/relay", "the server's relay"},
	{module + "/internal/payment", "the server's wallet"},
	{module + "/internal/card", "the server's card platform"},
	{module + "/internal/api", "the server's API handlers"},
	{module + "/internal/server", "the server"},
	{module + "/internal/dashboard", "the server's dashboard"},
	{module + "/internal/bus", "the server's bus"},
	{module + "/internal/harness", "the test harness"},
	{module + "/internal/loadgen", "the load generator"},
	{"github.com/jackc/pgx", "PostgreSQL"},
	{"modernc.org/sqlite", "SQLite"},
	{"modernc.org/libc", "SQLite's C runtime"},
	{"github.com/mattn/go-sqlite3", "SQLite (cgo)"},
	{"github.com/nats-io", "NATS"},
	{"github.com/stripe", "Stripe"},
}

// device is the device side: the guest's and the host's code, what they
// share, and the device build of the binary.
var device = []struct{ pkg, tags string }{
	{"./internal/guest", ""},
	{"./internal/host", ""},
	{"./internal/client", ""},
	{"./internal/protocol", ""},
	{"./internal/forward", ""},
	{"./internal/gateway/...", ""},
	{"./internal/wifi", ""},
	{"./internal/portal", ""},
	{"./internal/metrics", ""},
	{"./cmd/sharespot", "device"},
}

// TestDeviceSideLinksNoServer: a guest or host build (a router, a phone)
// carries no server code.
func TestDeviceSideLinksNoServer(t *testing.T) {
	for _, d := range device {
		t.Run(strings.Trim(d.pkg+" "+d.tags, " "), func(t *testing.T) {
			deps, err := Deps("../../"+strings.TrimPrefix(d.pkg, "./"), d.tags, "", "")
			if err != nil {
				t.Fatal(err)
			}
			for _, v := range Violations(deps, serverSide) {
				t.Errorf("links %s", v)
			}
			t.Logf("%d packages, %d third-party", len(deps), ThirdParty(deps, module))
		})
	}
}

// TestDeviceBuildForRouters: the device build links no server code on the
// routers' architectures either (build tags per GOOS/GOARCH differ).
func TestDeviceBuildForRouters(t *testing.T) {
	for _, arch := range [][2]string{{"linux", "arm64"}, {"linux", "mipsle"}, {"linux", "arm"}} {
		t.Run(arch[0]+"/"+arch[1], func(t *testing.T) {
			deps, err := Deps("../../cmd/sharespot", "device", arch[0], arch[1])
			if err != nil {
				t.Fatal(err)
			}
			for _, v := range Violations(deps, serverSide) {
				t.Errorf("links %s", v)
			}
		})
	}
}

// TestTheCheckCanFail: the same check finds the server's packages where
// they are linked (the full binary, the server), so a clean result above
// means something.
func TestTheCheckCanFail(t *testing.T) {
	for _, pkg := range []string{"../../cmd/sharespot", "../../internal/server"} {
		deps, err := Deps(pkg, "", "", "")
		if err != nil {
			t.Fatal(err)
		}
		got := strings.Join(Violations(deps, serverSide), "\n")
		for _, want := range []string{"/internal/store ", "/internal/session ", "github.com/jackc/pgx/v5 "} {
			if !strings.Contains(got, want) {
				t.Errorf("%s: the check does not see %q; it found:\n%s", pkg, want, got)
			}
		}
	}
}

func TestViolations(t *testing.T) {
	deps := []string{"fmt", module + "/internal/storex", module + "/internal/store", "github.com/jackc/pgx/v5/pgconn"}
	got := Violations(deps, serverSide)
	want := []string{"github.com/jackc/pgx/v5/pgconn (PostgreSQL)", module + "/internal/store (the server's database)"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("Violations = %q, want %q (a sibling with a longer name must not match)", got, want)
	}
}
