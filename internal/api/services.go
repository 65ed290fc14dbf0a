package api

import (
	"context"
	"errors"
	"time"

	"connectrpc.com/connect"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/ledger"
	"github.com/sharespot/sharespot/internal/problem"
	"github.com/sharespot/sharespot/internal/receipt"
	"github.com/sharespot/sharespot/internal/registry"
	"github.com/sharespot/sharespot/internal/relay"
	"github.com/sharespot/sharespot/internal/session"
	"github.com/sharespot/sharespot/internal/store"
)

func write[T any](ctx context.Context, s *services, fn func(*store.Tx) (*T, error)) (*connect.Response[T], error) {
	v, err := store.WriteT(ctx, s.d.Store, fn)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(v), nil
}

func read[T any](ctx context.Context, s *services, fn func(*store.Tx) (*T, error)) (*connect.Response[T], error) {
	v, err := store.ReadT(ctx, s.d.Store, fn)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(v), nil
}

func (s *services) nowMS() int64 { return s.d.Now().UnixMilli() }

// ---------------------------------------------------------------- auth

type authService struct{ *services }

func (a *authService) Challenge(ctx context.Context, req *connect.Request[sharespotv1.ChallengeRequest]) (*connect.Response[sharespotv1.ChallengeResponse], error) {
	nonce, exp, err := a.d.Auth.Challenge(ctx, req.Msg.PublicKey)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&sharespotv1.ChallengeResponse{Nonce: nonce, ExpiresUnixMs: exp.UnixMilli()}), nil
}

func (a *authService) SignIn(ctx context.Context, req *connect.Request[sharespotv1.SignInRequest]) (*connect.Response[sharespotv1.SignInResponse], error) {
	m := req.Msg
	out, err := a.d.Auth.SignIn(ctx, m.PublicKey, m.Nonce, m.Signature, m.DeviceName)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&sharespotv1.SignInResponse{Token: out.Token, ExpiresUnixMs: out.Expires.UnixMilli(),
		DeviceId: out.Party.DeviceID, AccountId: out.Party.AccountID, ProtocolVersion: ProtocolVersion}), nil
}

func (a *authService) AddDevice(ctx context.Context, req *connect.Request[sharespotv1.AddDeviceRequest]) (*connect.Response[sharespotv1.AddDeviceResponse], error) {
	p := partyFrom(ctx)
	m := req.Msg
	id, err := a.d.Auth.AddDevice(ctx, p, m.PublicKey, m.Nonce, m.Signature, m.DeviceName)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&sharespotv1.AddDeviceResponse{DeviceId: id, AccountId: p.AccountID}), nil
}

// ---------------------------------------------------------------- hotspots

type hotspotService struct{ *services }

func (h *hotspotService) Register(ctx context.Context, req *connect.Request[sharespotv1.RegisterRequest]) (*connect.Response[sharespotv1.RegisterResponse], error) {
	p := partyFrom(ctx)
	return write(ctx, h.services, func(tx *store.Tx) (*sharespotv1.RegisterResponse, error) {
		hs, err := registry.Register(tx, h.nowMS(), p.DeviceID, req.Msg.Instruction)
		if err != nil {
			return &sharespotv1.RegisterResponse{}, err
		}
		return &sharespotv1.RegisterResponse{Hotspot: hs.Proto(true)}, nil
	})
}

func (h *hotspotService) Update(ctx context.Context, req *connect.Request[sharespotv1.UpdateRequest]) (*connect.Response[sharespotv1.UpdateResponse], error) {
	p := partyFrom(ctx)
	return write(ctx, h.services, func(tx *store.Tx) (*sharespotv1.UpdateResponse, error) {
		hs, err := registry.Update(tx, h.nowMS(), p.DeviceID, req.Msg.HotspotId, req.Msg.Instruction)
		if err != nil {
			return &sharespotv1.UpdateResponse{}, err
		}
		return &sharespotv1.UpdateResponse{Hotspot: hs.Proto(true)}, nil
	})
}

