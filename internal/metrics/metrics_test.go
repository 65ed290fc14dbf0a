package metrics

import (
	"context"
	"testing"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

func TestStep(t *testing.T) {
	for proc, want := range map[string]string{
		"/sharespot.v1.SessionService/RequestAccess":                "C1.6",
		"/sharespot.v1.PaymentService/Pay":                          "C3.2/C1.13",
		"/sharespot.v1.AuthService/SignIn":                          "other",
		"/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": "other",
	} {
		if got := Step(proc); got != want {
			t.Errorf("Step(%s) = %q, want %q", proc, got, want)
		}
	}
	if got := shortName("/sharespot.v1.SessionService/End"); got != "SessionService/End" {
		t.Errorf("shortName = %q", got)
	}
}

// TestInterceptorAllocs: once a procedure has been seen, counting a call
// allocates nothing.
func TestInterceptorAllocs(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewServer(reg)
	next := connect.UnaryFunc(func(context.Context, connect.AnyRequest) (connect.AnyResponse, error) {
		return nil, nil
	})
	call := m.Interceptor().WrapUnary(next)
	req := connect.NewRequest(&struct{}{})
	ctx := context.Background()
	call(ctx, req)
	if n := testing.AllocsPerRun(1000, func() { call(ctx, req) }); n != 0 {
		t.Errorf("a counted call allocates %v times, want 0", n)
	}
	var d dto.Metric
	if err := m.calls.WithLabelValues("/", "other", "ok").Write(&d); err != nil {
		t.Fatal(err)
	}
	if got := d.GetCounter().GetValue(); got != 1002 {
		t.Errorf("calls counted = %v, want 1002", got)
	}
	var nilM *Server
	nilM.Refused(LimitConns) // nil-safe
	nilM.Committed(1, 0)
	if _, ok := nilM.Interceptor().(nopInterceptor); !ok {
		t.Error("a nil Server's interceptor is not the no-op one")
	}
}
