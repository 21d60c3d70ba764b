package discovery

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
)

// Reading /v1/health/service the lean way.
//
// consul/api decodes an answer into full api.ServiceEntry values with
// encoding/json: for 10,000 instances, 8.6 MiB of JSON and most of the
// agent's CPU per pool update. The watchers still call consul/api (it
// builds the URL, the token, TLS, the query options and the errors, and
// parses the X-Consul-* headers), but through leanTransport, which a client
// made by NewClient carries: for a read tagged with a leanSlot it reads the
// body itself, decodes it with decodeHealth into the slot, and hands
// consul/api an empty list to decode. A client made elsewhere (or over a
// unix socket, where consul/api installs its own transport) has no
// leanTransport; the slot then stays empty and the watcher converts
// consul/api's entries instead: the same result, at the old cost.
//
// The transport also asks for the answer uncompressed (Accept-Encoding:
// identity): Go's transport would otherwise ask for gzip, and Consul would
// compress 8.6 MiB for every read only for the agent to decompress it
// again, on the same host in the usual setup (the agent talks to its local
// Consul agent).

type leanKey struct{}

// leanSlot receives one decoded answer. Slots and their buffers are pooled:
// the answer's byte slices point into buf, so a slot goes back to the pool
// only once the instances are built.
type leanSlot struct {
	ans    healthAnswer
	buf    []byte
	filled bool
	// prev, when set, is the previous answer of the same watch, intact
	// (in another slot): its unchanged entries are copied, not decoded
	// (decodeHealthAfter).
	prev *healthAnswer
}

var slotPool = sync.Pool{New: func() any { return new(leanSlot) }}

func getSlot() *leanSlot {
	s := slotPool.Get().(*leanSlot)
	s.filled = false
	return s
}

// maxPooledBuf: bigger buffers are dropped rather than pooled, so that one
// huge answer does not pin its memory.
const maxPooledBuf = 64 << 20

func putSlot(s *leanSlot) {
	s.ans.reset()
	if cap(s.buf) > maxPooledBuf {
		s.buf = nil
		s.ans = healthAnswer{}
	}
	slotPool.Put(s)
}

// leanTransport is an http.RoundTripper around consul/api's; see above.
type leanTransport struct {
	base http.RoundTripper
}

func (t *leanTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	slot, _ := req.Context().Value(leanKey{}).(*leanSlot)
	if slot == nil || req.Method != http.MethodGet || !strings.Contains(req.URL.Path, "/v1/health/service/") {
		return t.base.RoundTrip(req)
	}
	req = req.Clone(req.Context())
	req.Header.Set("Accept-Encoding", "identity")
	resp, err := t.base.RoundTrip(req)
	if err != nil || resp.StatusCode != http.StatusOK {
		return resp, err
	}
	length := resp.ContentLength
	if length <= 0 && slot.prev != nil && len(slot.prev.data) > 0 {
		// Consul sends a big answer chunked: size the buffer from the
		// last answer, with room for growth, rather than doubling from
		// 64 KiB (a 9 MiB answer ended in 16 MiB, in each of the two
		// slots), and drop one much bigger than that.
		length = int64(len(slot.prev.data)) + int64(len(slot.prev.data))/8
		if int64(cap(slot.buf)) > length+length/2 {
			slot.buf = nil
		}
	}
	buf, err := readBody(resp.Body, slot.buf[:0], length)
	resp.Body.Close()
	slot.buf = buf
	if err != nil {
		return nil, fmt.Errorf("reading the health answer: %w", err)
	}
	if err := decodeHealthAfter(buf, &slot.ans, slot.prev); err != nil {
		return nil, err
	}
	slot.filled = true
	resp.Body = io.NopCloser(strings.NewReader("[]"))
	resp.ContentLength = 2
	return resp, nil
}

