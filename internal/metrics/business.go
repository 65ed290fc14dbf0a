package metrics

import (
	"context"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
)

// Business is what the deployment's database says about its business at
// one moment, read in one transaction: sessions, money, escrow and the
// Stripe outbox. Money is in each currency's minor unit (cents for EUR),
// as the ledger keeps it.
type Business struct {
	// Sessions counts the sessions in each state.
	Sessions map[sharespotv1.SessionState]int64
	// Verified and Unverified count the settled sessions that were granted
	// data, by the evidence their bill rested on (usage mode).
	Verified, Unverified int64
	// SoldBytes is the bytes billed over all settled sessions.
	SoldBytes int64
	// Money is each currency's figures.
	Money map[string]Money
	// Overdue counts the sessions that hold escrow past their deadline
	// (a grant, top-up or close deadline the sweeper has not acted on);
	// OldestDeadlineMS is the earliest of those deadlines (0: none).
	Overdue, OldestDeadlineMS int64
	// OutboxPending and OutboxFailed count the Stripe calls waiting and
	// those Stripe refused for good; OutboxOldestMS is when the oldest
	// waiting one was queued (0: none).
	OutboxPending, OutboxFailed, OutboxOldestMS int64
}

// Money is a currency's figures, in its minor unit: what settled sessions
// charged their guests (the hosts' shares and the fees), the platform's
// fees, what went back to guests (unused escrow, refunds of grants that
// never came, card holds released), and what escrow holds now.
type Money struct {
	Charged, Fees, Refunded, Escrow int64
}

// BusinessOptions tunes the business collector; zero values take the
// defaults.
type BusinessOptions struct {
	// TTL is how long one read of the figures serves scrapes (5 s).
	TTL time.Duration
	// ReadTimeout bounds one read of the figures (2 s).
	ReadTimeout time.Duration
	// AuditEvery is how often the full audit runs (1 min), in the
	// background: a scrape never waits for it.
	AuditEvery time.Duration
	// AuditTimeout bounds one audit (1 min).
	AuditTimeout time.Duration
}

// Defaults of BusinessOptions.
const (
	DefaultBusinessTTL  = 5 * time.Second
	DefaultAuditEvery   = time.Minute
	defaultReadTimeout  = 2 * time.Second
	defaultAuditTimeout = time.Minute
)

// sessionStates are the states sessions are counted under, each present
// (at 0 when none) so that a state's series never disappears.
var sessionStates = []sharespotv1.SessionState{
	sharespotv1.SessionState_SESSION_STATE_REQUESTED,
	sharespotv1.SessionState_SESSION_STATE_QUOTED,
	sharespotv1.SessionState_SESSION_STATE_PAID,
	sharespotv1.SessionState_SESSION_STATE_CONFIRMED,
	sharespotv1.SessionState_SESSION_STATE_ACTIVE,
	sharespotv1.SessionState_SESSION_STATE_ENDING,
	sharespotv1.SessionState_SESSION_STATE_ENDED,
}

// StateName is the label a session state is counted under ("active").
func StateName(s sharespotv1.SessionState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "SESSION_STATE_"))
}

// deployment is said in the help of every figure read from the database:
// all replicas share it, so each reports the same value.
const deployment = " Read from the database: a total for the whole deployment, the same on every replica (aggregate with max, never sum)."

// BusinessCollector exports the business figures: read from the database
// at most once per TTL (concurrent scrapes share one read), and the
// result of the full audit, which runs in the background every AuditEvery.
// A figure that cannot be read is absent from the scrape and counted in
// sharespot_business_read_errors_total.
type BusinessCollector struct {
	read  func(context.Context) (Business, error)
	audit func(context.Context) (bool, error)
	now   func() time.Time
	opt   BusinessOptions

	mu     sync.Mutex // held during a read: scrapes meanwhile wait for it
	fig    Business
	figOK  bool
	readAt time.Time // real time of the last read (for the TTL)

	amu       sync.Mutex
	auditing  bool
	auditAt   time.Time // real time the last audit started
	audited   bool      // an audit has completed
	auditOK   bool
	auditTime time.Time // the clock's time when the last audit completed
	auditDur  time.Duration

	errs                                          *prometheus.CounterVec
	sessions, settled, sold                       *prometheus.Desc
	charged, fees, refunded, escrow               *prometheus.Desc
	overdue, overdueAge                           *prometheus.Desc
	outbox, outboxAge                             *prometheus.Desc
	auditConsistent, auditTimestamp, auditSeconds *prometheus.Desc
}

