// Package deploy holds the deployment files (deploy/…) and the tests that
// check them against the real thing: the alert rules and the dashboard
// parse with Prometheus's own parsers and name only metrics a real server
// or host exports, no dashboard panel mixes units, promtool passes the
// rules, their unit tests and a real scrape; the systemd units pass
// systemd-analyze verify.
package deploy

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/guest"
	"github.com/sharespot/sharespot/internal/harness"
	"github.com/sharespot/sharespot/internal/metrics"
	"github.com/sharespot/sharespot/internal/seal"
	"github.com/sharespot/sharespot/internal/server"
)

// flowServer starts a real server (with a bus configured: unreachable,
// so its gauge is there) and runs one paid flow through it, so that every
// business figure has a series (money by currency), and waits for its
// first audit.
func flowServer(t *testing.T) *harness.Env {
	t.Helper()
	ctx := context.Background()
	env := harness.Start(t, func(c *server.Config) { c.Bus = "nats://127.0.0.1:1" })
	host, gc := env.Device(t, "host"), env.Device(t, "guest")
	env.Fund(t, gc, "EUR", 1000)
	res, err := host.Hotspots.Register(ctx, connect.NewRequest(&sharespotv1.RegisterRequest{Instruction: harness.BenchInstruction(1)}))
	if err != nil {
		t.Fatal(err)
	}
	if err := harness.PaidFlow(ctx, host, res.Msg.Hotspot, &guest.Guest{C: gc, Suites: []seal.Suite{seal.Preset}}); err != nil {
		t.Fatal(err)
	}
	for end := time.Now().Add(30 * time.Second); !gathers(t, env.Srv.Registry(), "sharespot_audit_consistent"); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatal("the server's first audit did not complete within 30 s")
		}
	}
	return env
}

func gathers(t *testing.T, g prometheus.Gatherer, name string) bool {
	t.Helper()
	fams, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() == name {
			return true
		}
	}
	return false
}

// exported returns the metric families a real server (after a paid flow)
// and a host's gateway export.
func exported(t *testing.T) map[string]bool {
	t.Helper()
	env := flowServer(t)
	names := map[string]bool{}
	add := func(g prometheus.Gatherer) {
		fams, err := g.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range fams {
			names[f.GetName()] = true
		}
	}
	add(env.Srv.Registry())
	reg := prometheus.NewRegistry()
	metrics.NewGateway(reg)
	add(reg)
	return names
}

var suffix = regexp.MustCompile(`_(bucket|count|sum)$`)

// selectors returns the metric names an expression selects.
func selectors(t *testing.T, p parser.Parser, expr string) []string {
	t.Helper()
	e, err := p.ParseExpr(expr)
	if err != nil {
		t.Fatalf("%q: %v", expr, err)
	}
	var out []string
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		if vs, ok := n.(*parser.VectorSelector); ok {
			out = append(out, vs.Name)
		}
		return nil
	})
	return out
}

func checkNames(t *testing.T, where string, names []string, have map[string]bool) {
	t.Helper()
	for _, n := range names {
		if !strings.HasPrefix(n, "sharespot_") {
			continue // up, and other exporters' metrics
		}
		if !have[n] && !have[suffix.ReplaceAllString(n, "")] {
			t.Errorf("%s uses %s, which nothing exports", where, n)
		}
	}
}

func TestAlertRules(t *testing.T) {
	p := parser.NewParser(parser.Options{})
	groups, errs := rulefmt.ParseFile("prometheus/alerts.yml", false, model.UTF8Validation, p, slog.New(slog.DiscardHandler))
	for _, err := range errs {
		t.Error(err)
	}
	if len(errs) > 0 {
		t.FailNow()
	}
	have := exported(t)
	n := 0
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			n++
			if r.Alert == "" || r.Annotations["summary"] == "" || r.Labels["severity"] == "" {
				t.Errorf("rule %q: want an alert name, a severity and a summary", r.Alert)
			}
			checkNames(t, "alert "+r.Alert, selectors(t, p, r.Expr), have)
		}
	}
	if n < 8 {
		t.Errorf("%d rules: the file lost some", n)
	}
}

