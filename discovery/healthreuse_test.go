package discovery

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
)

// decodeAfterMatches decodes data after prevData (decodeHealthAfter) and
// fails the test unless the result is what decodeHealth gives data alone:
// the same error or none, the same values. The previous answer's bytes are
// overwritten before the result is read, so no slice of it may still point
// there. It returns the answer, decoded from its own copy of data.
func decodeAfterMatches(t testing.TB, prev *healthAnswer, data []byte) *healthAnswer {
	t.Helper()
	own := append([]byte(nil), data...)
	var want healthAnswer
	wantErr := decodeHealth(data, &want)
	got := new(healthAnswer)
	gotErr := decodeHealthAfter(own, got, prev)
	if (gotErr == nil) != (wantErr == nil) {
		t.Fatalf("decoding %q after %q: error %v, want %v", data, prev.data, gotErr, wantErr)
	}
	if gotErr != nil {
		return nil
	}
	if prev != nil {
		for i := range prev.data {
			prev.data[i] = 'X'
		}
	}
	if g, w := views(t, got), views(t, &want); !reflect.DeepEqual(g, w) {
		t.Fatalf("decoding %q after the previous answer:\nreusing %+v\nfresh   %+v", data, g, w)
	}
	for i, e := range got.entries {
		if e.rawLo < 0 || e.rawHi > len(own) || e.rawLo >= e.rawHi || own[e.rawLo] != '{' || own[e.rawHi-1] != '}' {
			t.Fatalf("entry %d: bytes [%d, %d) of %d are not an object", i, e.rawLo, e.rawHi, len(own))
		}
	}
	return got
}

// decodeOwn decodes its own copy of data, to be overwritten later.
func decodeOwn(t testing.TB, data []byte) *healthAnswer {
	t.Helper()
	a := new(healthAnswer)
	if err := decodeHealth(append([]byte(nil), data...), a); err != nil {
		t.Fatalf("decoding %q: %v", data, err)
	}
	return a
}

