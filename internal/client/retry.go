package client

import (
	"context"
	"errors"
	"strings"
	"time"

	"connectrpc.com/connect"
)

// Final reports whether err is the server's final word on a call: a
// refusal that asking again will not change. Transport failures,
// unavailable, deadline exceeded and rate limits (resource exhausted with a
// Retry-After) are not final.
func Final(err error) bool {
	var ce *connect.Error
	if !errors.As(err, &ce) {
		return false
	}
	switch ce.Code() {
	case connect.CodeResourceExhausted:
		return ce.Meta().Get("Retry-After") == ""
	case connect.CodeFailedPrecondition, connect.CodeNotFound, connect.CodeInvalidArgument,
		connect.CodePermissionDenied, connect.CodeAlreadyExists:
		return true
	}
	return false
}

// IgnoreRefusal drops the server's final refusals (the flow moved on: the
// session ended or timed out), keeping transport failures and refusals
// that say to try again (a rate limit).
func IgnoreRefusal(err error) error {
	if Final(err) {
		return nil
	}
	return err
}

// Lost reports whether err is a call whose answer never came: the server
// died, the connection broke or its stream was reset (which Connect
// reports as canceled), the answer was cut off mid-body (the call may or
// may not have been applied), or the server asked to retry. Retry checks
// the caller's own context first, so a call the caller canceled is not
// sent again.
func Lost(err error) bool {
	if err == nil {
		return false
	}
	switch connect.CodeOf(err) {
	case connect.CodeUnavailable, connect.CodeUnknown, connect.CodeDeadlineExceeded, connect.CodeAborted, connect.CodeCanceled:
		return true
	case connect.CodeResourceExhausted:
		return strings.Contains(err.Error(), "rate")
	}
	return false
}

// Retry calls f until it succeeds, fails with something other than a lost
// answer, or ctx ends, waiting a little longer each time (20 ms, doubling
// up to 500 ms). A call that may have been applied before its answer was
// lost is sent again: f must be idempotent, or find out what the first
// call did.
func Retry(ctx context.Context, f func() error) error {
	backoff := 20 * time.Millisecond
	for {
		err := f()
		if err == nil || !Lost(err) || ctx.Err() != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 500*time.Millisecond)
	}
}
