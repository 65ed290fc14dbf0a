package deploy

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/prometheus/promql/parser"
)

// The units a PromQL expression's values can have, as unitOf infers them.
const (
	unitSeconds   = "s"
	unitTimestamp = "timestamp" // Unix seconds
	unitBytes     = "bytes"
	unitMoney     = "money" // a currency's minor unit
	unitCount     = "count"
	unitRatio     = "ratio"
	unitScalar    = "scalar" // a number without a unit
	perSecond     = "/s"
)

// panelUnits are the Grafana units a panel may show each unit in.
var panelUnits = map[string][]string{
	unitSeconds:             {"s", "dtdurations"},
	unitTimestamp:           {"dateTimeAsIso", "dateTimeFromNow"},
	unitBytes:               {"bytes", "decbytes"},
	unitBytes + perSecond:   {"Bps", "binBps"},
	unitMoney:               {"suffix: minor units"},
	unitCount:               {"short", "none"},
	unitCount + perSecond:   {"reqps", "ops", "cps"},
	unitRatio:               {"percentunit"},
	unitSeconds + perSecond: {"percentunit"}, // rate of a seconds counter: busy fraction
}

// checkUnits reports a panel whose queries have different units, or whose
// Grafana unit does not show theirs.
func checkUnits(panelUnit string, units []string) error {
	if len(units) == 0 {
		return nil
	}
	for i, u := range units[1:] {
		if u != units[0] {
			return fmt.Errorf("mixes units: query 1 is in %s, query %d in %s", units[0], i+2, u)
		}
	}
	if !slices.Contains(panelUnits[units[0]], panelUnit) {
		return fmt.Errorf("unit %q shows %s wrongly: want one of %q", panelUnit, units[0], panelUnits[units[0]])
	}
	return nil
}

// metricUnit is the unit of a metric's values by its name, as
// Prometheus's naming conventions give it.
func metricUnit(name string) string {
	name = strings.TrimSuffix(name, "_total")
	switch {
	case strings.HasSuffix(name, "_count"), strings.HasSuffix(name, "_bucket"):
		return unitCount // a histogram's observations
	}
	name = strings.TrimSuffix(name, "_sum")
	switch {
	case strings.HasSuffix(name, "_timestamp_seconds"):
		return unitTimestamp
	case strings.HasSuffix(name, "_seconds"):
		return unitSeconds
	case strings.HasSuffix(name, "_bytes"):
		return unitBytes
	case strings.HasSuffix(name, "_minor_units"):
		return unitMoney
	}
	return unitCount
}

// unitOf infers the unit of an expression's values from the metrics it
// selects and what it does with them: a rate is per second, a quotient
// of like with like a ratio, a timestamp less a timestamp seconds. Adding
// or comparing different units is an error.
func unitOf(e parser.Expr) (string, error) {
	switch e := e.(type) {
	case *parser.NumberLiteral:
		return unitScalar, nil
	case *parser.StringLiteral:
		return unitScalar, nil
	case *parser.ParenExpr:
		return unitOf(e.Expr)
	case *parser.StepInvariantExpr:
		return unitOf(e.Expr)
	case *parser.UnaryExpr:
		return unitOf(e.Expr)
	case *parser.SubqueryExpr:
		return unitOf(e.Expr)
	case *parser.MatrixSelector:
		return unitOf(e.VectorSelector)
	case *parser.VectorSelector:
		if e.Name == "" {
			return "", fmt.Errorf("a selector without a metric name has no known unit")
		}
		return metricUnit(e.Name), nil
	case *parser.AggregateExpr:
		switch e.Op {
		case parser.COUNT, parser.COUNT_VALUES:
			return unitCount, nil
		}
		return unitOf(e.Expr)
	case *parser.Call:
		return callUnit(e)
	case *parser.BinaryExpr:
		return binaryUnit(e)
	}
	return "", fmt.Errorf("unit of %T unknown", e)
}

func callUnit(e *parser.Call) (string, error) {
	switch e.Func.Name {
	case "time", "timestamp":
		return unitTimestamp, nil
	case "vector", "scalar":
		return unitOf(e.Args[0])
	case "absent", "absent_over_time", "count_over_time", "changes", "resets":
		return unitCount, nil
	case "histogram_quantile":
		// The unit of the buckets' bounds: the histogram's own.
		var name string
		parser.Inspect(e.Args[1], func(n parser.Node, _ []parser.Node) error {
			if vs, ok := n.(*parser.VectorSelector); ok && name == "" {
				name = vs.Name
			}
			return nil
		})
		if !strings.HasSuffix(name, "_bucket") {
			return "", fmt.Errorf("histogram_quantile of %q, not of a histogram's buckets", name)
		}
		return metricUnit(strings.TrimSuffix(name, "_bucket")), nil
	case "rate", "irate", "deriv":
		u, err := unitOf(e.Args[0])
		if err != nil {
			return "", err
		}
		if strings.HasSuffix(u, perSecond) {
			return "", fmt.Errorf("%s of a rate (%s)", e.Func.Name, u)
		}
		return u + perSecond, nil
	}
	for _, a := range e.Args { // increase, delta, *_over_time, clamp, round, label_replace…: the argument's unit
		if a.Type() == parser.ValueTypeVector || a.Type() == parser.ValueTypeMatrix {
			return unitOf(a)
		}
	}
	return "", fmt.Errorf("unit of %s() unknown", e.Func.Name)
}