func (h *hotspotService) Withdraw(ctx context.Context, req *connect.Request[sharespotv1.WithdrawRequest]) (*connect.Response[sharespotv1.WithdrawResponse], error) {
	p := partyFrom(ctx)
	return write(ctx, h.services, func(tx *store.Tx) (*sharespotv1.WithdrawResponse, error) {
		hs, err := registry.Withdraw(tx, h.nowMS(), p.DeviceID, req.Msg.HotspotId)
		if err != nil {
			return &sharespotv1.WithdrawResponse{}, err
		}
		return &sharespotv1.WithdrawResponse{Hotspot: hs.Proto(false)}, nil
	})
}

func (h *hotspotService) Leave(ctx context.Context, req *connect.Request[sharespotv1.LeaveRequest]) (*connect.Response[sharespotv1.LeaveResponse], error) {
	p := partyFrom(ctx)
	return write(ctx, h.services, func(tx *store.Tx) (*sharespotv1.LeaveResponse, error) {
		return &sharespotv1.LeaveResponse{}, registry.Left(tx, p.DeviceID)
	})
}

func (h *hotspotService) List(ctx context.Context, req *connect.Request[sharespotv1.ListRequest]) (*connect.Response[sharespotv1.ListResponse], error) {
	p := partyFrom(ctx)
	return read(ctx, h.services, func(tx *store.Tx) (*sharespotv1.ListResponse, error) {
		hs, err := registry.List(tx, p.DeviceID)
		out := &sharespotv1.ListResponse{}
		for _, x := range hs {
			out.Hotspots = append(out.Hotspots, x.Proto(x.Active && x.Present(h.nowMS(), h.d.HostAway)))
		}
		return out, err
	})
}

// ---------------------------------------------------------------- discovery

type discoveryService struct{ *services }

func (d *discoveryService) Discover(ctx context.Context, req *connect.Request[sharespotv1.DiscoverRequest]) (*connect.Response[sharespotv1.DiscoverResponse], error) {
	disc, err := registry.Discovering(req.Msg.Candidates, d.nowMS(), d.d.HostAway)
	if err != nil {
		return nil, err
	}
	// Each host's record from its settled verified sessions, beside its
	// price: what a guest that cannot verify knows before paying. Read
	// with the hotspots, in one round trip.
	hosts, args := disc.Hosts()
	records := map[string]*sharespotv1.HostRecord{}
	return read(ctx, d.services, func(tx *store.Tx) (*sharespotv1.DiscoverResponse, error) {
		clear(records)
		if err := tx.Last(disc.Reading(), session.ReadingHostRecords(hosts, args, records)); err != nil {
			return nil, err
		}
		offers, offline := disc.Result()
		for _, o := range offers {
			if o.HostRecord = records[o.HostDeviceId]; o.HostRecord == nil {
				o.HostRecord = &sharespotv1.HostRecord{}
			}
		}
		return &sharespotv1.DiscoverResponse{Available: offers, Offline: offline}, nil
	})
}

// ---------------------------------------------------------------- sessions

type sessionService struct{ *services }

func (s *sessionService) RequestAccess(ctx context.Context, req *connect.Request[sharespotv1.RequestAccessRequest]) (*connect.Response[sharespotv1.RequestAccessResponse], error) {
	p, m := partyFrom(ctx), req.Msg
	keys, err := s.d.Engine.CheckGuestKeys(m.GuestKeys)
	if err != nil {
		return nil, err
	}
	return write(ctx, s.services, func(tx *store.Tx) (*sharespotv1.RequestAccessResponse, error) {
		ses, err := s.d.Engine.RequestAccess(tx, p, m.HotspotId, m.Bytes, keys, m.ShownTariff, m.UsageMode)
		return &sharespotv1.RequestAccessResponse{Session: ses}, err
	})
}

