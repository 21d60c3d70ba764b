package discovery

import (
	"time"
)

// Full passes. A catalog change that names no service (an instance added,
// removed or changed without a check or tag to show it) can only be found
// by asking every service: a full pass, which probes each service's index
// and reads only those whose index moved (Hub.read). Churn in a big catalog
// would make that a request per service per change, so passes are spaced:
// at least fullPassGap apart, and at least passGapFactor times as long as
// the last pass's probes took (so that probes take at most a ninth of the
// hub's request capacity however slow Consul or the agent are), but never
// more than maxPassGap. Measured with bench/discovery -churn at 1,000 services
// × 10 (20 changes/s, load 14): a pass a second cost Consul 0.34 cores and
// requests under churn fell to 0.48 of calm. Changes that name their
// services (a check, a tag, a service appearing or leaving) are read at
// once, whatever the pass.
const (
	fullPassGap   = time.Second
	passGapFactor = 8
	maxPassGap    = 10 * time.Second
)

// readScheduler decides which of the hub's services to read next: the
// services marked dirty, at most concurrency at once, each read once however
// often it is marked before its turn, and again after a read in flight when
// it was marked meanwhile; a failed read comes back after its backoff. It
// also spaces the full passes. Only the hub's loop touches it.
type readScheduler struct {
	all         []*Watcher
	concurrency int

	// urgent holds the services named by a change, queue those of full
	// passes: a named change is read before a pass's probes (at 100
	// services × 1,000, a join waited up to 5 s behind a pass's reads).
	// A watcher moved to urgent leaves a stale entry in queue, skipped.
	urgent []*Watcher
	queue  []*Watcher
	queued map[*Watcher]bool
	// probe: the queued read may be skipped if the service's index has
	// not moved (a full pass); a mark for a named change clears it.
	probe    map[*Watcher]bool
	inflight map[*Watcher]bool
	again    map[*Watcher]bool // marked while in flight
	retryAt  map[*Watcher]*time.Timer
	// retries receives a watcher whose backoff ended.
	retries chan *Watcher

	// Full passes: when the last began, whether one is under way (and
	// when it began), the timer of one asked for too early, and how long
	// the last one took.
	lastFull   time.Time
	inPass     bool
	probePass  bool
	passProbes time.Duration // the probes' time in the pass under way
	passTook   time.Duration
	fullTimer  *time.Timer
	fullC      <-chan time.Time
}

func newReadScheduler(all []*Watcher, concurrency int) *readScheduler {
	return &readScheduler{
		all: all, concurrency: concurrency,
		queued: map[*Watcher]bool{}, probe: map[*Watcher]bool{}, inflight: map[*Watcher]bool{}, again: map[*Watcher]bool{},
		retryAt: map[*Watcher]*time.Timer{}, retries: make(chan *Watcher),
	}
}

// mark asks for a read of w: queued, or again after the read in flight. A
// pending retry is replaced by the read.
func (s *readScheduler) mark(w *Watcher) {
	if s.queued[w] && s.probe[w] {
		delete(s.probe, w)
		s.urgent = append(s.urgent, w)
		return
	}
	delete(s.probe, w)
	s.enqueue(w, true)
}

// markProbe asks for a read of w that may be skipped when its index has
// not moved; a read already asked for stays a full one.
func (s *readScheduler) markProbe(w *Watcher) {
	if !s.queued[w] && !s.inflight[w] {
		s.probe[w] = true
	}
	s.enqueue(w, false)
}

func (s *readScheduler) enqueue(w *Watcher, urgent bool) {
	switch {
	case s.inflight[w]:
		s.again[w] = true
	case !s.queued[w]:
		if t := s.retryAt[w]; t != nil {
			t.Stop()
			delete(s.retryAt, w)
		}
		s.queued[w] = true
		if urgent {
			s.urgent = append(s.urgent, w)
		} else {
			s.queue = append(s.queue, w)
		}
	}
}

// readAll marks every service now: with probe for a full pass (a read
// happens only where the index moved), without for a baseline or a resync.
func (s *readScheduler) readAll(now time.Time, probe bool) {
	s.lastFull, s.inPass, s.probePass, s.passProbes = now, true, probe, 0
	if s.fullTimer != nil {
		s.fullTimer.Stop()
		s.fullTimer, s.fullC = nil, nil
	}
	for _, w := range s.all {
		if probe {
			s.markProbe(w)
		} else {
			s.mark(w)
		}
	}
}

// fullPass asks for a full pass: now, or when the gap since the last one
// has passed (fullDue then fires). Asking again while one waits changes
// nothing: it will read what changed meanwhile too.
func (s *readScheduler) fullPass(now time.Time) {
	if s.fullC != nil {
		return
	}
	gap := min(max(fullPassGap, passGapFactor*s.passTook), maxPassGap)
	if wait := gap - now.Sub(s.lastFull); wait > 0 {
		s.fullTimer = time.NewTimer(wait)
		s.fullC = s.fullTimer.C
		return
	}
	s.readAll(now, true)
}

// fullDue is the channel of a full pass waiting for its gap; nil if none.
func (s *readScheduler) fullDue() <-chan time.Time { return s.fullC }

// rereadInflight makes every read in flight be made again once done.
func (s *readScheduler) rereadInflight() {
	for w := range s.inflight {
		s.again[w] = true
	}
}

// next returns the next service to read, if a read may start, and
// whether the read may be skipped when the service's index has not moved.
func (s *readScheduler) next() (w *Watcher, probe, ok bool) {
	for len(s.inflight) < s.concurrency {
		switch {
		case len(s.urgent) > 0:
			w = s.urgent[0]
			s.urgent[0] = nil
			s.urgent = s.urgent[1:]
		case len(s.queue) > 0:
			w = s.queue[0]
			s.queue[0] = nil
			s.queue = s.queue[1:]
		default:
			return nil, false, false
		}
		if s.queued[w] {
			break
		}
		// A stale entry: read already, from the other queue.
	}
	if w == nil || !s.queued[w] {
		return nil, false, false
	}
	delete(s.queued, w)
	probe = s.probe[w]
	delete(s.probe, w)
	s.inflight[w] = true
	return w, probe, true
}

// done records the end of a read at now. A failed read is retried after
// its backoff through retry, which sends the watcher to the loop (see
// retries).
func (s *readScheduler) done(r readDone, now time.Time, retry func(w *Watcher, after time.Duration) *time.Timer) {
	delete(s.inflight, r.w)
	switch {
	case s.again[r.w]:
		delete(s.again, r.w)
		s.mark(r.w)
	case r.failed:
		s.retryAt[r.w] = retry(r.w, r.retry)
	}
	s.passProbes += r.probeTook
	if s.inPass && len(s.queued) == 0 && len(s.inflight) == 0 {
		s.inPass = false
		if s.probePass {
			// What the probes cost, as if run side by side; the reads
			// of the services that changed are the changes' own cost,
			// not the pass's.
			s.passTook = s.passProbes / time.Duration(s.concurrency)
		}
	}
}

// retried takes a watcher whose backoff ended and reads it.
func (s *readScheduler) retried(w *Watcher) {
	delete(s.retryAt, w)
	s.mark(w)
}

// busy: a read is queued, in flight or waiting for its backoff, or a full
// pass waits for its gap.
func (s *readScheduler) busy() bool {
	return len(s.queued) > 0 || len(s.inflight) > 0 || len(s.retryAt) > 0 || s.fullC != nil
}

// stop stops the timers.
func (s *readScheduler) stop() {
	for _, t := range s.retryAt {
		t.Stop()
	}
	if s.fullTimer != nil {
		s.fullTimer.Stop()
	}
}
