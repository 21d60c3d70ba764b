package discovery

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshlb/meshlb/lb"
)

// entryView is everything the pool reads of an entry, in plain values, to
// compare the lean decoder with consul/api's decoding.
type entryView struct {
	HasNode          bool
	Node, NodeAddr   string
	HasService       bool
	ID, Name, Addr   string
	Port             int
	Passing, Warning int
	ModifyIndex      uint64
	Tags             []string
	Meta             map[string]string
	Checks           []string // "nil" or id + "=" + status, + " drain" if its output starts with DrainNote
}

func views(t testing.TB, a *healthAnswer) []entryView {
	t.Helper()
	var out []entryView
	for i := range a.entries {
		e := &a.entries[i]
		tags, err := entryTags(e)
		if err != nil {
			t.Fatalf("entry %d: tags: %v", i, err)
		}
		meta, err := entryMeta(e)
		if err != nil {
			t.Fatalf("entry %d: meta: %v", i, err)
		}
		v := entryView{HasNode: e.hasNode, Node: string(e.node), NodeAddr: string(e.nodeAddr),
			HasService: e.hasService, ID: string(e.id), Name: string(e.name), Addr: string(e.addr),
			Port: e.port, Passing: e.passing, Warning: e.warning, ModifyIndex: e.modifyIndex,
			Tags: tags, Meta: meta}
		for _, c := range a.entryChecks(e) {
			if c.nullCheck {
				v.Checks = append(v.Checks, "nil")
				continue
			}
			cv := string(c.id) + "=" + string(c.status)
			if c.drain {
				cv += " drain"
			}
			v.Checks = append(v.Checks, cv)
		}
		out = append(out, v)
	}
	return out
}

// compareDecoders decodes data both ways. It fails the test when the lean
// decoder accepts what is not JSON, refuses what consul/api accepts, or
// reads other values than consul/api. It returns consul/api's error.
func compareDecoders(t testing.TB, data []byte) error {
	t.Helper()
	var entries []*api.ServiceEntry
	apiErr := json.Unmarshal(data, &entries)
	var a healthAnswer
	leanErr := decodeHealth(data, &a)
	if leanErr == nil && !json.Valid(data) {
		t.Fatalf("lean decoder accepted invalid JSON %q", data)
	}
	if apiErr != nil {
		return apiErr
	}
	if leanErr != nil {
		t.Fatalf("lean decoder refused %q, which consul/api decodes: %v", data, leanErr)
	}
	want, got := views(t, fromAPI(entries)), views(t, &a)
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("decoding %q:\nlean       %+v\nconsul/api %+v", data, got, want)
	}
	// The pools built from both agree too.
	p1, _ := newInstanceBuilder().build(fromAPI(entries), nil)
	p2, _ := newInstanceBuilder().build(&a, nil)
	if !sameInstances(p1, p2) {
		t.Fatalf("pools from %q differ:\nlean       %+v\nconsul/api %+v", data, p2, p1)
	}
	return nil
}

