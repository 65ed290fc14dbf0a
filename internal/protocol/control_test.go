package protocol

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

func TestControlFrames(t *testing.T) {
	sig := bytes.Repeat([]byte{7}, 64)
	var b []byte
	b = AppendAck(b, 123456, sig)
	b = AppendState(b, GatewayState{Used: 1, Quota: 2, Acked: 3, Limit: 4})
	b = AppendRefuse(b, "not verified")
	if len(b) != AckFrameSize+StateFrameSize+3+len("not verified") {
		t.Fatalf("frames are %d bytes", len(b))
	}
	r := bytes.NewReader(b)
	f, err := ReadFrame(r)
	if err != nil || f.Type != FrameAck || f.Received != 123456 || !bytes.Equal(f.Signature, sig) {
		t.Fatalf("ack: %+v, %v", f, err)
	}
	f, err = ReadFrame(r)
	if err != nil || f.Type != FrameState || f.State != (GatewayState{1, 2, 3, 4}) {
		t.Fatalf("state: %+v, %v", f, err)
	}
	f, err = ReadFrame(r)
	if err != nil || f.Type != FrameRefuse || f.Text != "not verified" {
		t.Fatalf("refuse: %+v, %v", f, err)
	}
	if _, err := ReadFrame(r); err != io.EOF {
		t.Fatalf("after the last frame: %v", err)
	}
	for name, bad := range map[string][]byte{
		"unknown type":   {0x09},
		"short ack":      AppendAck(nil, 1, sig)[:20],
		"negative ack":   AppendAck(nil, -1, sig),
		"negative state": AppendState(nil, GatewayState{Used: -5}),
	} {
		if _, err := ReadFrame(bytes.NewReader(bad)); err == nil || err == io.EOF {
			t.Errorf("%s: read without error (%v)", name, err)
		} else if name == "short ack" && !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("short ack: %v", err)
		}
	}
}

func FuzzReadFrame(f *testing.F) {
	f.Add(AppendAck(nil, 5, make([]byte, 64)))
	f.Add(AppendState(nil, GatewayState{1, 2, 3, 4}))
	f.Add(AppendRefuse(nil, "x"))
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bytes.NewReader(b)
		for {
			fr, err := ReadFrame(r)
			if err != nil {
				return
			}
			// What was read writes back the same.
			var again []byte
			switch fr.Type {
			case FrameAck:
				again = AppendAck(nil, fr.Received, fr.Signature)
			case FrameState:
				again = AppendState(nil, fr.State)
			case FrameRefuse:
				again = AppendRefuse(nil, fr.Text)
			}
			if fr2, err := ReadFrame(bytes.NewReader(again)); err != nil || fr2.Type != fr.Type || fr2.Received != fr.Received || fr2.State != fr.State || fr2.Text != fr.Text {
				t.Fatalf("%+v read back as %+v, %v", fr, fr2, err)
			}
		}
	})
}