// TestDecodeHealthAfter: an answer decoded after the previous one, reusing
// its unchanged entries, reads what a fresh decoding reads, whatever
// changed between the two — fields the pool reads or skips, entries
// added, removed, moved or repeated, escapes — and three answers in a row
// keep reading right once the oldest's bytes are gone.
func TestDecodeHealthAfter(t *testing.T) {
	e := func(id, node, extra string) string {
		return `{"Node":{"Node":"` + node + `","Address":"10.0.0.1","TaggedAddresses":{"lan":"10.0.0.1"}},` +
			`"Service":{"ID":"` + id + `","Service":"web","Tags":["a"],"Meta":{"v":"1"},"Port":80,"Weights":{"Passing":2,"Warning":1},"ModifyIndex":7` + extra + `},` +
			`"Checks":[{"CheckID":"serfHealth","Status":"passing","Output":"ok"},{"CheckID":"service:` + id + `","Status":"passing","Output":"fine"}]}`
	}
	list := func(es ...string) string { return "[" + strings.Join(es, ",") + "]" }
	a, b, c, d := e("a", "n1", ""), e("b", "n1", ""), e("c", "n2", ""), e("d", "n2", "")
	base := list(a, b, c, d)
	cases := []struct{ name, prev, next string }{
		{"same", base, base},
		{"same, other spacing", base, "[ " + a + " ,\n" + b + "," + c + "," + d + " ]"},
		{"a field the pool skips", base, list(a, e("b", "n1", `,"Proxy":{}`), c, d)},
		{"a node field the pool skips", base, list(a, strings.Replace(b, `"lan"`, `"wan"`, 1), c, d)},
		{"a check's output past the drain prefix", base, list(a, strings.Replace(b, `"fine"`, `"finer"`, 1), c, d)},
		{"drain", base, list(a, strings.Replace(b, `"fine"`, `"draining: stop"`, 1), c, d)},
		{"a check's status", base, list(a, b, strings.Replace(c, `"passing","Output":"fine"`, `"critical","Output":"fine"`, 1), d)},
		{"the port", base, list(a, b, strings.Replace(c, `"Port":80`, `"Port":81`, 1), d)},
		{"meta", base, list(strings.Replace(a, `"v":"1"`, `"v":"2"`, 1), b, c, d)},
		{"every entry", base, list(e("a", "n1", `,"X":1`), e("b", "n1", `,"X":1`), e("c", "n2", `,"X":1`), e("d", "n2", `,"X":1`))},
		{"inserted first", base, list(e("0", "n1", ""), a, b, c, d)},
		{"inserted in the middle", base, list(a, b, e("b2", "n1", ""), e("b3", "n1", ""), e("b4", "n1", ""), e("b5", "n1", ""), c, d)},
		{"removed", base, list(a, d)},
		{"removed and changed", base, list(a, strings.Replace(d, `"Port":80`, `"Port":82`, 1))},
		{"moved", base, list(d, c, b, a)},
		{"repeated", base, list(a, a, b, b, c, d, d)},
		{"null entries", base, list("null", a, "null", b, c, d, "null")},
		{"empty", base, "[]"},
		{"null", base, "null"},
		{"from empty", "[]", base},
		{"escapes", list(e(`\u0061`, "n1", ""), b), list(e(`\u0061`, "n1", ""), e("b", `n\u0031`, ""))},
		{"repeated keys", list(`{"Service":{"ID":"a","Port":1},"Service":{"Port":2},"Checks":[{"Status":"critical"}],"Checks":[]}`, b),
			list(`{"Service":{"ID":"a","Port":1},"Service":{"Port":2},"Checks":[{"Status":"critical"}],"Checks":[]}`, b)},
		{"empty objects", list("{}", `{"Service":null}`, `{"Checks":null}`), list("{}", `{"Service":null}`, `{"Checks":null}`, "{}")},
		{"then broken", base, "[" + a + "," + b + ",]"},
		{"broken after a reused entry", base, "[" + a + "x"},
		{"a reused entry cut short", base, "[" + a[:len(a)-1]},
		{"the first entry cut short", base, a[:len(a)-1]},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			prev := decodeOwn(t, []byte(tc.prev))
			decodeAfterMatches(t, prev, []byte(tc.next))
		})
	}
	t.Run("three in a row", func(t *testing.T) {
		answers := []string{base, list(a, e("b", "n1", `,"X":1`), c, d), list(a, b, c, strings.Replace(d, `"v":"1"`, `"v":"3"`, 1)), base, base}
		prev := decodeOwn(t, []byte(answers[0]))
		for _, next := range answers[1:] {
			prev = decodeAfterMatches(t, prev, []byte(next))
		}
	})
	t.Run("fixture", func(t *testing.T) {
		prev := decodeOwn(t, healthFixture(300, 0))
		for _, changed := range []int{5, 0, 300, 7} {
			prev = decodeAfterMatches(t, prev, healthFixture(300, changed))
		}
		// One entry of 300 changed in a field the pool skips.
		data := healthFixture(300, 0)
		i := bytes.Index(data, []byte(`"Datacenter":"dc1"`))
		i = bytes.Index(data[i+1:], []byte(`"Datacenter":"dc1"`)) + i + 1
		data = append(append(append([]byte(nil), data[:i]...), `"Datacenter":"dc2"`...), data[i+len(`"Datacenter":"dc1"`):]...)
		decodeAfterMatches(t, prev, data)
	})
}

// TestDecodeHealthAfterReuses: unchanged entries are copied, not decoded,
// so the fast path is really taken (the test above would pass without it),
// also after entries were added or removed.
func TestDecodeHealthAfterReuses(t *testing.T) {
	prev := decodeOwn(t, healthFixture(50, 0))
	for _, tc := range []struct {
		name   string
		data   []byte
		reused int
	}{
		{"3 changed", healthFixture(50, 3), 47},
		{"3 added", healthFixture(53, 0), 50},
		{"10 removed", healthFixture(40, 0), 40},
	} {
		var a healthAnswer
		if err := decodeHealthAfter(tc.data, &a, prev); err != nil {
			t.Fatal(err)
		}
		if a.reused != tc.reused {
			t.Errorf("%s: %d entries reused, want %d", tc.name, a.reused, tc.reused)
		}
	}
	// Entries removed from the middle, beyond the window: the decoder
	// finds its place again.
	var full, cut healthAnswer
	data := healthFixture(50, 0)
	if err := decodeHealth(data, &full); err != nil {
		t.Fatal(err)
	}
	var parts [][]byte
	for i, e := range full.entries {
		if i < 10 || i >= 20 {
			parts = append(parts, data[e.rawLo:e.rawHi])
		}
	}
	// Entry 20 changed as well, so that one is decoded, then followed.
	parts[10] = bytes.Replace(parts[10], []byte(`"version":"1"`), []byte(`"version":"9"`), 1)
	if err := decodeHealthAfter(append(append([]byte("["), bytes.Join(parts, []byte(","))...), ']'), &cut, prev); err != nil {
		t.Fatal(err)
	}
	if cut.reused != 39 {
		t.Errorf("10 removed in the middle and one changed: %d entries reused, want 39", cut.reused)
	}
}