func (s *sessionService) Quote(ctx context.Context, req *connect.Request[sharespotv1.QuoteRequest]) (*connect.Response[sharespotv1.QuoteResponse], error) {
	p, m := partyFrom(ctx), req.Msg
	return write(ctx, s.services, func(tx *store.Tx) (*sharespotv1.QuoteResponse, error) {
		q, err := s.d.Engine.Quote(tx, p, m.SessionId, m.Bytes, m.AmountMinor, m.Currency)
		return &sharespotv1.QuoteResponse{Quote: q}, err
	})
}

func (s *sessionService) Decline(ctx context.Context, req *connect.Request[sharespotv1.DeclineRequest]) (*connect.Response[sharespotv1.DeclineResponse], error) {
	p, m := partyFrom(ctx), req.Msg
	return write(ctx, s.services, func(tx *store.Tx) (*sharespotv1.DeclineResponse, error) {
		ses, err := s.d.Engine.Decline(tx, p, m.SessionId, m.Reason)
		return &sharespotv1.DeclineResponse{Session: ses}, err
	})
}

func (s *sessionService) Confirm(ctx context.Context, req *connect.Request[sharespotv1.ConfirmRequest]) (*connect.Response[sharespotv1.ConfirmResponse], error) {
	p, m := partyFrom(ctx), req.Msg
	vr, err := s.d.Engine.VerifyReceipt(m.Receipt)
	if err != nil {
		return nil, err
	}
	return write(ctx, s.services, func(tx *store.Tx) (*sharespotv1.ConfirmResponse, error) {
		ses, err := s.d.Engine.Confirm(tx, p, m.SessionId, vr)
		return &sharespotv1.ConfirmResponse{Session: ses}, err
	})
}

func (s *sessionService) Grant(ctx context.Context, req *connect.Request[sharespotv1.GrantRequest]) (*connect.Response[sharespotv1.GrantResponse], error) {
	p, m := partyFrom(ctx), req.Msg
	return write(ctx, s.services, func(tx *store.Tx) (*sharespotv1.GrantResponse, error) {
		ses, err := s.d.Engine.Grant(tx, p, m.SessionId, m.QuoteId, m.GrantedBytes, m.SealedCode, m.Gateway)
		return &sharespotv1.GrantResponse{Session: ses}, err
	})
}

func (s *sessionService) Prompt(ctx context.Context, req *connect.Request[sharespotv1.PromptRequest]) (*connect.Response[sharespotv1.PromptResponse], error) {
	p, m := partyFrom(ctx), req.Msg
	va, err := s.verifyAck(ctx, p, m.Ack)
	if err != nil {
		return nil, err
	}
	return write(ctx, s.services, func(tx *store.Tx) (*sharespotv1.PromptResponse, error) {
		return &sharespotv1.PromptResponse{}, s.d.Engine.Prompt(tx, p, m.SessionId, m.UsedBytes, va)
	})
}

func (s *sessionService) RequestTopUp(ctx context.Context, req *connect.Request[sharespotv1.RequestTopUpRequest]) (*connect.Response[sharespotv1.RequestTopUpResponse], error) {
	p, m := partyFrom(ctx), req.Msg
	return write(ctx, s.services, func(tx *store.Tx) (*sharespotv1.RequestTopUpResponse, error) {
		ses, err := s.d.Engine.RequestTopUp(tx, p, m.SessionId, m.Bytes)
		return &sharespotv1.RequestTopUpResponse{Session: ses}, err
	})
}

func (s *sessionService) ReportUsage(ctx context.Context, req *connect.Request[sharespotv1.ReportUsageRequest]) (*connect.Response[sharespotv1.ReportUsageResponse], error) {
	p, m := partyFrom(ctx), req.Msg
	va, err := s.verifyAck(ctx, p, m.Ack)
	if err != nil {
		return nil, err
	}
	return write(ctx, s.services, func(tx *store.Tx) (*sharespotv1.ReportUsageResponse, error) {
		ses, err := s.d.Engine.ReportUsage(tx, p, m.SessionId, m.UsedBytes, va)
		return &sharespotv1.ReportUsageResponse{Session: ses}, err
	})
}

