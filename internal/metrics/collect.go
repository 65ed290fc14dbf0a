package metrics

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// InboxStats is what the inbox holds now: messages not yet acknowledged,
// and the commit time (Unix ms) of the oldest of them (0 when empty).
type InboxStats struct {
	Depth    int64
	OldestMS int64
}

// StoreGauges registers the gauges read at scrape time: the single
// writer's queue length (queue) and the inbox's depth and oldest
// unacknowledged message (inbox, given at most timeout; a failed read
// reports the gauges as absent and counts sharespot_scrape_errors_total).
func StoreGauges(reg prometheus.Registerer, queue func() int, inbox func(context.Context) (InboxStats, error), now func() time.Time) {
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: Namespace, Name: "store_write_queue_length",
		Help: "Writes waiting for the single writer (SQLite; always 0 on PostgreSQL)."}, func() float64 { return float64(queue()) }))
	reg.MustRegister(&inboxCollector{read: inbox, now: now,
		depth: prometheus.NewDesc(Namespace+"_inbox_depth", "Inbox messages stored and not yet acknowledged, all devices.", nil, nil),
		age:   prometheus.NewDesc(Namespace+"_inbox_oldest_age_seconds", "Age of the oldest unacknowledged inbox message (0 when none): how far delivery lags at worst.", nil, nil),
		errs:  prometheus.NewCounter(prometheus.CounterOpts{Namespace: Namespace, Name: "scrape_errors_total", Help: "Scrapes that could not read the database."}),
	})
}

type inboxCollector struct {
	read       func(context.Context) (InboxStats, error)
	now        func() time.Time
	depth, age *prometheus.Desc
	errs       prometheus.Counter
}

func (c *inboxCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.depth
	ch <- c.age
	c.errs.Describe(ch)
}

func (c *inboxCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	st, err := c.read(ctx)
	if err != nil {
		c.errs.Inc()
	} else {
		ch <- prometheus.MustNewConstMetric(c.depth, prometheus.GaugeValue, float64(st.Depth))
		age := 0.0
		if st.OldestMS > 0 {
			age = max(0, float64(c.now().UnixMilli()-st.OldestMS)/1000)
		}
		ch <- prometheus.MustNewConstMetric(c.age, prometheus.GaugeValue, age)
	}
	c.errs.Collect(ch)
}
