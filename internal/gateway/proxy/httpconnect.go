package proxy

import (
	"bufio"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"

	"github.com/sharespot/sharespot/internal/gateway"
)

// httpError is a refused HTTP request and the status to answer it with.
type httpError struct {
	status int
	msg    string
}

func (e *httpError) Error() string { return fmt.Sprintf("proxy: HTTP %d: %s", e.status, e.msg) }

// readConnect reads one HTTP request from r and returns its CONNECT
// destination as host:port once auth has accepted the Basic credentials
// of its Proxy-Authorization header. Failures are *httpError: 400 for a
// malformed request, 407 for missing or wrong credentials, 405 for another
// method.
func readConnect(r *bufio.Reader, auth func(user, pass string) bool) (string, error) {
	req, err := http.ReadRequest(r)
	if err != nil {
		return "", &httpError{http.StatusBadRequest, "malformed request"}
	}
	user, pass, ok := parseBasic(req.Header.Get("Proxy-Authorization"))
	if !ok || !auth(user, pass) {
		return "", &httpError{http.StatusProxyAuthRequired, "credentials required"}
	}
	if req.Method != http.MethodConnect {
		return "", &httpError{http.StatusMethodNotAllowed, "only CONNECT is served"}
	}
	host, port, err := net.SplitHostPort(req.RequestURI)
	if err != nil || host == "" || strings.ContainsAny(host, "%/") {
		return "", &httpError{http.StatusBadRequest, "CONNECT needs host:port"}
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return "", &httpError{http.StatusBadRequest, "CONNECT needs a port from 1 to 65535"}
	}
	return net.JoinHostPort(host, port), nil
}

// parseBasic decodes "Basic base64(user:pass)".
func parseBasic(h string) (user, pass string, ok bool) {
	scheme, cred, ok := strings.Cut(strings.TrimSpace(h), " ")
	if !ok || !strings.EqualFold(scheme, "Basic") {
		return "", "", false
	}
	b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(cred))
	if err != nil {
		return "", "", false
	}
	return strings.Cut(string(b), ":")
}

// httpHandshake is the HTTP CONNECT side of a connection.
type httpHandshake struct {
	lr *io.LimitedReader // what the handshake may still read
}

func (h *httpHandshake) read(r *bufio.Reader, w io.Writer, auth func(user, pass string) bool) (string, error) {
	target, err := readConnect(r, auth)
	if err != nil {
		he := err.(*httpError)
		if he.status == http.StatusBadRequest && h.lr.N <= 0 {
			he = &httpError{http.StatusRequestHeaderFieldsTooLarge, "request too large"}
		}
		writeStatus(w, he.status, he.msg)
		return "", he
	}
	return target, nil
}

func (h *httpHandshake) refuse(w io.Writer, err error) {
	status := http.StatusBadGateway
	switch refusalOf(err) {
	case refusePolicy:
		status = http.StatusForbidden
	case refuseQuota:
		status = http.StatusPaymentRequired
	case refuseLimit:
		status = http.StatusTooManyRequests
	case refuseTimeout:
		status = http.StatusGatewayTimeout
	}
	writeStatus(w, status, refusalText(err))
}

func (h *httpHandshake) accept(w io.Writer, _ net.Addr) error {
	_, err := io.WriteString(w, "HTTP/1.1 200 Connection established\r\n\r\n")
	return err
}

// writeStatus answers with a short plain-text error and closes.
func writeStatus(w io.Writer, status int, msg string) {
	body := "sharespot gateway: " + msg + "\n"
	var b strings.Builder
	fmt.Fprintf(&b, "HTTP/1.1 %d %s\r\n", status, http.StatusText(status))
	if status == http.StatusProxyAuthRequired {
		b.WriteString("Proxy-Authenticate: Basic realm=\"sharespot\"\r\n")
	}
	if status == http.StatusMethodNotAllowed {
		b.WriteString("Allow: CONNECT\r\n")
	}
	fmt.Fprintf(&b, "Content-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(body), body)
	io.WriteString(w, b.String())
}

// refusal classifies why a relayed connection cannot be opened.
type refusal int

const (
	refuseOther refusal = iota
	refusePolicy
	refuseQuota
	refuseLimit
	refuseNetUnreach
	refuseHostUnreach
	refuseRefused
	refuseTimeout
)

func refusalOf(err error) refusal {
	var dnsErr *net.DNSError
	var ne net.Error
	switch {
	case errors.Is(err, errDestination), errors.Is(err, gateway.ErrRevoked):
		return refusePolicy
	case errors.Is(err, errExhausted):
		return refuseQuota
	case errors.Is(err, errTooManyConns), errors.Is(err, errGatewayFull):
		return refuseLimit
	case errors.Is(err, syscall.ECONNREFUSED):
		return refuseRefused
	case errors.Is(err, syscall.ENETUNREACH):
		return refuseNetUnreach
	case errors.Is(err, syscall.EHOSTUNREACH), errors.As(err, &dnsErr):
		return refuseHostUnreach
	case errors.As(err, &ne) && ne.Timeout():
		return refuseTimeout
	}
	return refuseOther
}

func refusalText(err error) string {
	if errors.Is(err, errGatewayFull) {
		return "the gateway is at its connection limit; try again shortly"
	}
	switch refusalOf(err) {
	case refusePolicy:
		return "destination not allowed"
	case refuseQuota:
		return "data volume used up; buy more to go on"
	case refuseLimit:
		return "too many connections for this session"
	case refuseRefused:
		return "destination refused the connection"
	case refuseNetUnreach, refuseHostUnreach:
		return "destination unreachable"
	case refuseTimeout:
		return "destination did not answer in time"
	}
	return "cannot connect"
}