func (s *sessionService) End(ctx context.Context, req *connect.Request[sharespotv1.EndRequest]) (*connect.Response[sharespotv1.EndResponse], error) {
	p, m := partyFrom(ctx), req.Msg
	va, err := s.verifyAck(ctx, p, m.Ack)
	if err != nil {
		return nil, err
	}
	return write(ctx, s.services, func(tx *store.Tx) (*sharespotv1.EndResponse, error) {
		ses, err := s.d.Engine.End(tx, p, m.SessionId, m.UsedBytes, m.Reason, va, m.GuestHeld)
		return &sharespotv1.EndResponse{Session: ses}, err
	})
}

func (s *sessionService) Acknowledge(ctx context.Context, req *connect.Request[sharespotv1.AcknowledgeRequest]) (*connect.Response[sharespotv1.AcknowledgeResponse], error) {
	p := partyFrom(ctx)
	va, err := s.verifyAck(ctx, p, req.Msg.Ack)
	if err != nil {
		return nil, err
	}
	if va == nil {
		return nil, problem.Invalidf("ack is missing")
	}
	return write(ctx, s.services, func(tx *store.Tx) (*sharespotv1.AcknowledgeResponse, error) {
		n, err := s.d.Engine.Acknowledge(tx, p, *va)
		return &sharespotv1.AcknowledgeResponse{AckedBytes: n}, err
	})
}

// verifyAck checks an acknowledgment a call carries (nil when it carries
// none) outside the writer: the signature check costs the writer nothing,
// and for a session whose parties the engine remembers it reads nothing.
func (s *sessionService) verifyAck(ctx context.Context, p session.Party, ack *sharespotv1.UsageAck) (*session.VerifiedAck, error) {
	if ack == nil {
		return nil, nil
	}
	if va, known, err := s.d.Engine.VerifyKnownAck(p, ack); known {
		if err != nil {
			return nil, err
		}
		return &va, nil
	}
	va, err := store.ReadT(ctx, s.d.Store, func(tx *store.Tx) (session.VerifiedAck, error) {
		return s.d.Engine.VerifyAck(tx, p, ack)
	})
	if err != nil {
		return nil, err
	}
	return &va, nil
}

func (s *sessionService) Get(ctx context.Context, req *connect.Request[sharespotv1.GetRequest]) (*connect.Response[sharespotv1.GetResponse], error) {
	p := partyFrom(ctx)
	return read(ctx, s.services, func(tx *store.Tx) (*sharespotv1.GetResponse, error) {
		ses, err := s.d.Engine.Get(tx, p, req.Msg.SessionId)
		return &sharespotv1.GetResponse{Session: ses}, err
	})
}

func (s *sessionService) ListSessions(ctx context.Context, req *connect.Request[sharespotv1.ListSessionsRequest]) (*connect.Response[sharespotv1.ListSessionsResponse], error) {
	p := partyFrom(ctx)
	return read(ctx, s.services, func(tx *store.Tx) (*sharespotv1.ListSessionsResponse, error) {
		ss, err := s.d.Engine.List(tx, p, req.Msg.OpenOnly, int(req.Msg.Limit))
		return &sharespotv1.ListSessionsResponse{Sessions: ss}, err
	})
}

// ---------------------------------------------------------------- payment

type paymentService struct{ *services }