// FuzzDecodeHealthAfter decodes an answer, then the same answer with
// bytes [at, at+cut) replaced by edit after it, and checks the second
// against a fresh decoding (decodeAfterMatches), and the first against
// consul/api's decoding.
func FuzzDecodeHealthAfter(f *testing.F) {
	f.Add(healthFixture(3, 0), []byte(`"v2"`), uint(700), uint(4))
	f.Add([]byte(`[{"Service":{"ID":"a","Port":1}},{"Service":{"ID":"b","Port":2}}]`), []byte(`,{"Service":{"ID":"c","Port":3}}`), uint(32), uint(0))
	f.Add([]byte(`[{"Service":{"ID":"a","Port":1}},{"Service":{"ID":"b","Port":2}}]`), []byte(``), uint(32), uint(33))
	f.Add([]byte(`[{"Service":{"ID":"\u0061","Port":1}},{"Checks":[{"Status":"passing"}]}]`), []byte(`critical`), uint(52), uint(7))
	f.Fuzz(func(t *testing.T, prevData, edit []byte, at, cut uint) {
		if compareDecoders(t, prevData) != nil {
			return
		}
		at = min(at, uint(len(prevData)))
		cut = min(cut, uint(len(prevData))-at)
		data := append(append(append([]byte(nil), prevData[:at]...), edit...), prevData[at+cut:]...)
		prev := decodeOwn(t, prevData)
		decodeAfterMatches(t, prev, data)
	})
}