// readBody reads r to the end into buf, sized from length (the
// Content-Length, or what the body is expected to be) when there is one.
func readBody(r io.Reader, buf []byte, length int64) ([]byte, error) {
	if length > 0 && int64(cap(buf)) < length {
		buf = make([]byte, 0, length+1)
	}
	if cap(buf) < 4096 {
		buf = make([]byte, 0, 64<<10)
	}
	for {
		if len(buf) == cap(buf) {
			// Double: append would grow a big slice by a quarter, and
			// copy a 9 MiB answer twenty times on the way.
			nb := make([]byte, len(buf), 2*cap(buf))
			copy(nb, buf)
			buf = nb
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
}

// wrapLean puts a leanTransport around the client's transport.
func wrapLean(c *http.Client) {
	base := c.Transport
	if base == nil {
		base = http.DefaultTransport
	}
	if _, ok := base.(*leanTransport); ok {
		return
	}
	c.Transport = &leanTransport{base: base}
}

// fetch makes one read of the watcher's service with q and returns the
// decoded answer; release must be called once the answer is no longer
// needed (its byte slices point into a pooled buffer).
func (w *Watcher) fetch(ctx context.Context, q *api.QueryOptions) (*healthAnswer, *api.QueryMeta, func(), error) {
	if !w.fed {
		// A watcher's own loop reads one answer at a time: it keeps two
		// slots, so a big answer's buffers are not given back to a pool
		// that the GC empties, and allocated and grown again, every read.
		// It reads into one while the other holds the last answer
		// decoded, whose unchanged entries the new one copies.
		if w.slots[0] == nil {
			w.slots = [2]*leanSlot{new(leanSlot), new(leanSlot)}
		}
		slot, last := w.slots[0], w.slots[1]
		slot.filled, slot.prev = false, nil
		if last.filled {
			slot.prev = &last.ans
		}
		q = q.WithContext(context.WithValue(ctx, leanKey{}, slot))
		entries, meta, err := w.src.Service(w.cfg.Service, w.cfg.Tag, false, q)
		slot.prev = nil
		switch {
		case err != nil:
			slot.filled = false
			return nil, meta, func() {}, err
		case !slot.filled:
			return fromAPI(entries), meta, func() {}, nil
		}
		w.slots[0], w.slots[1] = last, slot
		return &slot.ans, meta, func() {}, nil
	}
	slot := getSlot()
	q = q.WithContext(context.WithValue(ctx, leanKey{}, slot))
	// passingOnly=false: warning instances stay, with their warning
	// weight; the builder drops the critical ones.
	entries, meta, err := w.src.Service(w.cfg.Service, w.cfg.Tag, false, q)
	if err != nil || !slot.filled {
		putSlot(slot)
		if err != nil {
			return nil, meta, func() {}, err
		}
		return fromAPI(entries), meta, func() {}, nil
	}
	return &slot.ans, meta, func() { putSlot(slot) }, nil
}

// Pacing reads by their cost. Consul spends about 16 ns per byte producing
// a /v1/health/service answer (141 ms for the 8.6 MiB of 10,000 instances,
// measured with the bench on a dev agent), and every change of the service
// ends the blocking query at once: with changes coming 20 times a second,
// an unpaced watch of 10,000 instances keeps Consul busy producing answers
// and the agent decoding them. After each answer the watch therefore
// pauses for size / paceRate, at most maxPace, and picks up the changes of
// the pause together in its next read. For 10,000 instances (8.6 MiB) that
// is 270 ms: Consul spends at most about a third of a core on the watch,
// and a change is seen at worst after the pause plus one read, ≈ 0.45 s.
// Answers under 3 MiB (≈ 3,500 instances) pause less than the 100 ms the
// agent's query interval enforces anyway. A longer pace was measured
// (bench/README.md, fifth pass: 400 and 560 ms after 9 MiB): under 20
// changes a second it saved Consul ≈ 0.06 of its 0.27–0.36 cores and took
// join or leave past 1 s p99 on a loaded machine, so the rate stays.
const (
	paceRate = 32 << 20 // bytes per second
	maxPace  = 400 * time.Millisecond
)

// paceFor is the pause after an answer of size bytes.
func paceFor(size int) time.Duration {
	return min(time.Duration(float64(size)/paceRate*float64(time.Second)), maxPace)
}

// answerSize is the size of an answer as read, 0 when unknown (consul/api
// decoded it).
func answerSize(a *healthAnswer) int {
	if a == nil {
		return 0
	}
	return a.bytes
}