func (ps *paymentService) Pay(ctx context.Context, req *connect.Request[sharespotv1.PayRequest]) (*connect.Response[sharespotv1.PayResponse], error) {
	p := partyFrom(ctx)
	switch req.Msg.Method {
	case sharespotv1.PayMethod_PAY_METHOD_UNSPECIFIED, sharespotv1.PayMethod_PAY_METHOD_WALLET:
	case sharespotv1.PayMethod_PAY_METHOD_CARD:
		if ps.d.Card == nil {
			return nil, problem.WrongStatef("this server takes no card payments (it runs without a Stripe key); pay with the wallet")
		}
		out, err := ps.d.Card.Pay(ctx, p, req.Msg.QuoteId, req.Msg.PaymentMethod)
		if err != nil {
			return nil, err
		}
		return connect.NewResponse(out), nil
	default:
		return nil, problem.Invalidf("unknown payment method %d", req.Msg.Method)
	}
	return write(ctx, ps.services, func(tx *store.Tx) (*sharespotv1.PayResponse, error) {
		r, err := ps.d.Engine.PayWallet(tx, p, req.Msg.QuoteId)
		return &sharespotv1.PayResponse{Receipt: r, Status: sharespotv1.PayStatus_PAY_STATUS_PAID}, err
	})
}

func (ps *paymentService) Balance(ctx context.Context, req *connect.Request[sharespotv1.BalanceRequest]) (*connect.Response[sharespotv1.BalanceResponse], error) {
	p := partyFrom(ctx)
	return read(ctx, ps.services, func(tx *store.Tx) (*sharespotv1.BalanceResponse, error) {
		ms, err := ledger.WalletBalances(tx, p.AccountID)
		out := &sharespotv1.BalanceResponse{AccountId: p.AccountID, PayMethods: []sharespotv1.PayMethod{sharespotv1.PayMethod_PAY_METHOD_WALLET}}
		if ps.d.Card != nil {
			out.PayMethods = append(out.PayMethods, sharespotv1.PayMethod_PAY_METHOD_CARD)
			out.CardWithoutPaymentMethod = ps.d.Card.TestMode()
		}
		for _, m := range ms {
			out.Balances = append(out.Balances, &sharespotv1.Money{Currency: m.Currency, AmountMinor: m.Amount})
		}
		return out, err
	})
}

func (ps *paymentService) History(ctx context.Context, req *connect.Request[sharespotv1.HistoryRequest]) (*connect.Response[sharespotv1.HistoryResponse], error) {
	p := partyFrom(ctx)
	limit := int(req.Msg.Limit)
	if limit <= 0 || limit > 500 {
		limit = 100
	}
	return read(ctx, ps.services, func(tx *store.Tx) (*sharespotv1.HistoryResponse, error) {
		// The wallets, and the card and payout accounts (card payments,
		// releases, refunds, disputes, transfers to Stripe).
		ids, err := ledger.AccountsOf(tx, p.AccountID)
		if err != nil {
			return &sharespotv1.HistoryResponse{}, err
		}
		es, err := ledger.History(tx, ids, limit)
		out := &sharespotv1.HistoryResponse{}
		if err != nil {
			return out, err
		}
		for _, e := range es {
			t := &sharespotv1.Transfer{Id: e.ID, Debit: e.Debit, Credit: e.Credit,
				AmountMinor: e.Amount, Currency: e.Currency, Memo: e.Memo, CreatedUnixMs: e.CreatedMS}
			if err := session.Describe(tx, t); err != nil { // the hotspot, the data, the bill's figures
				return out, err
			}
			out.Transfers = append(out.Transfers, t)
		}
		return out, nil
	})
}

func (ps *paymentService) PlatformKeys(ctx context.Context, req *connect.Request[sharespotv1.PlatformKeysRequest]) (*connect.Response[sharespotv1.PlatformKeysResponse], error) {
	out := &sharespotv1.PlatformKeysResponse{}
	for _, k := range ps.d.Wallet.PublicKeys() {
		out.Keys = append(out.Keys, &sharespotv1.PlatformKey{KeyId: receipt.KeyIDOf(k), PublicKey: k})
	}
	return connect.NewResponse(out), nil
}

