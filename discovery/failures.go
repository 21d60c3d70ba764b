package discovery

import (
	"fmt"
	"time"

	"github.com/meshlb/meshlb/internal/retry"
)

// readFailures is the failure bookkeeping of one loop reading Consul (a
// Watcher's, or one of the hub's long polls): the backoff, the run of
// failures, whether the token was refused, and which failures to log (the
// first, every logEveryNth, and any that changes between refused and
// unreachable). Only the loop's goroutine touches it.
type readFailures struct {
	backoff *retry.Backoff
	outage  retry.Outage
	lastACL bool
}

func newReadFailures(lo, hi time.Duration) readFailures {
	return readFailures{backoff: retry.NewBackoff(lo, hi), outage: retry.Outage{Every: logEveryNth}}
}

// readFailure is what fail returns about one failed read.
type readFailure struct {
	// err says what failed, and that Consul refused the token when acl.
	err   error
	acl   bool
	retry time.Duration
	// log: this failure is one to log; args are the key/value pairs to
	// log it with.
	log  bool
	args []any
}

// fail records a failed read of what ("health of service \"web\"") at now.
func (f *readFailures) fail(err error, what string, now time.Time) readFailure {
	acl := IsACLError(err)
	if acl {
		err = fmt.Errorf("consul refused the token (ACL): reading %s: %w", what, err)
	} else {
		err = fmt.Errorf("reading %s from consul: %w", what, err)
	}
	log, _ := f.outage.Fail(now)
	log = log || acl != f.lastACL
	f.lastACL = acl
	r := readFailure{err: err, acl: acl, retry: f.backoff.Next(), log: log}
	if log {
		r.args = []any{"failures", f.outage.Failures(), "down_for", now.Sub(f.outage.Since()).Round(time.Millisecond),
			"retry_in", r.retry.Round(time.Millisecond), "error", err}
	}
	return r
}

// downSince is when the current run of failures began; zero while reads
// succeed.
func (f *readFailures) downSince() time.Time { return f.outage.Since() }

// ok records a successful read at now. When it ends a run of failures it
// returns the key/value pairs to log the recovery with, else nil.
func (f *readFailures) ok(now time.Time) []any {
	f.backoff.Reset()
	f.lastACL = false
	n, lasted, ended := f.outage.Recover(now)
	if !ended {
		return nil
	}
	return []any{"failures", n, "down_for", lasted.Round(time.Millisecond)}
}
