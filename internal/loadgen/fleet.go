package loadgen

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/client"
	"github.com/sharespot/sharespot/internal/gateway"
	"github.com/sharespot/sharespot/internal/guest"
	"github.com/sharespot/sharespot/internal/host"
	"github.com/sharespot/sharespot/internal/payment"
	"github.com/sharespot/sharespot/internal/seal"
	"github.com/sharespot/sharespot/internal/server"
	"github.com/sharespot/sharespot/internal/store"
)

const mb = 1_000_000

// HTTPClient returns an HTTP/2 client of its own (its own TCP connection,
// as a phone has), in cleartext to http:// servers, dialling from local
// when it is not nil (several 127.x source addresses give more ephemeral
// ports than one).
func HTTPClient(local net.IP) *http.Client { return HTTPClientTLS(local, nil) }

// HTTPClientTLS is HTTPClient with tc (a copy) for https:// servers; nil
// trusts the system's roots.
func HTTPClientTLS(local net.IP, tc *tls.Config) *http.Client {
	d := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}
	if local != nil {
		d.LocalAddr = &net.TCPAddr{IP: local}
	}
	if tc == nil {
		tc = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	tr := &http.Transport{
		DialContext:         d.DialContext,
		TLSClientConfig:     tc.Clone(),
		TLSHandshakeTimeout: 10 * time.Second,
		MaxIdleConnsPerHost: 4,
	}
	tr.Protocols = new(http.Protocols)
	tr.Protocols.SetHTTP2(true)
	tr.Protocols.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: tr}
}

// NewDevice returns a client for a fresh device key (not yet signed in).
func NewDevice(url, name string, hc *http.Client, direct bool) *client.Client {
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		panic(fmt.Sprintf("loadgen: generate a device key: %v", err)) // crypto/rand never fails
	}
	return client.New(url, key, client.Options{HTTPClient: hc, DeviceName: name, AckWithin: client.AckWindow, Direct: direct})
}

// SignIn signs c in, trying again (up to ctx) when the answer is lost or
// the server is busy or down.
func SignIn(ctx context.Context, c *client.Client) error {
	return retry(ctx, true, func() error { return c.SignIn(ctx) })
}

// retry calls f once, or, when resilient, until its answer is not lost
// (client.Retry).
func retry(ctx context.Context, resilient bool, f func() error) error {
	if !resilient {
		return f()
	}
	return client.Retry(ctx, f)
}

// Funder adds money to the given accounts' wallets, as the operator does.
type Funder func(ctx context.Context, accounts []string, currency string, amount int64) error

// DBFunder funds wallets directly in the server's database (the data
// directory's SQLite file, or the PostgreSQL URL), exactly as `sharespot
// wallet fund` does.
func DBFunder(dataDir, db string) Funder {
	return func(ctx context.Context, accounts []string, currency string, amount int64) error {
		target, err := server.DBTarget(dataDir, db)
		if err != nil {
			return fmt.Errorf("loadgen: fund: %w", err)
		}
		st, err := store.Open(ctx, target, store.Options{})
		if err != nil {
			return fmt.Errorf("loadgen: fund: open %s: %w", store.Redact(target), err)
		}
		defer st.Close()
		return DBFunderStore(st)(ctx, accounts, currency, amount)
	}
}

// Defunder empties wallets back to the outside money they came from and
// returns the sum.
type Defunder func(ctx context.Context, accounts []string, currency, key string) (int64, error)

// DBDefunder empties wallets on the server's database, as DBFunder fills
// them.
func DBDefunder(dataDir, db string) Defunder {
	return func(ctx context.Context, accounts []string, currency, key string) (int64, error) {
		target, err := server.DBTarget(dataDir, db)
		if err != nil {
			return 0, fmt.Errorf("loadgen: defund: %w", err)
		}
		st, err := store.Open(ctx, target, store.Options{})
		if err != nil {
			return 0, fmt.Errorf("loadgen: defund: open %s: %w", store.Redact(target), err)
		}
		defer st.Close()
		var sum int64
		for len(accounts) > 0 {
			part := accounts[:min(len(accounts), 500)]
			accounts = accounts[len(part):]
			n, err := store.WriteT(ctx, st, func(tx *store.Tx) (int64, error) {
				var n int64
				for _, a := range part {
					m, err := payment.Defund(tx, time.Now().UnixMilli(), a, currency, key+":"+a, "bench cleanup")
					if err != nil {
						return 0, err
					}
					n += m
				}
				return n, nil
			})
			if err != nil {
				return sum, fmt.Errorf("loadgen: empty wallets: %w", err)
			}
			sum += n
		}
		return sum, nil
	}
}