func (ps *paymentService) FundByCard(ctx context.Context, req *connect.Request[sharespotv1.FundByCardRequest]) (*connect.Response[sharespotv1.FundByCardResponse], error) {
	if ps.d.Card == nil {
		return nil, problem.WrongStatef("this server takes no card payments (it runs without a Stripe key); the operator funds wallets")
	}
	out, err := ps.d.Card.Fund(ctx, partyFrom(ctx), req.Msg)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(out), nil
}

func (ps *paymentService) PayoutOnboarding(ctx context.Context, req *connect.Request[sharespotv1.PayoutOnboardingRequest]) (*connect.Response[sharespotv1.PayoutOnboardingResponse], error) {
	if ps.d.Card == nil {
		return nil, problem.WrongStatef("this server takes no card payments (it runs without a Stripe key): earnings stay in the wallet")
	}
	out, err := ps.d.Card.Onboard(ctx, partyFrom(ctx), req.Msg.ReturnUrl, req.Msg.RefreshUrl)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(out), nil
}

// ---------------------------------------------------------------- inbox

type inboxService struct{ *services }

// busDownPoll is how often an inbox stream reads its inbox while the bus
// is down: wake-ups between replicas are lost then, and every relay hop
// would otherwise wait up to the poll interval.
const busDownPoll = 250 * time.Millisecond

// pollInterval is the stream's poll now: shorter while the bus is down.
func (ib *inboxService) pollInterval() time.Duration {
	if ib.d.BusDown != nil && ib.d.BusDown() {
		return min(ib.d.PollInterval, busDownPoll)
	}
	return ib.d.PollInterval
}

// unavailableRetry is how often an open inbox stream reads again while the
// database is unavailable.
const unavailableRetry = 200 * time.Millisecond

// batch is how many envelopes one stream message carries at most.
const batch = 64

func (ib *inboxService) Subscribe(ctx context.Context, req *connect.Request[sharespotv1.SubscribeRequest], stream *connect.ServerStream[sharespotv1.SubscribeResponse]) error {
	var sub *subscription
	aside(func() { sub = ib.subscribe(ctx, partyFrom(ctx).DeviceID, req.Msg.AfterSeq, stream) })
	defer sub.end()
	return sub.run(ctx)
}

// A subscription is an open inbox stream's state. It lives on the heap,
// and the stream's goroutine waits in run, a small frame, with the work in
// calls that return: that goroutine lives as long as the stream, and its
// stack keeps the largest size it ever grew to (see aside).
type subscription struct {
	ib     *inboxService
	device string
	stream *connect.ServerStream[sharespotv1.SubscribeResponse]
	cursor uint64
	poll   *time.Timer
	watch  *relay.Watch
	sent   func(seq uint64)
	ends   [3]func()
	// read says the next step reads the inbox; else it sends handed, the
	// messages the hub handed over.
	read   bool
	handed []*sharespotv1.Envelope
}

// subscribe watches device's inbox for the stream's life, before the first
// read: a message committed after a read signals the watch's channel
// (which holds one signal, so wake-ups that arrive together are one), and
// the next read takes everything pending. A read that returned less than a
// full batch has drained the inbox as of its snapshot, so the stream waits
// next instead of reading again to find nothing: one read per delivery.
func (ib *inboxService) subscribe(ctx context.Context, device string, cursor uint64, stream *connect.ServerStream[sharespotv1.SubscribeResponse]) *subscription {
	sub := &subscription{ib: ib, device: device, stream: stream, cursor: cursor, read: true, sent: func(uint64) {}}
	sub.poll = time.NewTimer(ib.pollInterval())
	sub.watch, sub.ends[0] = ib.d.Hub.Watch(device)
	if ib.d.Acks != nil {
		sub.sent, sub.ends[1] = ib.d.Acks.Streaming(device)
	}
	sub.ends[2] = ib.pres.open(ctx, device)
	return sub
}