func TestDecodeHealthMatchesConsulAPI(t *testing.T) {
	accepted := []string{
		`[]`,
		`null`,
		` [ ] `,
		`[null]`,
		`[{}]`,
		`[{"Node":null,"Service":null,"Checks":null}]`,
		// A real entry, with what the pool skips.
		`[{"Node":{"ID":"40e4a748","Node":"n1","Address":"10.0.0.1","Datacenter":"dc1","TaggedAddresses":{"lan":"10.0.0.1","wan":"10.0.0.1"},"Meta":{"consul-network-segment":""},"CreateIndex":5,"ModifyIndex":6},` +
			`"Service":{"ID":"web-1","Service":"web","Tags":["a","b"],"Address":"","Meta":{"pid":"42","host":"h"},"Port":8080,"Weights":{"Passing":3,"Warning":1},"EnableTagOverride":false,"Proxy":{"Mode":"","MeshGateway":{},"Expose":{}},"Connect":{},"PeerName":"","CreateIndex":10,"ModifyIndex":11},` +
			`"Checks":[{"Node":"n1","CheckID":"serfHealth","Name":"Serf Health Status","Status":"passing","Notes":"","Output":"Agent alive and reachable","ServiceID":"","ServiceName":"","ServiceTags":[],"Type":"","Interval":"","Timeout":"","ExposedPort":0,"Definition":{},"CreateIndex":5,"ModifyIndex":5},` +
			`{"Node":"n1","CheckID":"service:web-1","Status":"warning","Output":"HTTP GET http://x: 429 \"Too Many\"\n"}]}]`,
		// Escapes, unicode, invalid UTF-8 (encoding/json makes it U+FFFD).
		`[{"Service":{"ID":"w\u00e9b\"1\\\/","Service":"web\ud83d\ude00","Address":"\u0031.2.3.4","Port":1,"Tags":["\t","é",null],"Meta":{"k\n":"v\u0000","n":null}}}]`,
		"[{\"Service\":{\"ID\":\"bad\xff\xfeutf8\",\"Address\":\"h\xc3\",\"Port\":2}}]",
		`[{"Service":{"ID":"lone\ud800surrogate","Port":3,"Address":"x"}}]`,
		// Keys match case-insensitively, with escapes, and with Unicode
		// folding as encoding/json does it (ſ is s, K is K).
		`[{"node":{"NODE":"n","address":"1.1.1.1"},"SERVICE":{"id":"a","port":80,"weights":{"passing":2},"modifyindex":7,"ſervice":"web","tags":["t"]},"checks":[{"checkid":"c","STATUS":"passing"}]}]`,
		`[{"Serv\u0069ce":{"\u0049D":"esc","Port":81}}]`,
		// Repeated keys: later values win, objects merge.
		`[{"Service":{"ID":"a","Port":1,"Address":"x"},"Service":{"Port":2},"Node":{"Node":"n1","Address":"1.1.1.1"},"Node":{"Node":"n2"}}]`,
		`[{"Service":{"ID":"a","Port":1},"Service":null,"Service":{"Port":3}}]`,
		`[{"Node":{"Node":"n1"},"Node":null}]`,
		`[{"Service":{"ID":"a","Port":1,"Tags":["x"],"Tags":null,"Meta":{"a":"1","a":"2","b":"3"}}}]`,
		`[{"Service":{"ID":"a","Port":1,"Weights":null,"Weights":{"Passing":4},"Weights":{"Warning":5}}}]`,
		`[{"Checks":[{"CheckID":"a","Status":"critical"}],"Checks":[null,{"Status":"passing"}],"Service":{"ID":"a","Port":1,"Address":"h"}}]`,
		`[{"Service":{"ID":"a","Port":1,"Address":"h","Tags":[],"Meta":{}},"Checks":[]}]`,
		// Check output: only whether it starts with DrainNote is read, as
		// encoding/json decodes it (escapes, case-insensitive keys,
		// repeated keys: the last wins; null leaves it).
		`[{"Checks":[{"CheckID":"c","Status":"critical","Output":"draining: registrar received a stop signal"},{"Status":"critical","Output":"draining"},{"Output":"drainin"},{"Output":"Draining"},{"Output":""},{"Output":" draining"}]}]`,
		`[{"Checks":[{"output":"\u0064rain\u0069ng\n"},{"OUTPUT":"\u0044raining"},{"Output":"drain\ting"},{"Output":"\"draining\""},{"Output":"d\u00e9raining"},{"Output":"\ud800draining"}]}]`,
		"[{\"Checks\":[{\"Output\":\"dr\xffaining\"},{\"Output\":\"draining\xff\"},{\"Output\":\"draining\\u0000\"}]}]",
		`[{"Checks":[{"Output":"draining","Output":"failed"},{"Output":"failed","Output":"draining"},{"Output":"draining","Output":null},{"Output":null}]}]`,
		// Numbers: negative, zero, big indexes, exponent in skipped fields.
		`[{"Service":{"ID":"a","Port":-0,"ModifyIndex":18446744073709551615,"X":1.5e300,"Weights":{"Passing":-7}}}]`,
		`[{"Service":{"ID":"a","Port":65535,"X":[1,-2.5E-3,true,false,null,{"y":[[]]}]}}]`,
		// Fields of other types where the pool does not read them.
		`[{"Service":{"ID":"a","Port":1,"Proxy":{"Upstreams":[{"x":1}]}},"Extra":"ok"}]`,
	}
	for _, s := range accepted {
		if err := compareDecoders(t, []byte(s)); err != nil {
			t.Errorf("consul/api refuses %q (%v): the test case is wrong", s, err)
		}
	}
	refused := []string{
		``, ` `, `[`, `[{]`, `[{"Service":}]`, `{}`, `"x"`, `1`, `[1]`, `[[]]`, `[true]`, `[{}]x`, `[{},]`,
		`[{"Service":{"Port":"80"}}]`,
		`[{"Service":{"Port":80.0}}]`,
		`[{"Service":{"Port":1e2}}]`,
		`[{"Service":{"Port":99999999999999999999}}]`,
		`[{"Service":{"ModifyIndex":-1}}]`,
		`[{"Service":{"ID":1}}]`,
		`[{"Service":{"Tags":"a"}}]`,
		`[{"Service":{"Tags":[1]}}]`,
		`[{"Service":{"Meta":{"a":1}}}]`,
		`[{"Service":{"Meta":[]}}]`,
		`[{"Service":{"Weights":{"Passing":"1"}}}]`,
		`[{"Service":[]}]`,
		`[{"Node":"n"}]`,
		`[{"Checks":{}}]`,
		`[{"Checks":[1]}]`,
		`[{"Checks":[{"Status":true}]}]`,
		`[{"Checks":[{"Output":1}]}]`,
		`[{"Checks":[{"Output":{"draining":true}}]}]`,
		`[{"Checks":[{"Output":"draining\x"}]}]`,
		`[{"Checks":[{"Output":"\u00"}]}]`,
		"[{\"Checks\":[{\"Output\":\"draining\x01\"}]}]",
		`[{"Service":{"ID":"a\x01"}}]`,
		`[{"Service":{"ID":"\x"}}]`,
		`[{"Service":{"ID":"\u12"}}]`,
		`[{"Service":{"ID":"a"}]`,
		`[{"Service":{"Port":01}}]`,
		`[{"Service":{"Port":-}}]`,
		`[{"Service":{"X":nul}}]`,
		`[{"Service":{"X":tru}}]`,
		`[{"Service":{"X":1.}}]`,
		`[{"Service":{"X":1e}}]`,
	}
	for _, s := range refused {
		if err := compareDecoders(t, []byte(s)); err == nil {
			t.Errorf("consul/api accepts %q: the test case is wrong", s)
		}
		var a healthAnswer
		if err := decodeHealth([]byte(s), &a); err == nil {
			t.Errorf("lean decoder accepted %q, which consul/api refuses", s)
		}
	}
}

