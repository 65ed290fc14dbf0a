package loadgen

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// AbuseConfig is what hostile parties do to a server and a host's gateway
// while honest flows run (`sharespot bench abuse`). Attackers dial from
// their own loopback addresses (127.0.0.2, .3, …), honest parties from
// 127.0.0.1.
type AbuseConfig struct {
	// URL is the server's base URL (http://host:port).
	URL string
	// SlowConns: connections that send a request's headers and one byte
	// of its body, then nothing, held open (dialled again a second after
	// the server closes one).
	SlowConns int
	// Malformed: requests per second whose body is not a valid message.
	Malformed float64
	// Compressed: requests per second whose body is a small gzip stream
	// that inflates to BombBytes.
	Compressed float64
	BombBytes  int
	// Gateway, if set, is a host's gateway (host:port) whose SOCKS5
	// handshake is flooded at HandshakeRate new connections per second,
	// each left silent after connecting.
	Gateway       string
	HandshakeRate float64
	// Sources is how many attacker addresses to spread over (default 8).
	Sources  int
	Duration time.Duration
}

// AbuseReport is what the attackers saw.
type AbuseReport struct {
	SlowOpened    int64            `json:"slow_opened"`
	SlowRefused   int64            `json:"slow_refused"`
	SlowClosed    int64            `json:"slow_closed_by_server"`
	SlowOpenAtEnd int64            `json:"slow_open_at_end"`
	Malformed     int64            `json:"malformed_sent"`
	Compressed    int64            `json:"compressed_sent"`
	Answers       map[string]int64 `json:"answers"`
	Handshakes    int64            `json:"gateway_handshakes"`
	HandshakeErrs int64            `json:"gateway_handshakes_refused"`
}

// attackSource returns the i'th attacker address.
func attackSource(i, n int) net.IP { return net.IPv4(127, 0, 0, byte(2+i%n)) }

// RunAbuse attacks until cfg.Duration passes or ctx ends, and reports.
func RunAbuse(ctx context.Context, cfg AbuseConfig) *AbuseReport {
	if cfg.Sources <= 0 {
		cfg.Sources = 8
	}
	if cfg.BombBytes <= 0 {
		cfg.BombBytes = 64 << 20
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Duration)
	defer cancel()
	rep := &AbuseReport{Answers: map[string]int64{}}
	var mu sync.Mutex
	answer := func(what string) {
		mu.Lock()
		rep.Answers[what]++
		mu.Unlock()
	}
	host := strings.TrimPrefix(strings.TrimPrefix(cfg.URL, "http://"), "https://")
	var wg sync.WaitGroup
	var open atomic.Int64

	// Slow bodies: headers, one byte, silence.
	for i := range cfg.SlowConns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: attackSource(i, cfg.Sources)}, Timeout: 5 * time.Second}
			for ctx.Err() == nil {
				c, err := d.DialContext(ctx, "tcp", host)
				if err != nil {
					atomic.AddInt64(&rep.SlowRefused, 1)
					sleepCtx(ctx, time.Second)
					continue
				}
				atomic.AddInt64(&rep.SlowOpened, 1)
				open.Add(1)
				fmt.Fprintf(c, "POST /sharespot.v1.PaymentService/Balance HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{", host)
				closed := make(chan struct{})
				go func() { io.Copy(io.Discard, c); close(closed) }()
				select {
				case <-ctx.Done():
				case <-closed:
					atomic.AddInt64(&rep.SlowClosed, 1)
				}
				open.Add(-1)
				c.Close()
				sleepCtx(ctx, time.Second) // then dial again, as a slowloris does
			}
		}()
	}

	// Malformed and compressed bodies, each from a rotating address.
	var bomb bytes.Buffer
	if cfg.Compressed > 0 {
		zw, _ := gzip.NewWriterLevel(&bomb, gzip.BestCompression)
		zero := make([]byte, 1<<20)
		for n := 0; n < cfg.BombBytes; n += len(zero) {
			zw.Write(zero)
		}
		zw.Close()
	}
	clients := make([]*http.Client, cfg.Sources)
	for i := range clients {
		clients[i] = HTTPClient(attackSource(i, cfg.Sources))
		clients[i].Timeout = 5 * time.Second
	}
	post := func(i int, body []byte, gz bool) {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, cfg.URL+"/sharespot.v1.DiscoveryService/Discover", bytes.NewReader(body))
		if err != nil {
			return
		}
		req.Header.Set("Content-Type", "application/json")
		if gz {
			req.Header.Set("Content-Encoding", "gzip")
		}
		res, err := clients[i%len(clients)].Do(req)
		if err != nil {
			if ctx.Err() == nil {
				answer("transport error")
			}
			return
		}
		io.Copy(io.Discard, io.LimitReader(res.Body, 1<<16))
		res.Body.Close()
		answer(fmt.Sprint(res.StatusCode))
	}
	every := func(rate float64, fire func(i int)) {
		if rate <= 0 {
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			t := time.NewTicker(time.Duration(float64(time.Second) / rate))
			defer t.Stop()
			var inflight sync.WaitGroup
			defer inflight.Wait()
			for i := 0; ; i++ {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
				}
				inflight.Add(1)
				go func() { defer inflight.Done(); fire(i) }()
			}
		}()
	}
	every(cfg.Malformed, func(i int) {
		atomic.AddInt64(&rep.Malformed, 1)
		post(i, []byte(`{"candidates": [{"bssid": 12, "ssid": "not base64!"`), false)
	})
	every(cfg.Compressed, func(i int) {
		atomic.AddInt64(&rep.Compressed, 1)
		post(i, bomb.Bytes(), true)
	})
	// The gateway's handshake: connect, say nothing.
	every(cfg.HandshakeRate, func(i int) {
		if cfg.Gateway == "" {
			return
		}
		atomic.AddInt64(&rep.Handshakes, 1)
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: attackSource(i, cfg.Sources)}, Timeout: 2 * time.Second}
		c, err := d.DialContext(ctx, "tcp", cfg.Gateway)
		if err != nil {
			atomic.AddInt64(&rep.HandshakeErrs, 1)
			return
		}
		defer c.Close()
		stop := context.AfterFunc(ctx, func() { c.Close() })
		defer stop()
		c.Write([]byte{5, 1}) // a SOCKS5 greeting cut short
		io.Copy(io.Discard, c)
	})
	<-ctx.Done()
	rep.SlowOpenAtEnd = open.Load()
	wg.Wait()
	for _, c := range clients {
		c.CloseIdleConnections()
	}
	return rep
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// GatewayGuest is a paying guest's credentials at a gateway.
type GatewayGuest struct{ Session, Code string }