// TestBuilderAfterReuse: a builder fed answers decoded after each other
// (entries copied with the record the last build found for them) gives
// the pools, changes and warnings of a builder fed the same answers
// decoded afresh, over random steps: entries changing, leaving, coming
// back, repeated on one node or on two, unusable, answers decoded but not
// built (an equal index), and forget.
func TestBuilderAfterReuse(t *testing.T) {
	rng := rand.New(rand.NewPCG(19, 4))
	entry := func(id, node string, idx, port int, status string) string {
		return fmt.Sprintf(`{"Node":{"Node":%q,"Address":"10.0.0.1"},"Service":{"ID":%q,"Service":"web","Port":%d,"ModifyIndex":%d,"Meta":{"v":"%d"}},"Checks":[{"CheckID":"c","Status":%q}]}`,
			node, id, port, idx, idx, status)
	}
	type inst struct{ idx, port int }
	state := map[string]inst{}
	ids := []string{"a", "b", "c", "d", "e", "f"}
	var reuse, fresh = newInstanceBuilder(), newInstanceBuilder()
	var prev *healthAnswer
	next := 100
	unchanged := 0
	for step := range 2000 {
		for _, id := range ids {
			if rng.IntN(15) == 0 {
				next++
				state[id] = inst{next, 80 + rng.IntN(2)*rng.IntN(70000)} // now and then a bad port
			}
		}
		var es []string
		for _, id := range ids {
			st, ok := state[id]
			if !ok || rng.IntN(25) == 0 {
				continue
			}
			status := "passing"
			if rng.IntN(40) == 0 {
				status = "critical"
			}
			es = append(es, entry(id, "n1", st.idx, st.port, status))
			switch rng.IntN(40) {
			case 0:
				es = append(es, entry(id, "n1", st.idx, st.port, status)) // same key twice
			case 1:
				es = append(es, entry(id, "n2", st.idx, st.port, status)) // on two nodes
			}
		}
		if rng.IntN(30) == 0 {
			rng.Shuffle(len(es), func(i, j int) { es[i], es[j] = es[j], es[i] })
		}
		data := []byte("[" + strings.Join(es, ",") + "]")
		a := new(healthAnswer)
		if err := decodeHealthAfter(append([]byte(nil), data...), a, prev); err != nil {
			t.Fatal(err)
		}
		prev = a
		if rng.IntN(10) == 0 {
			continue // decoded, not built
		}
		if rng.IntN(20) == 0 {
			reuse.forget()
			fresh.forget()
		}
		var f healthAnswer
		if err := decodeHealth(data, &f); err != nil {
			t.Fatal(err)
		}
		var w1, w2 []string
		p1, c1 := reuse.build(a, func(id, reason string) { w1 = append(w1, id+": "+reason) })
		p2, c2 := fresh.build(&f, func(id, reason string) { w2 = append(w2, id+": "+reason) })
		if !c2 {
			unchanged++
		}
		// The records kept are the ones this build used (the walk that
		// drops the others is skipped when none is left to drop).
		if len(reuse.byKey) != len(fresh.byKey) {
			t.Fatalf("step %d: %d records kept, want %d", step, len(reuse.byKey), len(fresh.byKey))
		}
		for k, b := range reuse.byKey {
			if b.gen != reuse.gen || fresh.byKey[k] == nil {
				t.Fatalf("step %d: record %q kept from an older build", step, k)
			}
		}
		if c1 != c2 || !sameInstances(p1, p2) || !reflect.DeepEqual(w1, w2) {
			t.Fatalf("step %d (%s): reusing: changed %v, %+v, warnings %q; fresh: changed %v, %+v, warnings %q", step, data, c1, p1, w1, c2, p2, w2)
		}
	}
	if unchanged < 200 {
		t.Fatalf("only %d of the builds saw no change: the steps change too much to test reuse", unchanged)
	}
}

// TestBuilderIgnoresStaleRecords: an entry's record is used only by the
// builder that made it, and only in the build right after: an answer
// copied from an older one (the answer in between was decoded by
// consul/api, not after it) or built by another builder looks its
// records up.
func TestBuilderIgnoresStaleRecords(t *testing.T) {
	check := func(name string, ib *instanceBuilder, a *healthAnswer) {
		t.Helper()
		var f healthAnswer
		if err := decodeHealth(a.data, &f); err != nil {
			t.Fatal(err)
		}
		got, _ := ib.build(a, nil)
		want, _ := newInstanceBuilder().build(&f, nil)
		if !sameInstances(got, want) {
			t.Fatalf("%s: pool %+v, want %+v", name, got, want)
		}
		for k, b := range ib.byKey {
			if b.gen != ib.gen {
				t.Fatalf("%s: record %q kept from an older build", name, k)
			}
		}
		if len(ib.byKey) != len(got) {
			t.Fatalf("%s: %d records for %d instances", name, len(ib.byKey), len(got))
		}
	}
	// The same builder, an answer in between without the copied entries.
	ib := newInstanceBuilder()
	a := decodeOwn(t, healthFixture(20, 0))
	check("first", ib, a)
	check("in between, empty", ib, decodeOwn(t, []byte(`[]`)))
	c := new(healthAnswer)
	if err := decodeHealthAfter(healthFixture(20, 0), c, a); err != nil || c.reused != 20 {
		t.Fatalf("decoding after the first: %v, %d reused", err, c.reused)
	}
	check("copied from the first", ib, c)

	// Another builder, at the generation that would take the records.
	x, y := newInstanceBuilder(), newInstanceBuilder()
	check("other builder's first", y, decodeOwn(t, []byte(`[]`)))
	a = decodeOwn(t, healthFixture(20, 0))
	check("first", x, a)
	c = new(healthAnswer)
	if err := decodeHealthAfter(healthFixture(20, 0), c, a); err != nil || c.reused != 20 {
		t.Fatalf("decoding after the first: %v, %d reused", err, c.reused)
	}
	check("copied, built by the other builder", y, c)
}