func TestGrafanaDashboard(t *testing.T) {
	b, err := os.ReadFile("grafana/sharespot.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		UID    string `json:"uid"`
		Panels []struct {
			Title       string `json:"title"`
			Type        string `json:"type"`
			FieldConfig struct {
				Defaults struct {
					Unit string `json:"unit"`
				} `json:"defaults"`
				Overrides []json.RawMessage `json:"overrides"`
			} `json:"fieldConfig"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("dashboard: %v", err)
	}
	have := exported(t)
	p := parser.NewParser(parser.Options{})
	vars := strings.NewReplacer("$__rate_interval", "5m", "$instance", ".*", "$host", ".*")
	used := map[string]bool{}
	for _, panel := range d.Panels {
		if panel.Type == "row" {
			continue
		}
		if len(panel.Targets) == 0 {
			t.Errorf("panel %q has no query", panel.Title)
		}
		var units []string
		for _, tg := range panel.Targets {
			names := selectors(t, p, vars.Replace(tg.Expr))
			checkNames(t, "panel "+panel.Title, names, have)
			for _, n := range names {
				used[suffix.ReplaceAllString(n, "")] = true
			}
			e, err := p.ParseExpr(vars.Replace(tg.Expr))
			if err != nil {
				t.Fatal(err)
			}
			u, err := unitOf(e)
			if err != nil {
				t.Errorf("panel %q: %q: %v", panel.Title, tg.Expr, err)
			}
			units = append(units, u)
		}
		if err := checkUnits(panel.FieldConfig.Defaults.Unit, units); err != nil {
			t.Errorf("panel %q: %v", panel.Title, err)
		}
		if len(panel.FieldConfig.Overrides) > 0 {
			t.Errorf("panel %q: field overrides (a second unit on the panel?): keep one unit to a panel", panel.Title)
		}
	}
	// Every metric of ours is on the dashboard somewhere.
	var missing []string
	for n := range have {
		if strings.HasPrefix(n, "sharespot_") && n != "sharespot_scrape_errors_total" && !used[n] {
			missing = append(missing, n)
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("metrics on no panel: %v", missing)
	}
}

// TestSystemdUnits runs systemd-analyze verify on each unit (with the
// binary at its installed path replaced by a freshly built one); any
// warning fails, since verify exits 0 on unknown keys and bad values.
func TestSystemdUnits(t *testing.T) {
	requireTool(t, "systemd-analyze")
	dir := t.TempDir()
	bin, err := harness.BuildBinary(dir)
	if err != nil {
		t.Fatal(err)
	}
	units, _ := filepath.Glob("systemd/*.service")
	if len(units) < 2 {
		t.Fatalf("units: %v", units)
	}
	for _, u := range units {
		t.Run(filepath.Base(u), func(t *testing.T) {
			b, err := os.ReadFile(u)
			if err != nil {
				t.Fatal(err)
			}
			for _, want := range []string{"NoNewPrivileges=yes", "ProtectSystem=strict", "DynamicUser=yes", "StateDirectory="} {
				if !strings.Contains(string(b), "\n"+want) {
					t.Errorf("not hardened: no %s", want)
				}
			}
			caps := regexp.MustCompile(`(?m)^AmbientCapabilities=(.*)$`).FindAllStringSubmatch(string(b), -1)
			for _, c := range caps {
				if c[1] != "" && (c[1] != "CAP_NET_ADMIN" || !strings.Contains(u, "host")) {
					t.Errorf("capability %q: only the host's kernel gateway gets one (CAP_NET_ADMIN)", c[1])
				}
			}
			copy := filepath.Join(dir, filepath.Base(u))
			if err := os.WriteFile(copy, []byte(strings.ReplaceAll(string(b), "/usr/local/bin/sharespot", bin)), 0o644); err != nil {
				t.Fatal(err)
			}
			out, err := exec.Command("systemd-analyze", "verify", copy).CombinedOutput()
			if err != nil || len(strings.TrimSpace(string(out))) > 0 {
				t.Fatalf("systemd-analyze verify %s: %v\n%s", u, err, out)
			}
		})
	}
}

// TestPromtool runs Prometheus's own checks: the alert rules (`promtool
// check rules`), their unit tests (`promtool test rules`: each business
// alert fires on a series that should trigger it) and a real server's
// scrape after a paid flow (`promtool check metrics`: promlint's
// conventions of names, units and help).
func TestPromtool(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("promtool is required in CI (apt-get install prometheus)")
		}
		t.Skip("no promtool (apt-get install prometheus)")
	}
	for _, args := range [][]string{{"check", "rules", "prometheus/alerts.yml"}, {"test", "rules", "prometheus/alerts_test.yml"}} {
		if out, err := exec.Command(promtool, args...).CombinedOutput(); err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	env := flowServer(t)
	res, err := http.Get(env.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	scrape, err := io.ReadAll(res.Body)
	if err != nil || res.StatusCode != http.StatusOK {
		t.Fatalf("/metrics: %s, %v", res.Status, err)
	}
	for _, name := range []string{"sharespot_charged_minor_units_total", "sharespot_audit_consistent", "sharespot_sessions"} {
		if !strings.Contains(string(scrape), "\n"+name) {
			t.Errorf("the scrape has no %s", name)
		}
	}
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = strings.NewReader(string(scrape))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
}