func binaryUnit(e *parser.BinaryExpr) (string, error) {
	l, err := unitOf(e.LHS)
	if err != nil {
		return "", err
	}
	r, err := unitOf(e.RHS)
	if err != nil {
		return "", err
	}
	switch {
	case e.Op.IsSetOperator():
		if e.Op == parser.LOR && l != r {
			return "", fmt.Errorf("%s or %s", l, r)
		}
		return l, nil
	case e.Op.IsComparisonOperator():
		if l != r && l != unitScalar && r != unitScalar {
			return "", fmt.Errorf("compares %s with %s", l, r)
		}
		if e.ReturnBool {
			return unitCount, nil
		}
		return l, nil
	case l == unitScalar:
		return r, nil
	case r == unitScalar:
		return l, nil
	}
	switch e.Op {
	case parser.ADD, parser.SUB:
		switch {
		case e.Op == parser.SUB && l == unitTimestamp && r == unitTimestamp:
			return unitSeconds, nil
		case l == unitTimestamp && r == unitSeconds:
			return unitTimestamp, nil
		case l != r:
			return "", fmt.Errorf("%s %s %s", l, e.Op, r)
		}
		return l, nil
	case parser.DIV:
		if l == r {
			return unitRatio, nil
		}
		return l + "/" + r, nil
	}
	return l + e.Op.String() + r, nil
}

// TestUnitOf: the inference on the kinds of expression the dashboard
// uses, and the mixes it must refuse.
func TestUnitOf(t *testing.T) {
	p := parser.NewParser(parser.Options{})
	for _, c := range []struct{ expr, want string }{
		{`sharespot_sessions`, unitCount},
		{`max by (state) (sharespot_sessions)`, unitCount},
		{`sum by (step) (rate(sharespot_rpc_total[5m]))`, unitCount + perSecond},
		{`histogram_quantile(0.99, sum by (le) (rate(sharespot_rpc_duration_seconds_bucket[5m])))`, unitSeconds},
		{`rate(sharespot_sold_bytes_total[5m])`, unitBytes + perSecond},
		{`max(sharespot_sold_bytes_total)`, unitBytes},
		{`max by (currency) (increase(sharespot_charged_minor_units_total[1h]))`, unitMoney},
		{`sharespot_escrow_held_minor_units`, unitMoney},
		{`time() - sharespot_audit_last_run_timestamp_seconds`, unitSeconds},
		{`sharespot_audit_last_run_timestamp_seconds`, unitTimestamp},
		{`max(x_total{usage="verified"}) / max(sum by (instance) (x_total))`, unitRatio},
		{`sharespot_inbox_oldest_age_seconds > 60`, unitSeconds},
		{`count(sharespot_sessions)`, unitCount},
		{`sharespot_sold_bytes_total / sharespot_sessions`, unitBytes + "/" + unitCount},
		{`-sharespot_sessions * 2`, unitCount},
		{`rate(x_seconds_count[5m])`, unitCount + perSecond},
	} {
		e, err := p.ParseExpr(c.expr)
		if err != nil {
			t.Fatalf("%s: %v", c.expr, err)
		}
		if got, err := unitOf(e); err != nil || got != c.want {
			t.Errorf("unitOf(%s) = %q, %v; want %q", c.expr, got, err, c.want)
		}
	}
	for _, bad := range []string{
		`sharespot_sold_bytes_total + sharespot_sessions`,
		`sharespot_escrow_held_minor_units > sharespot_sessions`,
		`rate(rate(x_total[5m])[5m:])`,
		`{job="x"}`,
	} {
		e, err := p.ParseExpr(bad)
		if err != nil {
			t.Fatalf("%s: %v", bad, err)
		}
		if got, err := unitOf(e); err == nil {
			t.Errorf("unitOf(%s) = %q, want an error", bad, got)
		}
	}
	for _, c := range []struct {
		unit  string
		units []string
		ok    bool
	}{
		{"short", []string{unitCount, unitCount}, true},
		{"short", []string{unitCount, unitSeconds}, false}, // depth and age on one axis
		{"short", []string{unitCount, unitCount + perSecond}, false},
		{"s", []string{unitCount}, false},
		{"bytes", []string{unitBytes, unitBytes}, true},
		{"suffix: minor units", []string{unitMoney, unitMoney, unitMoney}, true},
		{"short", []string{unitMoney}, false},
	} {
		if err := checkUnits(c.unit, c.units); (err == nil) != c.ok {
			t.Errorf("checkUnits(%q, %v) = %v, want ok=%v", c.unit, c.units, err, c.ok)
		}
	}
}
