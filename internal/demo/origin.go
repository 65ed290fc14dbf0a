package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
)

// origin is a local web server standing in for the internet: GET
// /bytes?n=N returns N bytes.
type origin struct {
	ln  net.Listener
	srv *http.Server
}

const maxOriginBytes = 1 << 30

func startOrigin() (*origin, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("demo: origin: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /bytes", func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		if err != nil || n < 0 || n > maxOriginBytes {
			http.Error(w, "n must be 0 to 2^30", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		w.Header().Set("Content-Type", "application/octet-stream")
		io.CopyN(w, zeros{}, n)
	})
	o := &origin{ln: ln, srv: &http.Server{Handler: mux}}
	go o.srv.Serve(ln)
	return o, nil
}

func (o *origin) URL() string { return "http://" + o.ln.Addr().String() }

func (o *origin) Close() error {
	err := o.srv.Shutdown(context.Background())
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// zeros reads as an endless run of a repeating pattern.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(i)
	}
	return len(p), nil
}
