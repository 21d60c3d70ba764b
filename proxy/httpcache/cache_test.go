package httpcache

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"
)

func stored(t *testing.T, body string, res http.Header, req http.Header) *Entry {
	t.Helper()
	now := time.Now()
	return NewEntry(req, 200, res, []byte(body), now, now)
}

func TestCacheVariantsAndInvalidate(t *testing.T) {
	c, err := New(Config{MaxSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	k := Key("Example.com:8070", "/p?q=1")
	if k != "example.com/p?q=1" {
		t.Fatalf("Key = %q", k)
	}
	if _, miss := c.Lookup(k, hdr()); miss != "uri-miss" {
		t.Fatalf("empty cache: miss %q", miss)
	}
	res := func() http.Header { return hdr("Cache-Control", "max-age=60", "Vary", "Accept-Language") }
	c.Store(k, stored(t, "en", res(), hdr("Accept-Language", "en")))
	c.Store(k, stored(t, "de", res(), hdr("Accept-Language", "de")))
	for lang, want := range map[string]string{"en": "en", "de": "de"} {
		e, miss := c.Lookup(k, hdr("Accept-Language", lang))
		if e == nil || string(e.Body) != want {
			t.Fatalf("lookup %s: %v %q", lang, e, miss)
		}
	}
	if _, miss := c.Lookup(k, hdr("Accept-Language", "fr")); miss != "vary-miss" {
		t.Fatalf("fr: miss %q, want vary-miss", miss)
	}
	// A response varying on something else replaces every variant.
	c.Store(k, stored(t, "any", hdr("Cache-Control", "max-age=60"), hdr("Accept-Language", "fr")))
	if e, _ := c.Lookup(k, hdr("Accept-Language", "en")); e == nil || string(e.Body) != "any" {
		t.Fatalf("after the Vary change: %v", e)
	}
	if !c.Invalidate(k) {
		t.Fatal("Invalidate found nothing")
	}
	if e, _ := c.Lookup(k, hdr()); e != nil {
		t.Fatal("still there after Invalidate")
	}
}

func TestCachePurgePrefixAndBound(t *testing.T) {
	c, err := New(Config{MaxSize: 256 << 10, MaxObjectSize: 8 << 10})
	if err != nil {
		t.Fatal(err)
	}
	if c.Store("h/big", stored(t, string(make([]byte, 9<<10)), hdr("Cache-Control", "max-age=60"), hdr())) {
		t.Fatal("stored a body over max_object_size")
	}
	for i := range 200 { // 200 x 4 KiB: far past 256 KiB
		c.Store(fmt.Sprintf("h/fill/%d", i), stored(t, string(make([]byte, 4<<10)), hdr("Cache-Control", "max-age=60"), hdr()))
	}
	c.store.CleanUp()
	if s := c.Stats(); s.Weight > 256<<10 || s.Bytes > 256<<10 || s.Objects == 0 {
		t.Fatalf("over the bound: %+v", s)
	}
	c.Purge("h/", true)
	for i := range 20 {
		c.Store(fmt.Sprintf("h/static/%d", i), stored(t, "s", hdr("Cache-Control", "max-age=60"), hdr()))
	}
	c.Store("h/other", stored(t, "x", hdr("Cache-Control", "max-age=60"), hdr()))
	if n := c.Purge("h/static/", true); n != 20 {
		t.Fatalf("prefix purge dropped %d, want 20", n)
	}
	for i := range 20 {
		if e, _ := c.Lookup(fmt.Sprintf("h/static/%d", i), hdr()); e != nil {
			t.Fatalf("h/static/%d survived the purge", i)
		}
	}
	if e, _ := c.Lookup("h/other", hdr()); e == nil {
		t.Fatal("the prefix purge took h/other")
	}
}

func TestCacheCollapsingWaitIsBounded(t *testing.T) {
	c, err := New(Config{MaxSize: 1 << 20, LockTimeout: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	f, wait := c.Acquire("k")
	if f == nil || wait != nil {
		t.Fatal("first Acquire must lead")
	}
	f2, wait2 := c.Acquire("k")
	if f2 != nil || wait2 == nil {
		t.Fatal("second Acquire must wait")
	}
	if c.Wait(context.Background(), wait2) {
		t.Fatal("Wait returned true although the fill never ended")
	}
	go f.Done()
	if !c.Wait(context.Background(), wait2) {
		t.Fatal("Wait did not see Done")
	}
	if f3, _ := c.Acquire("k"); f3 == nil {
		t.Fatal("the lock stayed held after Done")
	}
}