// GatewayGuestsReport is what paying guests kept while the gateway was
// attacked: each holds one long download open for the whole run and opens
// a short one every half second.
type GatewayGuestsReport struct {
	Guests    int   `json:"guests"`
	LongKept  int   `json:"long_downloads_kept"`
	LongCut   int   `json:"long_downloads_cut"`
	ShortOK   int64 `json:"short_downloads_ok"`
	ShortFail int64 `json:"short_downloads_failed"`
	Bytes     int64 `json:"bytes"`
}

// RunGatewayGuests runs paying guests through a SOCKS5 gateway for d;
// origin serves GET /n/{n} (n bytes).
func RunGatewayGuests(ctx context.Context, gateway string, guests []GatewayGuest, origin string, d time.Duration) *GatewayGuestsReport {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	rep := &GatewayGuestsReport{Guests: len(guests)}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, g := range guests {
		hc := func(timeout time.Duration) *http.Client {
			u := &url.URL{Scheme: "socks5", User: url.UserPassword(g.Session, g.Code), Host: gateway}
			return &http.Client{Timeout: timeout, Transport: &http.Transport{Proxy: http.ProxyURL(u), DisableKeepAlives: true}}
		}
		wg.Add(2)
		go func() { // the long download, read slowly
			defer wg.Done()
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, origin+"/n/1000000000000", nil)
			res, err := hc(0).Do(req)
			kept := false
			if err == nil {
				buf := make([]byte, 64<<10)
				for {
					n, err := res.Body.Read(buf)
					atomic.AddInt64(&rep.Bytes, int64(n))
					if err != nil {
						kept = ctx.Err() != nil // cut by the run's end, not by the gateway
						break
					}
					sleepCtx(ctx, 20*time.Millisecond)
				}
				res.Body.Close()
			}
			mu.Lock()
			if kept {
				rep.LongKept++
			} else {
				rep.LongCut++
			}
			mu.Unlock()
		}()
		go func() { // short downloads on new connections
			defer wg.Done()
			for ctx.Err() == nil {
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, origin+"/n/10000", nil)
				res, err := hc(5 * time.Second).Do(req)
				if err == nil {
					n, _ := io.Copy(io.Discard, res.Body)
					res.Body.Close()
					atomic.AddInt64(&rep.Bytes, n)
					if n != 10000 {
						err = fmt.Errorf("short read: %d bytes", n)
					}
				}
				if ctx.Err() != nil {
					break
				}
				if err != nil {
					atomic.AddInt64(&rep.ShortFail, 1)
				} else {
					atomic.AddInt64(&rep.ShortOK, 1)
				}
				sleepCtx(ctx, 500*time.Millisecond)
			}
		}()
	}
	wg.Wait()
	return rep
}
