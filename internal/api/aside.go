package api

// aside runs f on a goroutine of its own and waits for it; a panic in f is
// raised again on the caller's goroutine.
//
// It keeps deep calls off an inbox stream's goroutine. That goroutine lives
// as long as the stream, and the runtime halves a stack only when less than
// a quarter of it is in use: one call that grows it from 4 KiB to 8 KiB (the
// stream's authentication, a Send through connect and the HTTP/2 server)
// would cost every idle stream 4 KiB more for as long as it stays open. On
// a goroutine that ends, the deeper stack is freed with it.
func aside(f func()) {
	done := make(chan any, 1)
	go func() {
		defer func() { done <- recover() }()
		f()
	}()
	if p := <-done; p != nil {
		panic(p)
	}
}
