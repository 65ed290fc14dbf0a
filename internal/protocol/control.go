package protocol

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// The control stream carries a verified session's acknowledgments from the
// guest to the host's gateway directly, so that the credit window moves
// with the data and needs no server. The guest opens it on the gateway's
// own listener (the userspace gateway's SOCKS5/HTTP CONNECT port, the
// kernel gateway's admission endpoint) as an HTTP CONNECT to
// ControlAuthority with the session's credentials (Proxy-Authorization:
// Basic session:code), or as a SOCKS5 CONNECT to it; after the 200 (or the
// SOCKS success) both sides write frames:
//
//	guest → gateway  Ack    0x01 · received (8 bytes) · signature (64 bytes)
//	gateway → guest  State  0x02 · used · quota · acked · limit (8 bytes each)
//	gateway → guest  Refuse 0x03 · length (2 bytes) · text
//
// integers big-endian. The gateway answers each Ack with a State once the
// acknowledgment is taken (its bytes freed; saved with the gateway's next
// save), and sends a State whenever the
// session's figures change and at least every StateEvery; a refused Ack gets
// a Refuse and the stream stays open. Nothing on the stream is metered.
const (
	// ControlHost and ControlPort name the control stream: a name in
	// .invalid (RFC 6761), which never resolves, so no real destination
	// is ever taken for it.
	ControlHost      = "control.sharespot.invalid"
	ControlPort      = 1
	ControlAuthority = "control.sharespot.invalid:1"
)

// In a WireGuard gateway's tunnel (protocol 6), the gateway's address
// answers the control stream (an HTTP CONNECT to ControlAuthority) on
// TunnelControlPort, which is not metered, and DNS on TunnelDNSPort.
const (
	TunnelControlPort = 1
	TunnelDNSPort     = 53
)

// Frame types.
const (
	FrameAck    byte = 0x01
	FrameState  byte = 0x02
	FrameRefuse byte = 0x03
)

// AckFrameSize is an Ack frame's length.
const AckFrameSize = 1 + 8 + 64

// StateFrameSize is a State frame's length.
const StateFrameSize = 1 + 4*8

// GatewayState is what the gateway tells the guest of its session: the
// bytes it counted, the volume granted, the acknowledgment it holds and the
// usage it lets the session reach now (acked + window, or the quota).
type GatewayState struct {
	Used, Quota, Acked, Limit int64
}

// AppendAck appends an Ack frame.
func AppendAck(b []byte, received int64, sig []byte) []byte {
	b = append(b, FrameAck)
	b = binary.BigEndian.AppendUint64(b, uint64(received))
	return append(b, sig...)
}

// AppendState appends a State frame.
func AppendState(b []byte, st GatewayState) []byte {
	b = append(b, FrameState)
	for _, v := range []int64{st.Used, st.Quota, st.Acked, st.Limit} {
		b = binary.BigEndian.AppendUint64(b, uint64(v))
	}
	return b
}

// AppendRefuse appends a Refuse frame (text cut to 1,024 bytes).
func AppendRefuse(b []byte, text string) []byte {
	if len(text) > 1024 {
		text = text[:1024]
	}
	b = append(b, FrameRefuse)
	b = binary.BigEndian.AppendUint16(b, uint16(len(text)))
	return append(b, text...)
}

// Frame is one frame read from a control stream: Type, and the fields of
// its type.
type Frame struct {
	Type      byte
	Received  int64  // Ack
	Signature []byte // Ack
	State     GatewayState
	Text      string // Refuse
}

// ErrFrame is a malformed frame (an unknown type, a negative figure).
var ErrFrame = errors.New("protocol: malformed control frame")

// ReadFrame reads one frame.
func ReadFrame(r io.Reader) (Frame, error) {
	var t [1]byte
	if _, err := io.ReadFull(r, t[:]); err != nil {
		return Frame{}, err
	}
	f := Frame{Type: t[0]}
	switch t[0] {
	case FrameAck:
		var b [AckFrameSize - 1]byte
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return Frame{}, unexpected(err)
		}
		f.Received = int64(binary.BigEndian.Uint64(b[:8]))
		f.Signature = append([]byte(nil), b[8:]...)
		if f.Received < 0 {
			return Frame{}, fmt.Errorf("%w: acknowledged %d bytes", ErrFrame, f.Received)
		}
	case FrameState:
		var b [StateFrameSize - 1]byte
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return Frame{}, unexpected(err)
		}
		v := func(i int) int64 { return int64(binary.BigEndian.Uint64(b[8*i:])) }
		f.State = GatewayState{Used: v(0), Quota: v(1), Acked: v(2), Limit: v(3)}
		if f.State.Used < 0 || f.State.Quota < 0 || f.State.Acked < 0 || f.State.Limit < 0 {
			return Frame{}, fmt.Errorf("%w: negative state %+v", ErrFrame, f.State)
		}
	case FrameRefuse:
		var n [2]byte
		if _, err := io.ReadFull(r, n[:]); err != nil {
			return Frame{}, unexpected(err)
		}
		size := binary.BigEndian.Uint16(n[:])
		if size > 1024 {
			return Frame{}, fmt.Errorf("%w: refusal of %d bytes", ErrFrame, size)
		}
		b := make([]byte, size)
		if _, err := io.ReadFull(r, b); err != nil {
			return Frame{}, unexpected(err)
		}
		f.Text = string(b)
	default:
		return Frame{}, fmt.Errorf("%w: type %#x", ErrFrame, t[0])
	}
	return f, nil
}

func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}
