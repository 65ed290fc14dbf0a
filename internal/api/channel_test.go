package api_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/gen/sharespot/v1/sharespotv1connect"
	"github.com/sharespot/sharespot/internal/api"
	"github.com/sharespot/sharespot/internal/client"
	"github.com/sharespot/sharespot/internal/harness"
	"github.com/sharespot/sharespot/internal/server"
)

// openChannel opens a channel with token ("" for none) and reads its
// opening.
func openChannel(ctx context.Context, t *testing.T, url, token string) (*connect.BidiStreamForClient[sharespotv1.CarryRequest, sharespotv1.CarryResponse], *sharespotv1.CarryResponse, error) {
	t.Helper()
	st := sharespotv1connect.NewChannelServiceClient(client.NewHTTPClient(), url).Carry(ctx)
	if token != "" {
		st.RequestHeader().Set("Authorization", "Bearer "+token)
	}
	if err := st.Send(nil); err != nil {
		return st, nil, err
	}
	first, err := st.Receive()
	return st, first, err
}

func carried(id uint64, procedure, contentType, token string, msg proto.Message) *sharespotv1.CarryRequest {
	body, _ := proto.Marshal(msg)
	c := &sharespotv1.CarryRequest{Id: id, Procedure: procedure, Body: body,
		Headers: []*sharespotv1.ChannelHeader{{Name: "Content-Type", Value: contentType}}}
	if token != "" {
		c.Headers = append(c.Headers, &sharespotv1.ChannelHeader{Name: "Authorization", Value: "Bearer " + token})
	}
	return c
}

func header(r *sharespotv1.CarryResponse, name string) string {
	h := http.Header{}
	for _, kv := range r.GetHeaders() {
		h.Add(kv.GetName(), kv.GetValue())
	}
	return h.Get(name)
}

// TestChannelCarriesOnlyUnaryCalls: a channel opens only with a token;
// it carries the Sharespot services' unary calls in Connect's protocol,
// each authenticated by its own token, and answers anything else with a
// refusal of that call, the stream going on; a call without an ID ends it.
func TestChannelCarriesOnlyUnaryCalls(t *testing.T) {
	env := harness.Start(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dev := env.Device(t, "dev")
	token, err := dev.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}

	if _, _, err := openChannel(ctx, t, env.URL, ""); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Errorf("a channel without a token: %v, want unauthenticated", err)
	}
	st, first, err := openChannel(ctx, t, env.URL, token)
	if err != nil {
		t.Fatal(err)
	}
	if first.GetId() != 0 || first.GetMaxInFlight() != api.ChannelInFlight {
		t.Fatalf("opening %v", first)
	}
	for _, tc := range []struct {
		name   string
		call   *sharespotv1.CarryRequest
		status int
		code   string
	}{
		{"a stream", carried(1, sharespotv1connect.InboxServiceSubscribeProcedure, "application/proto", token, &sharespotv1.SubscribeRequest{}), 501, "unimplemented"},
		{"the channel itself", carried(2, sharespotv1connect.ChannelServiceCarryProcedure, "application/proto", token, &sharespotv1.CarryRequest{}), 501, "unimplemented"},
		{"reflection", carried(3, "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", "application/proto", token, &sharespotv1.ListRequest{}), 501, "unimplemented"},
		{"gRPC", carried(4, sharespotv1connect.HotspotServiceListProcedure, "application/grpc", token, &sharespotv1.ListRequest{}), 400, "invalid_argument"},
		{"no token of its own", carried(5, sharespotv1connect.HotspotServiceListProcedure, "application/proto", "", &sharespotv1.ListRequest{}), 401, "unauthenticated"},
		{"a bad token", carried(6, sharespotv1connect.HotspotServiceListProcedure, "application/proto", "not-a-token", &sharespotv1.ListRequest{}), 401, "unauthenticated"},
		{"a unary call", carried(7, sharespotv1connect.HotspotServiceListProcedure, "application/proto", token, &sharespotv1.ListRequest{}), 200, ""},
	} {
		if err := st.Send(tc.call); err != nil {
			t.Fatal(err)
		}
		r, err := st.Receive()
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if r.GetId() != tc.call.Id || int(r.GetStatus()) != tc.status || !strings.Contains(string(r.GetBody()), tc.code) {
			t.Errorf("%s: reply %d, status %d, body %q; want status %d with %q", tc.name, r.GetId(), r.GetStatus(), r.GetBody(), tc.status, tc.code)
		}
		if tc.status == 200 {
			var res sharespotv1.ListResponse
			if err := proto.Unmarshal(r.GetBody(), &res); err != nil || header(r, "Content-Type") != "application/proto" {
				t.Errorf("%s: %v, content type %q", tc.name, err, header(r, "Content-Type"))
			}
		}
	}
	if err := st.Send(&sharespotv1.CarryRequest{Procedure: sharespotv1connect.HotspotServiceListProcedure}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Receive(); connect.CodeOf(err) != connect.CodeInvalidArgument || !strings.Contains(err.Error(), "id") {
		t.Errorf("a call without an id: %v, want the stream ended with invalid_argument", err)
	}
}

// TestCarryRequestsCountAsCalls: every carried call passes its address's
// token bucket, as a call by itself does: a burst past it is refused, call
// by call, with Retry-After, and the channel goes on.
func TestCarryRequestsCountAsCalls(t *testing.T) {
	env := harness.Start(t, func(c *server.Config) { c.Limits.PerIP, c.Limits.PerIPBurst = 1, 8 })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dev := env.Device(t, "dev") // a challenge and a sign-in: 2 of the 8
	token, err := dev.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	st, _, err := openChannel(ctx, t, env.URL, token) // 1 more
	if err != nil {
		t.Fatal(err)
	}
	ok, limited := 0, 0
	for i := range 10 {
		if err := st.Send(carried(uint64(i+1), sharespotv1connect.HotspotServiceListProcedure, "application/proto", token, &sharespotv1.ListRequest{})); err != nil {
			t.Fatal(err)
		}
		r, err := st.Receive()
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case r.GetStatus() == 200:
			ok++
		case r.GetStatus() == 429 && header(r, "Retry-After") != "" && strings.Contains(string(r.GetBody()), "resource_exhausted"):
			limited++
		default:
			t.Errorf("call %d: status %d, %q", i+1, r.GetStatus(), r.GetBody())
		}
	}
	// 5 tokens were left; at most one more came back while the calls ran.
	if ok < 5 || ok > 6 || limited != 10-ok {
		t.Errorf("%d calls answered and %d refused of 10 with 5 left in the bucket", ok, limited)
	}
}