// DBFunderStore funds wallets in an open store, 500 per transaction,
// idempotently (key bench:ACCOUNT).
func DBFunderStore(st *store.Store) Funder {
	return func(ctx context.Context, accounts []string, currency string, amount int64) error {
		now := time.Now().UnixMilli()
		for len(accounts) > 0 {
			part := accounts[:min(len(accounts), 500)]
			accounts = accounts[len(part):]
			err := st.Write(ctx, func(tx *store.Tx) error {
				for _, a := range part {
					if _, err := payment.Fund(tx, now, a, currency, amount, "bench:"+a, "bench funding"); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				return fmt.Errorf("loadgen: fund wallets: %w", err)
			}
		}
		return nil
	}
}

// Host is a simulated host device: the real host agent behind a gate that
// checks codes and meters nothing, with one registered hotspot.
type Host struct {
	C       *client.Client
	Agent   *host.Agent
	Gate    *gateway.CodeGate
	Hotspot *sharespotv1.Hotspot
	In      *client.Inbox
}

// Guest is a simulated guest device: the real guest flow.
type Guest struct {
	C  *client.Client
	G  *guest.Guest
	In *client.Inbox
	// tap, if set, sees each message as the application receives it,
	// before it is routed (the relay bench times arrivals here).
	tap atomic.Pointer[func(*sharespotv1.Envelope)]
}

// FleetConfig sizes a fleet.
type FleetConfig struct {
	URL            string
	Hosts, Guests  int
	Currency       string
	Fund           Funder
	FundMinor      int64 // per guest
	WarnAtBytes    int64
	ShareableBytes int64
	// Resilient makes every call ride out a server restart (the chaos
	// test): calls whose answer was lost are sent again.
	Resilient bool
	// OwnAddresses gives each device a loopback address of its own
	// (127.1.x.y), as phones have, so per-address limits see people, not
	// the bench; otherwise every device dials from 127.0.0.1.
	OwnAddresses bool
	// TLS, if set, is what every device trusts of an https:// server
	// (default: the system's roots).
	TLS *tls.Config
	Log *slog.Logger
	// Direct: the devices make each unary call by itself, not on their
	// channel (client.Options.Direct).
	Direct bool
}

// address is device i's source address (nil: the default, 127.0.0.1).
func (cfg FleetConfig) address(i int) net.IP {
	if !cfg.OwnAddresses {
		return nil
	}
	return net.IPv4(127, 1, byte(i/250), byte(1+i%250))
}

// Fleet is a set of signed-in hosts (hotspots registered, agents
// answering their inboxes) and funded guests (inboxes received).
type Fleet struct {
	cfg    FleetConfig
	Hosts  []*Host
	Guests []*Guest
	stop   context.CancelFunc
	// run is this fleet's own BSSID prefix (two random bytes), so a
	// second run on the same database registers hotspots of its own
	// instead of meeting the first run's.
	run [2]byte
}

// NewFleet signs every device in, registers one hotspot per host, funds
// the guests and starts every inbox.
func NewFleet(ctx context.Context, cfg FleetConfig) (*Fleet, error) {
	if cfg.Currency == "" {
		cfg.Currency = "EUR"
	}
	if cfg.ShareableBytes == 0 {
		cfg.ShareableBytes = 1 << 50
	}
	if cfg.WarnAtBytes == 0 {
		cfg.WarnAtBytes = 5 * mb
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Hosts > 1<<16 {
		return nil, fmt.Errorf("loadgen: at most %d hosts, got %d", 1<<16, cfg.Hosts)
	}
	f := &Fleet{cfg: cfg, Hosts: make([]*Host, cfg.Hosts), Guests: make([]*Guest, cfg.Guests)}
	rand.Read(f.run[:])
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	f.stop = cancel
	err := parallel(ctx, cfg.Hosts, 16, func(i int) error {
		c := NewDevice(cfg.URL, fmt.Sprintf("bench-host-%d", i), HTTPClientTLS(cfg.address(i), cfg.TLS), cfg.Direct)
		if err := SignIn(ctx, c); err != nil {
			return fmt.Errorf("host %d: %w", i, err)
		}
		h := &Host{C: c, Gate: &gateway.CodeGate{Address: "192.0.2.1:1080"}}
		h.Agent = &host.Agent{C: c, GW: h.Gate, Log: cfg.Log}
		if err := retry(ctx, cfg.Resilient, func() error { return h.Agent.Start(ctx) }); err != nil {
			return fmt.Errorf("host %d: %w", i, err)
		}
		hs, err := f.register(ctx, c, i)
		if err != nil {
			return fmt.Errorf("host %d: %w", i, err)
		}
		h.Hotspot = hs
		f.Hosts[i] = h
		return nil
	})
	if err != nil {
		cancel()
		return nil, err
	}
	err = parallel(ctx, cfg.Guests, 16, func(i int) error {
		c := NewDevice(cfg.URL, fmt.Sprintf("bench-guest-%d", i), HTTPClientTLS(cfg.address(cfg.Hosts+i), cfg.TLS), cfg.Direct)
		if err := SignIn(ctx, c); err != nil {
			return fmt.Errorf("guest %d: %w", i, err)
		}
		f.Guests[i] = &Guest{C: c, G: &guest.Guest{C: c, Suites: []seal.Suite{seal.Preset}, Retry: cfg.Resilient}}
		return nil
	})
	if err != nil {
		cancel()
		return nil, err
	}
	if cfg.Fund != nil && cfg.FundMinor > 0 {
		accts := make([]string, len(f.Guests))
		for i, g := range f.Guests {
			accts[i] = g.C.AccountID()
		}
		if err := cfg.Fund(ctx, accts, cfg.Currency, cfg.FundMinor); err != nil {
			cancel()
			return nil, err
		}
	}
	for _, h := range f.Hosts {
		h.In = client.Listen(rctx, h.C, client.InboxOptions{Handle: h.Agent.Handle})
	}
	for _, g := range f.Guests {
		in, err := g.G.Listen(rctx, func(_ context.Context, env *sharespotv1.Envelope) error {
			if tap := g.tap.Load(); tap != nil {
				(*tap)(env)
			}
			return nil
		})
		if err != nil {
			cancel()
			return nil, err
		}
		g.In = in
	}
	return f, nil
}

// register registers host i's hotspot; after a lost answer the re-sent
// call is refused as a duplicate, and the host finds it in its list.
func (f *Fleet) register(ctx context.Context, c *client.Client, i int) (*sharespotv1.Hotspot, error) {
	bssid := fmt.Sprintf("02:BE:%02X:%02X:%02X:%02X", f.run[0], f.run[1], byte(i>>8), byte(i))
	in := &sharespotv1.ShareInstruction{
		AccessPoint:    &sharespotv1.AccessPoint{Ssid: []byte(fmt.Sprintf("bench-%02x%02x-%d", f.run[0], f.run[1], i)), Bssid: bssid, Security: sharespotv1.Security_SECURITY_WPA2},
		Tariff:         &sharespotv1.Tariff{Currency: f.cfg.Currency, PriceMinor: 10, UnitBytes: mb, MinPurchaseBytes: mb, TopupPriceMinor: 12},
		ShareableBytes: f.cfg.ShareableBytes,
		WarnAtBytes:    f.cfg.WarnAtBytes,
	}
	var hs *sharespotv1.Hotspot
	err := retry(ctx, f.cfg.Resilient, func() error {
		res, err := c.Hotspots.Register(ctx, connect.NewRequest(&sharespotv1.RegisterRequest{Instruction: in}))
		if err == nil {
			hs = res.Msg.Hotspot
			return nil
		}
		if !f.cfg.Resilient || connect.CodeOf(err) != connect.CodeAlreadyExists {
			return err
		}
		list, lerr := c.Hotspots.List(ctx, connect.NewRequest(&sharespotv1.ListRequest{}))
		if lerr != nil {
			return lerr
		}
		for _, h := range list.Msg.Hotspots {
			if strings.EqualFold(h.Instruction.GetAccessPoint().GetBssid(), bssid) {
				hs = h
				return nil
			}
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("register hotspot: %w", err)
	}
	return hs, nil
}

// Accounts are the fleet's user accounts: hosts' and guests'.
func (f *Fleet) Accounts() []string {
	var out []string
	for _, h := range f.Hosts {
		if h != nil {
			out = append(out, h.C.AccountID())
		}
	}
	for _, g := range f.Guests {
		if g != nil {
			out = append(out, g.C.AccountID())
		}
	}
	return out
}

// Withdraw takes every host's hotspot off the server, so a bench leaves
// none behind, and returns how many it withdrew.
func (f *Fleet) Withdraw(ctx context.Context) (int, error) {
	var n atomic.Int64
	err := parallel(ctx, len(f.Hosts), 16, func(i int) error {
		h := f.Hosts[i]
		if h == nil || h.Hotspot == nil {
			return nil
		}
		if _, err := h.C.Hotspots.Withdraw(ctx, connect.NewRequest(&sharespotv1.WithdrawRequest{HotspotId: h.Hotspot.Id})); err != nil {
			return fmt.Errorf("withdraw hotspot %s: %w", h.Hotspot.Id, err)
		}
		n.Add(1)
		return nil
	})
	return int(n.Load()), err
}

// Close stops every inbox receiver (bounded) and closes idle connections.
func (f *Fleet) Close() error {
	f.stop()
	var errs []error
	for _, h := range f.Hosts {
		if h != nil && h.In != nil {
			errs = append(errs, h.In.Wait(10*time.Second))
		}
	}
	for _, g := range f.Guests {
		if g != nil && g.In != nil {
			errs = append(errs, g.In.Wait(10*time.Second))
		}
	}
	return errors.Join(errs...)
}

// parallel runs f(0..n-1) on up to width goroutines; the first error wins.
func parallel(ctx context.Context, n, width int, f func(i int) error) error {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
	)
	next := make(chan int)
	for range min(width, max(n, 1)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := f(i); err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
				}
			}
		}()
	}
	for i := range n {
		mu.Lock()
		failed := first != nil
		mu.Unlock()
		if failed || ctx.Err() != nil {
			break
		}
		next <- i
	}
	close(next)
	wg.Wait()
	if first == nil && ctx.Err() != nil {
		return ctx.Err()
	}
	return first
}
