// Package loadgen drives load against a running Sharespot server for
// `sharespot bench` and the chaos test: complete paid flows with top-ups
// from simulated hosts and guests, open loop at a target rate; idle inbox
// streams held open to weigh the server's memory per stream; and the relay
// latency of host-originated messages. It also starts a server process of
// its own (Spawn) on a temporary database, which it can kill and restart.
//
// Nothing here is a mock: every call crosses HTTP/2 to the real server,
// and hosts answer their inbox with the real host agent (client.Host).
package loadgen

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"
)

// Samples collects latencies and summarises them from the sorted samples
// (exact percentiles; a bench run keeps at most a few million).
type Samples struct {
	mu sync.Mutex
	d  []time.Duration
}

// Add records one latency.
func (s *Samples) Add(d time.Duration) {
	s.mu.Lock()
	s.d = append(s.d, d)
	s.mu.Unlock()
}

// Summary is a latency distribution in milliseconds.
type Summary struct {
	Count int     `json:"count"`
	P50   float64 `json:"p50_ms"`
	P99   float64 `json:"p99_ms"`
	P999  float64 `json:"p999_ms"`
	Max   float64 `json:"max_ms"`
	Mean  float64 `json:"mean_ms"`
}

// Summary returns the distribution so far.
func (s *Samples) Summary() Summary {
	s.mu.Lock()
	d := slices.Clone(s.d)
	s.mu.Unlock()
	return Summarize(d)
}

// Summarize returns the distribution of d (which it sorts).
func Summarize(d []time.Duration) Summary {
	if len(d) == 0 {
		return Summary{}
	}
	slices.Sort(d)
	var sum time.Duration
	for _, x := range d {
		sum += x
	}
	return Summary{Count: len(d), P50: ms(Percentile(d, 50)), P99: ms(Percentile(d, 99)), P999: ms(Percentile(d, 99.9)),
		Max: ms(d[len(d)-1]), Mean: ms(sum / time.Duration(len(d)))}
}

// Percentile returns the p-th percentile of sorted samples (nearest rank).
func Percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted))*p/100+0.999999) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// Errors counts errors by kind.
type Errors struct {
	mu sync.Mutex
	m  map[string]int
	ex map[string]string // one example message per kind
}

// Add counts err under kind (the step and the Connect code, say).
func (e *Errors) Add(kind string, err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.m == nil {
		e.m, e.ex = map[string]int{}, map[string]string{}
	}
	e.m[kind]++
	if _, ok := e.ex[kind]; !ok && err != nil {
		e.ex[kind] = err.Error()
	}
}

// Counts returns the counts by kind.
func (e *Errors) Counts() map[string]int {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make(map[string]int, len(e.m))
	for k, v := range e.m {
		out[k] = v
	}
	return out
}

// Examples returns one error message per kind.
func (e *Errors) Examples() map[string]string {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make(map[string]string, len(e.ex))
	for k, v := range e.ex {
		out[k] = v
	}
	return out
}

// WriteJSON writes v as indented JSON.
func WriteJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// writeLatencyTable writes one row per named distribution.
func writeLatencyTable(w io.Writer, names []string, sums map[string]Summary) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "step\tcount\tp50 ms\tp99 ms\tp99.9 ms\tmax ms\t")
	for _, n := range names {
		s, ok := sums[n]
		if !ok {
			continue
		}
		fmt.Fprintf(tw, "%s\t%d\t%.2f\t%.2f\t%.2f\t%.2f\t\n", n, s.Count, s.P50, s.P99, s.P999, s.Max)
	}
	tw.Flush()
}

func writeCounts(w io.Writer, title string, m map[string]int, examples map[string]string) {
	if len(m) == 0 {
		return
	}
	fmt.Fprintln(w, title)
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		ex := examples[k]
		if len(ex) > 160 {
			ex = ex[:160] + "…"
		}
		if ex != "" {
			ex = "  e.g. " + strings.ReplaceAll(ex, "\n", " ")
		}
		fmt.Fprintf(w, "  %-40s %7d%s\n", k, m[k], ex)
	}
}