// FuzzDecodeHealth checks the lean decoder against consul/api's decoding
// on any input: never accept invalid JSON, never refuse what consul/api
// decodes, and read the same values. Seeds: the f.Add calls below
// (`go test -fuzz FuzzDecodeHealth ./discovery/` to search further).
func FuzzDecodeHealth(f *testing.F) {
	f.Add([]byte(`[{"Node":{"Node":"n1","Address":"10.0.0.1"},"Service":{"ID":"a","Service":"web","Port":8080,"Weights":{"Passing":3,"Warning":1},"Tags":["x"],"Meta":{"k":"v"},"ModifyIndex":9},"Checks":[{"CheckID":"serfHealth","Status":"passing"}]}]`))
	f.Add([]byte(`[null,{"Service":null},{"Node":null,"Service":{"ID":"x","Port":1,"Address":"::1"},"Checks":[null]}]`))
	f.Add([]byte(`[{"service":{"\u0069d":"é\ud83d","port":-0,"Tags":[null]},"Service":{"Meta":{"a":null}}}]`))
	f.Add(healthFixture(3, 0))
	f.Add([]byte(`[{"Checks":[{"CheckID":"service:a","Status":"critical","Output":"draining: stop"},{"output":"\u0064raining"},{"Output":"drain"},{"Output":null}]}]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		_ = compareDecoders(t, data)
	})
}

// healthFixture returns a /v1/health/service answer of n instances shaped
// like Consul 1.16's (every field Consul sends, a serfHealth and a service
// check per entry, 100 instances a node), with the first `changed`
// instances at another ModifyIndex and meta, as after a deploy touched
// them.
func healthFixture(n, changed int) []byte {
	entries := make([]*api.ServiceEntry, n)
	for i := range n {
		node := fmt.Sprintf("node-%04d", i/100)
		addr := fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255)
		idx, ver := uint64(1000+i), "1"
		if i < changed {
			idx, ver = uint64(500000+i), "2"
		}
		id := fmt.Sprintf("web-%05d", i)
		entries[i] = &api.ServiceEntry{
			Node: &api.Node{ID: fmt.Sprintf("%08x-0000-0000-0000-000000000000", i/100), Node: node, Address: addr, Datacenter: "dc1",
				TaggedAddresses: map[string]string{"lan": addr, "lan_ipv4": addr, "wan": addr, "wan_ipv4": addr},
				Meta:            map[string]string{"consul-network-segment": ""}, CreateIndex: 10, ModifyIndex: 11},
			Service: &api.AgentService{ID: id, Service: "web", Tags: []string{"v" + ver, "http"}, Port: 20000 + i%40000, Address: addr,
				Meta: map[string]string{"pid": fmt.Sprint(4000 + i), "host": node, "version": ver}, Weights: api.AgentWeights{Passing: 1, Warning: 1},
				TaggedAddresses: map[string]api.ServiceAddress{"lan_ipv4": {Address: addr, Port: 20000 + i%40000}},
				Proxy:           &api.AgentServiceConnectProxyConfig{}, Connect: &api.AgentServiceConnect{}, CreateIndex: idx, ModifyIndex: idx},
			Checks: api.HealthChecks{
				{Node: node, CheckID: "serfHealth", Name: "Serf Health Status", Status: "passing", Output: "Agent alive and reachable", Type: "", CreateIndex: 10, ModifyIndex: 10},
				{Node: node, CheckID: "service:" + id, Name: "Service 'web' check", Status: "passing", Output: "HTTP GET http://" + addr + "/healthz: 200 OK Output: ok",
					ServiceID: id, ServiceName: "web", ServiceTags: []string{"v" + ver, "http"}, Type: "http", Definition: api.HealthCheckDefinition{HTTP: "http://" + addr + "/healthz", IntervalDuration: time.Second, TimeoutDuration: 2 * time.Second}, CreateIndex: idx, ModifyIndex: idx},
			},
		}
	}
	b, err := json.Marshal(entries)
	if err != nil {
		panic(err)
	}
	return b
}

func TestDecodeHealthFixture(t *testing.T) {
	data := healthFixture(500, 7)
	if err := compareDecoders(t, data); err != nil {
		t.Fatal(err)
	}
}

// TestBuilderReusesUnchanged: an answer with a few entries changed reuses
// the other instances (the same Tags and Meta memory) and gives the same
// pool as a fresh conversion.
func TestBuilderReusesUnchanged(t *testing.T) {
	var a0, a1 healthAnswer
	if err := decodeHealth(healthFixture(300, 0), &a0); err != nil {
		t.Fatal(err)
	}
	ib := newInstanceBuilder()
	p0, changed := ib.build(&a0, nil)
	if !changed || len(p0) != 300 {
		t.Fatalf("first build: %d instances, changed %v", len(p0), changed)
	}
	p0again, changed := ib.build(&a0, nil)
	if changed || !sameInstances(p0, p0again) {
		t.Fatalf("the same answer again: changed %v", changed)
	}
	if err := decodeHealth(healthFixture(300, 5), &a1); err != nil {
		t.Fatal(err)
	}
	p1, changed := ib.build(&a1, nil)
	if !changed {
		t.Fatal("5 changed instances: changed false")
	}
	fresh, _ := newInstanceBuilder().build(&a1, nil)
	if !sameInstances(p1, fresh) {
		t.Fatal("incremental pool differs from a fresh conversion")
	}
	for i := range p1 {
		shared := &p1[i].Meta != nil && reflect.ValueOf(p1[i].Meta).UnsafePointer() == reflect.ValueOf(p0[i].Meta).UnsafePointer()
		if want := i >= 5; shared != want {
			t.Errorf("instance %s: meta shared with the last pool %v, want %v", p1[i].ID, shared, want)
		}
	}
	// Removing and adding instances: still the same as a fresh conversion.
	var a2 healthAnswer
	data := healthFixture(310, 5)
	if err := decodeHealth(data, &a2); err != nil {
		t.Fatal(err)
	}
	a2.entries = append(a2.entries[:10], a2.entries[20:]...)
	p2, changed := ib.build(&a2, nil)
	fresh2, _ := newInstanceBuilder().build(&a2, nil)
	if !changed || !sameInstances(p2, fresh2) || len(p2) != 300 {
		t.Fatalf("after adding and removing: changed %v, %d instances, same as fresh %v", changed, len(p2), sameInstances(p2, fresh2))
	}
}

// TestBuilderQualifiesIDs: an ID registered on a second node turns both
// into ID@node, and back, as Instances does.
func TestBuilderQualifiesIDs(t *testing.T) {
	entry := func(id, node string, idx uint64) string {
		return fmt.Sprintf(`{"Node":{"Node":%q,"Address":"10.0.0.1"},"Service":{"ID":%q,"Service":"web","Port":80,"ModifyIndex":%d}}`, node, id, idx)
	}
	ib := newInstanceBuilder()
	step := func(want []string, entries ...string) {
		t.Helper()
		var a healthAnswer
		if err := decodeHealth([]byte("["+strings.Join(entries, ",")+"]"), &a); err != nil {
			t.Fatal(err)
		}
		got, _ := ib.build(&a, nil)
		fresh, _ := newInstanceBuilder().build(&a, nil)
		var ids []string
		for _, in := range got {
			ids = append(ids, in.ID)
		}
		if !reflect.DeepEqual(ids, want) || !sameInstances(got, fresh) {
			t.Fatalf("IDs %v, want %v (same as fresh: %v)", ids, want, sameInstances(got, fresh))
		}
	}
	step([]string{"a", "b"}, entry("b", "n1", 1), entry("a", "n1", 2))
	step([]string{"a@n1", "a@n2", "b"}, entry("b", "n1", 1), entry("a", "n1", 2), entry("a", "n2", 3))
	step([]string{"a", "b"}, entry("b", "n1", 1), entry("a", "n2", 3))
	step([]string{"a@n2", "b"}, entry("b", "n1", 1), entry("a", "n2", 3), entry("a", "n2", 3))
	step([]string{"a", "b", "c"}, entry("c", "n1", 4), entry("b", "n1", 1), entry("a", "n2", 3))
}

// BenchmarkHealthDecode compares consul/api's decoding (and the old
// conversion) with the lean decoder over a recorded-shape answer of 10,000
// instances, and a whole pool update (decode, reuse, balancer update) with
// 20 instances changed.
func BenchmarkHealthDecode(b *testing.B) {
	const n = 10000
	base := healthFixture(n, 0)
	upd := healthFixture(n, 20)
	b.Run("consul-api", func(b *testing.B) {
		b.SetBytes(int64(len(upd)))
		b.ReportAllocs()
		defer cpuMetric(b)()
		for b.Loop() {
			var entries []*api.ServiceEntry
			if err := json.Unmarshal(upd, &entries); err != nil {
				b.Fatal(err)
			}
			if len(Instances(entries, nil)) != n {
				b.Fatal("wrong pool")
			}
		}
	})
	b.Run("lean-decode-only", func(b *testing.B) {
		b.SetBytes(int64(len(upd)))
		b.ReportAllocs()
		defer cpuMetric(b)()
		var a healthAnswer
		for b.Loop() {
			if err := decodeHealth(upd, &a); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("lean-decode-after", func(b *testing.B) {
		b.SetBytes(int64(len(upd)))
		b.ReportAllocs()
		var prev, a healthAnswer
		if err := decodeHealth(base, &prev); err != nil {
			b.Fatal(err)
		}
		defer cpuMetric(b)()
		for b.Loop() {
			if err := decodeHealthAfter(upd, &a, &prev); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("lean-fresh", func(b *testing.B) {
		b.SetBytes(int64(len(upd)))
		b.ReportAllocs()
		defer cpuMetric(b)()
		var a healthAnswer
		for b.Loop() {
			if err := decodeHealth(upd, &a); err != nil {
				b.Fatal(err)
			}
			if p, _ := newInstanceBuilder().build(&a, nil); len(p) != n {
				b.Fatal("wrong pool")
			}
		}
	})
	// The answer: catalog-only instances (no checks), 8.6 MiB.
	bare := catalogOnly(base)
	bareUpd := catalogOnly(upd)
	for _, fx := range []struct {
		name      string
		base, upd []byte
	}{{"with-checks", base, upd}, {"catalog-only", bare, bareUpd}} {
		base, upd := fx.base, fx.upd
		for _, pol := range []string{lb.PolicyRoundRobin, "hash:header:X-User"} {
			updateBench(b, "update-20-changed/"+fx.name+"/"+pol, pol, base, upd, n)
		}
	}
	b.Run("consul-api/catalog-only", func(b *testing.B) {
		b.SetBytes(int64(len(bareUpd)))
		b.ReportAllocs()
		defer cpuMetric(b)()
		for b.Loop() {
			var entries []*api.ServiceEntry
			if err := json.Unmarshal(bareUpd, &entries); err != nil {
				b.Fatal(err)
			}
			if len(Instances(entries, nil)) != n {
				b.Fatal("wrong pool")
			}
		}
	})
}

// catalogOnly drops the checks of a fixture's entries.
func catalogOnly(data []byte) []byte {
	var entries []*api.ServiceEntry
	if err := json.Unmarshal(data, &entries); err != nil {
		panic(err)
	}
	for _, e := range entries {
		e.Checks = api.HealthChecks{}
	}
	out, err := json.Marshal(entries)
	if err != nil {
		panic(err)
	}
	return out
}

// updateBench measures one pool update: decode the answer, reuse or build
// the instances, update a balancer; the answers alternate between base
// and upd, so every update changes 20 instances.
func updateBench(b *testing.B, name, pol string, base, upd []byte, n int) {
	{
		b.Run(name, func(b *testing.B) {
			b.SetBytes(int64(len(upd)))
			b.ReportAllocs()
			bal, err := lb.NewBalancer("web", lb.Config{Policy: pol})
			if err != nil {
				b.Fatal(err)
			}
			// Two answers, as a watcher keeps them: each decoded after
			// the other (decodeHealthAfter).
			var as [2]healthAnswer
			ib := newInstanceBuilder()
			if err := decodeHealth(base, &as[1]); err != nil {
				b.Fatal(err)
			}
			p, _ := ib.build(&as[1], nil)
			bal.Update(slicesClone(p))
			answers := [][]byte{upd, base}
			defer cpuMetric(b)()
			for i := 0; b.Loop(); i++ {
				a := &as[i%2]
				if err := decodeHealthAfter(answers[i%2], a, &as[(i+1)%2]); err != nil {
					b.Fatal(err)
				}
				p, changed := ib.build(a, nil)
				if !changed {
					b.Fatal("no change")
				}
				bal.Update(slicesClone(p))
			}
		})
	}
}

func slicesClone(p []lb.Instance) []lb.Instance { return append([]lb.Instance(nil), p...) }

// cpuMetric reports the process's CPU time (user and system, GC included)
// per op: on a shared machine, wall time per op says more about the
// neighbours than about the code.
func cpuMetric(b *testing.B) func() {
	start := processCPU()
	return func() {
		b.ReportMetric(float64(processCPU()-start)/float64(b.N)/1e6, "cpu-ms/op")
	}
}

func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// TestBuilderForget: a restarted Consul may give another registration the
// ModifyIndex an old one had; after forget the builder compares by value.
func TestBuilderForget(t *testing.T) {
	answer := func(port int) *healthAnswer {
		var a healthAnswer
		data := fmt.Sprintf(`[{"Node":{"Node":"n1","Address":"10.0.0.1"},"Service":{"ID":"web-1","Service":"web","Port":%d,"ModifyIndex":13}}]`, port)
		if err := decodeHealth([]byte(data), &a); err != nil {
			t.Fatal(err)
		}
		return &a
	}
	ib := newInstanceBuilder()
	ib.build(answer(8080), nil)
	if p, changed := ib.build(answer(8081), nil); changed || p[0].Port != 8080 {
		t.Fatalf("same index, trusted: port %d, changed %v; want the reused 8080", p[0].Port, changed)
	}
	ib.forget()
	if p, changed := ib.build(answer(8081), nil); !changed || p[0].Port != 8081 {
		t.Fatalf("after forget: port %d, changed %v; want 8081, changed", p[0].Port, changed)
	}
	if _, changed := ib.build(answer(8081), nil); changed {
		t.Fatal("the same answer again: changed")
	}
}

// TestDecodeHealthDrain pins which check outputs read as a drain, so that
// the comparison with consul/api above cannot pass with drain never set.
func TestDecodeHealthDrain(t *testing.T) {
	data := `[{"Checks":[{"Output":"draining: registrar received a stop signal"},{"output":"\u0064rain\u0069ng"},` +
		`{"Output":"drainin"},{"Output":"Draining"},{"Output":"d\u00e9raining"},` +
		`{"Output":"draining","Output":"failed"},{"Output":"failed","Output":"draining"},{"Output":"draining","Output":null},{}]}]`
	want := []bool{true, true, false, false, false, false, true, true, false}
	var a healthAnswer
	if err := decodeHealth([]byte(data), &a); err != nil {
		t.Fatal(err)
	}
	checks := a.entryChecks(&a.entries[0])
	if len(checks) != len(want) {
		t.Fatalf("%d checks, want %d", len(checks), len(want))
	}
	for i, c := range checks {
		if c.drain != want[i] {
			t.Errorf("check %d: drain %v, want %v", i, c.drain, want[i])
		}
	}
}
