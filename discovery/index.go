package discovery

// NextIndex returns the index to block on next, given the index the
// previous query waited on (prev) and the X-Consul-Index it answered with
// (got). It is Consul's blocking-query rules (api-docs/features/blocking,
// "Implementation Details") as a pure function:
//
//   - got < prev: the index went backwards (a raft snapshot restored, the
//     servers or a local agent restarted, a streaming view rebuilt). Reset to
//     0, which restarts the loop with a non-blocking read of the full state;
//     keeping the old index could miss updates for an unbounded time.
//   - got == 0: a Consul bug, but it happened; blocking on 0 is a busy loop.
//     Use 1, which is always safe to wait on.
//   - otherwise got; got == prev means the wait timed out or an idempotent
//     write woke it, which is no news.
//
// A returned 0 only ever means "reset": the next query does not block.
func NextIndex(prev, got uint64) uint64 {
	switch {
	case got < prev:
		return 0
	case got == 0:
		return 1
	default:
		return got
	}
}