var _ prometheus.Collector = (*BusinessCollector)(nil)

// NewBusiness returns the business collector. read reads the figures in
// one read transaction; audit runs the full audit and reports whether
// money and sessions are consistent; now is the server's clock (ages and
// the audit's time).
func NewBusiness(read func(context.Context) (Business, error), audit func(context.Context) (bool, error), now func() time.Time, opt BusinessOptions) *BusinessCollector {
	if opt.TTL <= 0 {
		opt.TTL = DefaultBusinessTTL
	}
	if opt.ReadTimeout <= 0 {
		opt.ReadTimeout = defaultReadTimeout
	}
	if opt.AuditEvery <= 0 {
		opt.AuditEvery = DefaultAuditEvery
	}
	if opt.AuditTimeout <= 0 {
		opt.AuditTimeout = defaultAuditTimeout
	}
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(Namespace+"_"+name, help, labels, nil)
	}
	c := &BusinessCollector{read: read, audit: audit, now: now, opt: opt,
		errs: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: "business_read_errors_total",
			Help: "Reads of the business figures (what=figures) or audits (what=audit) that failed on this replica."}, []string{"what"}),
		sessions: d("sessions", "Sessions by state."+deployment, "state"),
		settled: d("sessions_settled_total", "Sessions settled after data was granted, by the evidence of usage their bill rested on: "+
			"verified (the guest's signed acknowledgments) or unverified (the host's count)."+deployment, "usage"),
		sold: d("sold_bytes_total", "Bytes billed to guests in settled sessions."+deployment),
		charged: d("charged_minor_units_total", "Money settled sessions charged their guests (hosts' shares and fees), "+
			"in the currency's minor unit (cents for EUR)."+deployment, "currency"),
		fees: d("fees_minor_units_total", "The platform's fees from settled sessions, in the currency's minor unit."+deployment, "currency"),
		refunded: d("refunded_minor_units_total", "Money given back to guests of settled sessions (unused escrow, payments never granted, "+
			"card holds released), in the currency's minor unit."+deployment, "currency"),
		escrow: d("escrow_held_minor_units", "Money held in escrow now (paid, not yet settled), in the currency's minor unit."+deployment, "currency"),
		overdue: d("escrow_overdue_sessions", "Sessions holding escrow past their deadline (grant, top-up or close deadline): "+
			"the sweeper settles or refunds them within a second normally."+deployment),
		overdueAge: d("escrow_overdue_seconds", "How long past its deadline the most overdue session holding escrow is (0 when none)."+deployment),
		outbox: d("outbox_ops", "Stripe calls in the outbox: pending (queued or retrying) or failed (refused by Stripe; "+
			"the operator settles them by hand)."+deployment, "state"),
		outboxAge: d("outbox_oldest_pending_age_seconds", "Age of the oldest pending Stripe call (0 when none)."+deployment),
		auditConsistent: d("audit_consistent", "1 when the last full audit found the ledger consistent, no ended session "+
			"holding escrow and every host's record matching its sessions (sharespot wallet audit), 0 when not; absent until the first audit completes. "+
			"Each replica audits the shared database in the background."),
		auditTimestamp: d("audit_last_run_timestamp_seconds", "When the last full audit completed (Unix time)."),
		auditSeconds:   d("audit_duration_seconds", "How long the last full audit took."),
	}
	c.errs.WithLabelValues("figures")
	c.errs.WithLabelValues("audit")
	return c
}

