package client

import "time"

// SetChannelIdle sets how long an unused channel stays open, for clients
// made after it, until the returned function puts it back.
func SetChannelIdle(d time.Duration) (restore func()) {
	old := channelIdle
	channelIdle = d
	return func() { channelIdle = old }
}
