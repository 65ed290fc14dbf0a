// Package problem carries the kind of a refusal from the domain packages to
// the API, so each becomes the right Connect code with a message that says
// what was wrong and what to do.
package problem

import (
	"errors"
	"fmt"
)

// Kind classifies a refusal.
type Kind int

// Kinds, each mapped to one Connect code by the API.
const (
	Invalid         Kind = iota + 1 // the request itself is malformed
	NotFound                        // no such thing (or not the caller's)
	Denied                          // the caller may not do this
	WrongState                      // not now: out of order, expired, ended
	Exhausted                       // not enough: volume, funds, rate
	AlreadyExists                   // taken, or done already
	Unauthenticated                 // no valid token
)

// Error is a refusal.
type Error struct {
	Kind Kind
	Msg  string
}

func (e *Error) Error() string { return e.Msg }

func newf(k Kind, format string, a ...any) error {
	return &Error{Kind: k, Msg: fmt.Sprintf(format, a...)}
}

// Invalidf refuses a malformed request.
func Invalidf(format string, a ...any) error { return newf(Invalid, format, a...) }

// NotFoundf refuses a request for something that does not exist.
func NotFoundf(format string, a ...any) error { return newf(NotFound, format, a...) }

// Deniedf refuses a caller that may not do this.
func Deniedf(format string, a ...any) error { return newf(Denied, format, a...) }

// WrongStatef refuses a request that does not fit the current state.
func WrongStatef(format string, a ...any) error { return newf(WrongState, format, a...) }

// Exhaustedf refuses for lack of volume, funds or rate.
func Exhaustedf(format string, a ...any) error { return newf(Exhausted, format, a...) }

// AlreadyExistsf refuses a duplicate.
func AlreadyExistsf(format string, a ...any) error { return newf(AlreadyExists, format, a...) }

// Unauthenticatedf refuses a caller without a valid token.
func Unauthenticatedf(format string, a ...any) error { return newf(Unauthenticated, format, a...) }

// KindOf returns err's kind, or 0 if err is not a refusal.
func KindOf(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return 0
}
