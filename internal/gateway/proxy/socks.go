package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
)

// SOCKS5 protocol constants (RFC 1928, RFC 1929).
const (
	socksVersion     = 0x05
	authVersion      = 0x01
	methodUserPass   = 0x02
	methodNoneOK     = 0xFF
	cmdConnect       = 0x01
	atypIPv4         = 0x01
	atypDomain       = 0x03
	atypIPv6         = 0x04
	repSucceeded     = 0x00
	repGeneral       = 0x01
	repNotAllowed    = 0x02
	repNetUnreach    = 0x03
	repHostUnreach   = 0x04
	repRefused       = 0x05
	repCmdNotSupp    = 0x07
	repAtypNotSupp   = 0x08
	authStatusOK     = 0x00
	authStatusFailed = 0x01
)

var (
	errSOCKSMalformed = errors.New("proxy: malformed SOCKS5 handshake")
	errSOCKSNoMethod  = errors.New("proxy: SOCKS5 client offers no username/password method")
	errAuthFailed     = errors.New("proxy: credentials refused")
)

// readSOCKS5 reads a SOCKS5 greeting, a username/password
// sub-negotiation and a CONNECT request from r, answering the first two on
// w, and returns the destination as host:port once auth has accepted the
// credentials. Every refusal is answered before it returns an error.
func readSOCKS5(r *bufio.Reader, w io.Writer, auth func(user, pass string) bool) (string, error) {
	// Greeting: VER NMETHODS METHODS.
	var hdr [2]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return "", fmt.Errorf("%w: greeting: %v", errSOCKSMalformed, err)
	}
	if hdr[0] != socksVersion {
		return "", fmt.Errorf("%w: version %d", errSOCKSMalformed, hdr[0])
	}
	methods := make([]byte, hdr[1])
	if _, err := io.ReadFull(r, methods); err != nil {
		return "", fmt.Errorf("%w: methods: %v", errSOCKSMalformed, err)
	}
	if !bytes.Contains(methods, []byte{methodUserPass}) {
		w.Write([]byte{socksVersion, methodNoneOK})
		return "", errSOCKSNoMethod
	}
	if _, err := w.Write([]byte{socksVersion, methodUserPass}); err != nil {
		return "", err
	}

	// RFC 1929: VER ULEN UNAME PLEN PASSWD.
	ver, err := r.ReadByte()
	if err != nil || ver != authVersion {
		w.Write([]byte{authVersion, authStatusFailed})
		return "", fmt.Errorf("%w: auth version", errSOCKSMalformed)
	}
	user, err := readShortString(r)
	if err != nil {
		w.Write([]byte{authVersion, authStatusFailed})
		return "", err
	}
	pass, err := readShortString(r)
	if err != nil {
		w.Write([]byte{authVersion, authStatusFailed})
		return "", err
	}
	if !auth(user, pass) {
		w.Write([]byte{authVersion, authStatusFailed})
		return "", errAuthFailed
	}
	if _, err := w.Write([]byte{authVersion, authStatusOK}); err != nil {
		return "", err
	}

	// Request: VER CMD RSV ATYP DST.ADDR DST.PORT.
	var req [4]byte
	if _, err := io.ReadFull(r, req[:]); err != nil {
		return "", fmt.Errorf("%w: request: %v", errSOCKSMalformed, err)
	}
	if req[0] != socksVersion || req[2] != 0 {
		socksReply(w, repGeneral, nil)
		return "", fmt.Errorf("%w: request header", errSOCKSMalformed)
	}
	if req[1] != cmdConnect {
		socksReply(w, repCmdNotSupp, nil)
		return "", fmt.Errorf("proxy: SOCKS5 command %d not supported", req[1])
	}
	var host string
	switch req[3] {
	case atypIPv4:
		var a [4]byte
		if _, err := io.ReadFull(r, a[:]); err != nil {
			return "", fmt.Errorf("%w: address: %v", errSOCKSMalformed, err)
		}
		host = netip.AddrFrom4(a).String()
	case atypIPv6:
		var a [16]byte
		if _, err := io.ReadFull(r, a[:]); err != nil {
			return "", fmt.Errorf("%w: address: %v", errSOCKSMalformed, err)
		}
		host = netip.AddrFrom16(a).String()
	case atypDomain:
		name, err := readShortString(r)
		if err != nil {
			return "", err
		}
		if !validHostname(name) {
			socksReply(w, repHostUnreach, nil)
			return "", fmt.Errorf("%w: bad host name", errSOCKSMalformed)
		}
		host = name
	default:
		socksReply(w, repAtypNotSupp, nil)
		return "", fmt.Errorf("proxy: SOCKS5 address type %d not supported", req[3])
	}
	var pb [2]byte
	if _, err := io.ReadFull(r, pb[:]); err != nil {
		return "", fmt.Errorf("%w: port: %v", errSOCKSMalformed, err)
	}
	port := int(pb[0])<<8 | int(pb[1])
	if port == 0 {
		socksReply(w, repNotAllowed, nil)
		return "", fmt.Errorf("%w: port 0", errSOCKSMalformed)
	}
	return net.JoinHostPort(host, strconv.Itoa(port)), nil
}

// readShortString reads a length byte and that many bytes (1 to 255).
func readShortString(r *bufio.Reader) (string, error) {
	n, err := r.ReadByte()
	if err != nil {
		return "", fmt.Errorf("%w: length: %v", errSOCKSMalformed, err)
	}
	if n == 0 {
		return "", fmt.Errorf("%w: empty field", errSOCKSMalformed)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return "", fmt.Errorf("%w: field: %v", errSOCKSMalformed, err)
	}
	return string(b), nil
}

// validHostname accepts letters, digits, '-', '_' and '.', which covers
// DNS names (IDNs arrive punycoded) and IP literals in text form.
func validHostname(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// socksReply writes a SOCKS5 reply; bound nil sends 0.0.0.0:0.
func socksReply(w io.Writer, rep byte, bound net.Addr) error {
	b := []byte{socksVersion, rep, 0}
	var ap netip.AddrPort
	if ta, ok := bound.(*net.TCPAddr); ok {
		ap = ta.AddrPort()
	}
	a := ap.Addr().Unmap()
	switch {
	case a.Is6():
		b = append(b, atypIPv6)
		b = append(b, a.AsSlice()...)
	case a.Is4():
		b = append(b, atypIPv4)
		b = append(b, a.AsSlice()...)
	default:
		b = append(b, atypIPv4, 0, 0, 0, 0)
	}
	b = append(b, byte(ap.Port()>>8), byte(ap.Port()))
	_, err := w.Write(b)
	return err
}

// socksHandshake is the SOCKS5 side of a connection.
type socksHandshake struct{}

func (socksHandshake) read(r *bufio.Reader, w io.Writer, auth func(user, pass string) bool) (string, error) {
	return readSOCKS5(r, w, auth)
}

func (socksHandshake) refuse(w io.Writer, err error) { socksReply(w, socksCode(err), nil) }

func (socksHandshake) accept(w io.Writer, bound net.Addr) error {
	return socksReply(w, repSucceeded, bound)
}

// socksCode maps why a request cannot be served to a SOCKS5 reply code.
func socksCode(err error) byte {
	switch refusalOf(err) {
	case refusePolicy, refuseQuota, refuseLimit:
		return repNotAllowed
	case refuseNetUnreach:
		return repNetUnreach
	case refuseHostUnreach, refuseTimeout:
		return repHostUnreach
	case refuseRefused:
		return repRefused
	}
	return repGeneral
}
