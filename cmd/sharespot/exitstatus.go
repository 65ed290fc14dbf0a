package main

import (
	"errors"
	"fmt"

	"github.com/sharespot/sharespot/internal/client"
	"github.com/sharespot/sharespot/internal/exitcode"
	"github.com/sharespot/sharespot/internal/guest"
)

// How connect ends, for scripts (internal/exitcode has the table): done
// (0), declined (3: the person, --max-spend or the host said no), or
// interrupted (130 for Ctrl-C, 143 for SIGTERM). Each ends the session in
// order first, so what stdout says was paid is what was.

// stopped ends the session after an interrupt: the exit code is the
// signal's.
func (r *guestRun) stopped() error {
	return exitcode.Interrupt(r.env.ctx, r.end("guest stopped"))
}

// spentUp ends the session whose paid data is used, once --max-spend
// stopped the next top-up: declined, by the person's own limit.
func (r *guestRun) spentUp() error {
	if err := r.end("spending limit reached and the data paid for used"); err != nil {
		return err
	}
	cur := r.ses.Tariff.GetCurrency()
	return exitcode.With(exitcode.Declined, fmt.Errorf("the session ended at your spending limit of %s (--max-spend): a top-up past it was not bought",
		client.FormatMoney(r.limit, cur)))
}

// declined is what to say when err is a "no" (the person's at the fee
// prompt, their --max-spend's, or the host's); nil for any other error.
func (r *guestRun) declined(err error) error {
	var res *guest.Resolved
	switch {
	case errors.Is(err, guest.ErrNotApproved) && r.over:
		return fmt.Errorf("%w: it would pass your spending limit (--max-spend)", err)
	case errors.Is(err, guest.ErrNotApproved), errors.As(err, &res) && res.Declined():
		return err
	}
	return nil
}