// Describe implements prometheus.Collector.
func (c *BusinessCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.sessions, c.settled, c.sold, c.charged, c.fees, c.refunded, c.escrow,
		c.overdue, c.overdueAge, c.outbox, c.outboxAge, c.auditConsistent, c.auditTimestamp, c.auditSeconds} {
		ch <- d
	}
	c.errs.Describe(ch)
}

// Collect implements prometheus.Collector.
func (c *BusinessCollector) Collect(ch chan<- prometheus.Metric) {
	c.startAudit()
	if b, ok := c.figures(); ok {
		c.collectFigures(ch, b)
	}
	c.amu.Lock()
	if c.audited {
		ok := 0.0
		if c.auditOK {
			ok = 1
		}
		ch <- prometheus.MustNewConstMetric(c.auditConsistent, prometheus.GaugeValue, ok)
		ch <- prometheus.MustNewConstMetric(c.auditTimestamp, prometheus.GaugeValue, float64(c.auditTime.UnixMilli())/1000)
		ch <- prometheus.MustNewConstMetric(c.auditSeconds, prometheus.GaugeValue, c.auditDur.Seconds())
	}
	c.amu.Unlock()
	c.errs.Collect(ch)
}

// figures returns the figures, read again when older than the TTL.
func (c *BusinessCollector) figures() (Business, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.readAt.IsZero() && time.Since(c.readAt) < c.opt.TTL {
		return c.fig, c.figOK
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.opt.ReadTimeout)
	defer cancel()
	b, err := c.read(ctx)
	c.readAt, c.fig, c.figOK = time.Now(), b, err == nil
	if err != nil {
		c.errs.WithLabelValues("figures").Inc()
	}
	return c.fig, c.figOK
}

func (c *BusinessCollector) collectFigures(ch chan<- prometheus.Metric, b Business) {
	gauge := func(d *prometheus.Desc, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v), labels...)
	}
	counter := func(d *prometheus.Desc, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	for _, s := range sessionStates {
		gauge(c.sessions, b.Sessions[s], StateName(s))
	}
	counter(c.settled, b.Verified, "verified")
	counter(c.settled, b.Unverified, "unverified")
	counter(c.sold, b.SoldBytes)
	curs := make([]string, 0, len(b.Money))
	for cur := range b.Money {
		curs = append(curs, cur)
	}
	sort.Strings(curs)
	for _, cur := range curs {
		m := b.Money[cur]
		counter(c.charged, m.Charged, cur)
		counter(c.fees, m.Fees, cur)
		counter(c.refunded, m.Refunded, cur)
		gauge(c.escrow, m.Escrow, cur)
	}
	now := c.now().UnixMilli()
	age := func(d *prometheus.Desc, sinceMS int64) {
		v := 0.0
		if sinceMS > 0 {
			v = max(0, float64(now-sinceMS)/1000)
		}
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v)
	}
	gauge(c.overdue, b.Overdue)
	age(c.overdueAge, b.OldestDeadlineMS)
	gauge(c.outbox, b.OutboxPending, "pending")
	gauge(c.outbox, b.OutboxFailed, "failed")
	age(c.outboxAge, b.OutboxOldestMS)
}

// startAudit starts an audit in the background when none is under way
// and the last started AuditEvery ago or more.
func (c *BusinessCollector) startAudit() {
	c.amu.Lock()
	defer c.amu.Unlock()
	if c.auditing || (!c.auditAt.IsZero() && time.Since(c.auditAt) < c.opt.AuditEvery) {
		return
	}
	c.auditing, c.auditAt = true, time.Now()
	go c.runAudit()
}

func (c *BusinessCollector) runAudit() {
	ctx, cancel := context.WithTimeout(context.Background(), c.opt.AuditTimeout)
	defer cancel()
	start := time.Now()
	ok, err := c.audit(ctx)
	c.amu.Lock()
	defer c.amu.Unlock()
	c.auditing = false
	if err != nil {
		c.errs.WithLabelValues("audit").Inc()
		return // the last result stands, with its time
	}
	c.audited, c.auditOK, c.auditTime, c.auditDur = true, ok, c.now(), time.Since(start)
}