// end undoes subscribe, last step first.
func (sub *subscription) end() {
	sub.poll.Stop()
	for i := len(sub.ends) - 1; i >= 0; i-- {
		if sub.ends[i] != nil {
			sub.ends[i]()
		}
	}
}

// run sends what the inbox holds and waits for more, until the stream
// ends. A message committed on this replica is handed to the stream by
// the hub (relay.Watch.Take) and sent without reading the inbox; a wake-up
// without it (another replica's commit), a gap, or the poll reads.
func (sub *subscription) run(ctx context.Context) error {
	for first := true; ; first = false {
		var again, away bool
		var err error
		aside(func() { again, away, err = sub.step(ctx, first) })
		switch {
		case err != nil:
			return err
		case again:
			continue
		case away:
			if !sub.pause(ctx) {
				return nil
			}
			continue
		}
		select {
		case <-sub.watch.C:
			sub.handed, sub.read = sub.watch.Take(sub.cursor)
		case <-sub.poll.C:
			sub.poll.Reset(sub.ib.pollInterval())
			sub.read = true
		case <-ctx.Done():
			return nil
		}
	}
}

// pause waits out a moment of a database outage: an open stream stays
// open and reads again shortly, so its messages flow within a moment of
// the database's return instead of after the client's reconnect backoff.
// False when the stream ended meanwhile.
func (sub *subscription) pause(ctx context.Context) bool {
	select {
	case <-time.After(unavailableRetry):
		return true
	case <-ctx.Done():
		return false
	}
}

// step reads the inbox if it must and sends what there is: again when a
// full batch was read (more may wait), away when the database is
// unavailable on a stream already open (a new stream is refused:
// unavailable, retry).
func (sub *subscription) step(ctx context.Context, first bool) (again, away bool, err error) {
	envs := sub.handed
	sub.handed = nil // not held while the stream waits
	if sub.read {
		envs, err = store.ReadT(ctx, sub.ib.d.Store, func(tx *store.Tx) ([]*sharespotv1.Envelope, error) {
			return relay.Fetch(tx, sub.device, sub.cursor, batch)
		})
	}
	sub.ib.sawDBAway(err)
	if err != nil {
		if !first && errors.Is(err, store.ErrUnavailable) {
			return false, true, nil
		}
		return false, false, err
	}
	if len(envs) == 0 && !first {
		return false, false, nil
	}
	// The first response goes out at once, even empty, so the client knows
	// it is subscribed. What it carries is marked sent first: the device
	// may acknowledge it before Send returns, and an acknowledgment of a
	// stored message can be held (relay.Acks) whether or not the send
	// succeeds.
	if len(envs) > 0 {
		sub.sent(envs[len(envs)-1].Seq)
	}
	if err := sub.stream.Send(&sharespotv1.SubscribeResponse{Envelopes: envs}); err != nil {
		return false, false, err
	}
	if m := sub.ib.d.Metrics; m != nil {
		now := sub.ib.d.Now()
		for _, e := range envs {
			m.Delivered(int64(e.CreatedUnixMs), now)
		}
	}
	if len(envs) > 0 {
		sub.cursor = envs[len(envs)-1].Seq
	}
	return sub.read && len(envs) == batch, false, nil
}

func (ib *inboxService) Ack(ctx context.Context, req *connect.Request[sharespotv1.AckRequest]) (*connect.Response[sharespotv1.AckResponse], error) {
	p := partyFrom(ctx)
	if ib.d.Acks != nil && ib.d.Acks.Take(p.DeviceID, req.Msg.Seq) {
		// Sent by a stream here: held, and written with others' in a
		// moment, not in a write of its own.
		return connect.NewResponse(&sharespotv1.AckResponse{}), nil
	}
	return write(ctx, ib.services, func(tx *store.Tx) (*sharespotv1.AckResponse, error) {
		_, err := relay.Ack(tx, p.DeviceID, req.Msg.Seq)
		return &sharespotv1.AckResponse{}, err
	})
}
