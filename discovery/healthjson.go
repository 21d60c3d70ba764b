package discovery

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/hashicorp/consul/api"
)

// healthEntry is what a pool needs of one /v1/health/service entry: the
// node's name and address, the service's ID, name, address, port, weights,
// tags, meta and ModifyIndex, and each check's ID, status and whether its
// output starts with DrainNote. Everything else Consul sends (tagged
// addresses, proxy and connect settings, the rest of check output, raft
// indexes …) is skipped unread.
//
// From the lean decoder, the byte slices point into the answer (or into a
// scratch buffer when a string had escapes) and are valid only until the
// answer's buffer is reused; Tags and Meta stay raw JSON (tagsRaw,
// metaRaw) until an instance is built from the entry, so an unchanged
// entry costs no allocation. From consul/api's values (fromAPI), tags and
// meta are already decoded.
type healthEntry struct {
	hasNode           bool
	node, nodeAddr    []byte
	hasService        bool
	id, name, addr    []byte
	port              int
	passing, warning  int
	modifyIndex       uint64
	tagsRaw, metaRaw  []byte
	tags              []string
	meta              map[string]string
	decoded           bool // tags and meta are in tags/meta, not raw
	checkLo, checkEnd int  // this entry's checks in healthAnswer.checks
	checksSet         bool
	// rawLo and rawHi are the entry's object in healthAnswer.data. scratch
	// is true when a string of it had escapes (its value lives in the
	// decoder's scratch, not in data): such an entry is not reused by the
	// next answer (see decoder.reuse).
	rawLo, rawHi int
	scratch      bool
	// built is the builder's record of this entry's instance, set by the
	// build (builtGen) of builtBy that saw it, and copied with the entry
	// into the next answer: a build right after that one finds the
	// record without a lookup (instanceBuilder.build).
	built    *builtInst
	builtBy  *instanceBuilder
	builtGen uint32
}

// checkState is what the pool needs of one check. A null check in the
// answer has nullCheck set (consul/api gives a nil *HealthCheck). drain is
// true when the check's Output starts with DrainNote: a registrar drains
// its instance (see failedInAnswer); the output itself is not kept.
type checkState struct {
	nullCheck bool
	drain     bool
	id        []byte
	status    []byte
}

// healthAnswer is one decoded /v1/health/service answer. null is true
// when the answer was JSON null (consul/api: a nil slice).
type healthAnswer struct {
	entries []healthEntry
	// nullEntry marks entries that were JSON null (skipped).
	checks []checkState
	// bytes is the size of the answer as read.
	bytes int
	// data is what the lean decoder decoded (nil from fromAPI): the
	// entries' byte slices point into it.
	data []byte
	// reused counts the entries copied from the previous answer.
	reused int
}

func (a *healthAnswer) entryChecks(e *healthEntry) []checkState {
	return a.checks[e.checkLo:e.checkEnd]
}

// reset empties a for reuse, keeping its memory.
func (a *healthAnswer) reset() {
	clear(a.entries)
	a.entries = a.entries[:0]
	clear(a.checks)
	a.checks = a.checks[:0]
	a.bytes = 0
	a.data = nil
	a.reused = 0
}

// fromAPI converts consul/api's entries to the same form, for sources that
// decode with consul/api (tests, clients not made by NewClient).
func fromAPI(entries []*api.ServiceEntry) *healthAnswer {
	a := &healthAnswer{}
	for _, e := range entries {
		if e == nil {
			continue
		}
		h := healthEntry{decoded: true}
		if e.Node != nil {
			h.hasNode = true
			h.node, h.nodeAddr = []byte(e.Node.Node), []byte(e.Node.Address)
		}
		if s := e.Service; s != nil {
			h.hasService = true
			h.id, h.name, h.addr = []byte(s.ID), []byte(s.Service), []byte(s.Address)
			h.port, h.passing, h.warning = s.Port, s.Weights.Passing, s.Weights.Warning
			h.modifyIndex = s.ModifyIndex
			h.tags, h.meta = s.Tags, s.Meta
		}
		h.checkLo = len(a.checks)
		h.checksSet = e.Checks != nil
		for _, c := range e.Checks {
			if c == nil {
				a.checks = append(a.checks, checkState{nullCheck: true})
				continue
			}
			a.checks = append(a.checks, checkState{id: []byte(c.CheckID), status: []byte(c.Status),
				drain: strings.HasPrefix(c.Output, DrainNote)})
		}
		h.checkEnd = len(a.checks)
		a.entries = append(a.entries, h)
	}
	return a
}

// entryTags returns the entry's tags, decoding them if needed.
func entryTags(e *healthEntry) ([]string, error) {
	if e.decoded {
		return e.tags, nil
	}
	if e.tagsRaw == nil {
		return nil, nil
	}
	d := decoder{data: e.tagsRaw}
	return d.stringArray()
}

// entryMeta returns the entry's meta, decoding it if needed.
func entryMeta(e *healthEntry) (map[string]string, error) {
	if e.decoded {
		return e.meta, nil
	}
	if e.metaRaw == nil {
		return nil, nil
	}
	d := decoder{data: e.metaRaw}
	return d.stringMap()
}

// decodeHealth decodes a /v1/health/service answer into a (reset first).
// It accepts what consul/api's decoding accepts and gives the same values
// for the fields it reads; it rejects malformed JSON anywhere, and wrong
// types in the fields it reads (a string port, an object for a tag), as
// encoding/json does. Unlike encoding/json it does not look at the types
// of the fields it skips: a boolean where Consul sends an object, in a
// field the pool does not use, is not an error here.
//
// Object keys match field names as encoding/json matches them: exactly,
// else case-insensitively; a repeated key overwrites (objects merge into
// what the first one set, as encoding/json decodes into the same struct).
func decodeHealth(data []byte, a *healthAnswer) error {
	return decodeHealthAfter(data, a, nil)
}

// decodeHealthAfter is decodeHealth given the previous answer of the same
// read, prev (nil for none; never a itself), whose data must be intact: an
// entry whose bytes are those of one of prev's entries is not decoded
// again but copied from it, its byte slices moved to point into data.
// The bytes of a JSON object are a whole value wherever they appear, so
// the same bytes decode to the same entry: the result is the one
// decodeHealth gives.
//
// At 10,000 instances with 20 changed (BenchmarkHealthDecode), decoding
// every entry walked 9 MiB byte by byte, ≈ 70 % of a pool update's CPU;
// comparing the bytes with the previous entry is a memcmp.
func decodeHealthAfter(data []byte, a *healthAnswer, prev *healthAnswer) error {
	a.reset()
	a.bytes = len(data)
	a.data = data
	if prev != nil && (prev == a || prev.data == nil || len(prev.entries) == 0) {
		prev = nil
	}
	d := decoder{data: data, ans: a, prev: prev}
	d.space()
	if d.literal("null") {
		return d.end()
	}
	if !d.expect('[') {
		return d.syntax("an array of entries")
	}
	d.space()
	if d.consume(']') {
		return d.end()
	}
	for {
		d.space()
		if d.literal("null") {
			// consul/api: a nil entry, which Instances skips.
		} else if d.peek() == '{' {
			if d.prev == nil || !d.reuse() {
				start, escapes := d.off, d.escapes
				a.entries = append(a.entries, healthEntry{})
				e := &a.entries[len(a.entries)-1]
				if err := d.entry(e); err != nil {
					return err
				}
				e.rawLo, e.rawHi, e.scratch = start, d.off, d.escapes != escapes
				if d.prev != nil {
					d.follow(e)
				}
			}
		} else {
			if err := d.skip(); err != nil {
				return err
			}
			return d.typeErr("an entry object")
		}
		d.space()
		if d.consume(',') {
			continue
		}
		if d.consume(']') {
			return d.end()
		}
		return d.syntax("',' or ']' after an entry")
	}
}

type decoder struct {
	data []byte
	off  int
	ans  *healthAnswer
	// scratch holds unescaped strings; slices of it stay valid because
	// it only grows by reallocation (old arrays are left to their users).
	scratch []byte
	// escapes counts the strings put in scratch.
	escapes int
	// prev is the previous answer, whose entries reuse copies; next is
	// the entry of prev expected next (the one after the last reused).
	prev *healthAnswer
	next int
	// byKey indexes prev's entries by entryKey, made when follow needs it.
	byKey map[string]int
}

// reuseWindow is how many entries of the previous answer reuse compares,
// from the one expected next: the same entry, or the one after it when an
// entry was removed, or the one after that. Consul 1.16 lists a
// service's entries in its state store's order (go-memdb's non-unique
// "service" index, whose keys end with the row's node and service ID), so
// a re-registered instance keeps its place and a change of a few entries
// costs a few full decodes; follow keeps the place after one. An order
// that changed costs full decodes, never a wrong entry.
const reuseWindow = 3

// follow moves d.next past the previous answer's entry for the same
// instance as e, an entry decoded in full: e changed in place (the usual
// case: prev's entry d.next), or after removed entries. When prev has no
// such entry, e was inserted, and d.next stays. Where d.next points only
// decides which bytes reuse compares, never what an entry decodes to.
func (d *decoder) follow(e *healthEntry) {
	p := d.prev
	for j := d.next; j < len(p.entries) && j < d.next+reuseWindow; j++ {
		if sameKey(&p.entries[j], e) {
			d.next = j + 1
			return
		}
	}
	if d.byKey == nil {
		// Beyond the window: index the previous answer once.
		d.byKey = make(map[string]int, len(p.entries))
		for j := len(p.entries) - 1; j >= 0; j-- {
			d.byKey[entryKey(&p.entries[j])] = j
		}
	}
	if j, ok := d.byKey[entryKey(e)]; ok && j >= d.next {
		d.next = j + 1
	}
}

func sameKey(x, y *healthEntry) bool {
	return bytes.Equal(x.id, y.id) && bytes.Equal(x.name, y.name) && bytes.Equal(x.node, y.node)
}

func entryKey(e *healthEntry) string {
	return string(e.id) + "\x00" + string(e.name) + "\x00" + string(e.node)
}

// reuse copies the entry of the previous answer whose bytes are those at
// d.off, if one of the reuseWindow entries from d.next is, and steps over
// it.
func (d *decoder) reuse() bool {
	p, rest := d.prev, d.data[d.off:]
	for j := d.next; j < len(p.entries) && j < d.next+reuseWindow; j++ {
		pe := &p.entries[j]
		raw := p.data[pe.rawLo:pe.rawHi]
		if pe.scratch || len(raw) > len(rest) || !bytes.Equal(raw, rest[:len(raw)]) {
			continue
		}
		if !d.copyEntry(pe) {
			continue
		}
		d.off += len(raw)
		d.next = j + 1
		d.ans.reused++
		return true
	}
	return false
}

// copyEntry appends pe, an entry of d.prev whose bytes are at d.off, with
// its byte slices and its checks moved into d.data and d.ans. It reports
// false, appending nothing, if a slice of pe is not inside pe's bytes
// (which the decoder never makes; checked so that reuse stays exact).
func (d *decoder) copyEntry(pe *healthEntry) bool {
	from, to := d.prev.data, d.data
	lo, n, at := pe.rawLo, pe.rawHi-pe.rawLo, d.off
	ok := true
	// move gives the slice of to that is at f's place: a slice of from
	// made as from[i:j] has cap(from)-i, so i is known without unsafe.
	move := func(f []byte) []byte {
		if f == nil {
			return nil
		}
		i := cap(from) - cap(f) - lo
		if i < 0 || i+len(f) > n {
			ok = false
			return nil
		}
		return to[at+i : at+i+len(f)]
	}
	e := *pe
	e.node, e.nodeAddr = move(pe.node), move(pe.nodeAddr)
	e.id, e.name, e.addr = move(pe.id), move(pe.name), move(pe.addr)
	e.tagsRaw, e.metaRaw = move(pe.tagsRaw), move(pe.metaRaw)
	e.rawLo, e.rawHi = at, at+n
	a := d.ans
	checkLo := len(a.checks)
	for _, c := range d.prev.checks[pe.checkLo:pe.checkEnd] {
		c.id, c.status = move(c.id), move(c.status)
		a.checks = append(a.checks, c)
	}
	if !ok {
		clear(a.checks[checkLo:])
		a.checks = a.checks[:checkLo]
		return false
	}
	e.checkLo, e.checkEnd = checkLo, len(a.checks)
	a.entries = append(a.entries, e)
	return true
}

var errEnd = errors.New("unexpected end of JSON input")

func (d *decoder) syntax(want string) error {
	if d.off >= len(d.data) {
		return fmt.Errorf("decoding health answer: %w (want %s)", errEnd, want)
	}
	return fmt.Errorf("decoding health answer: invalid character %q at offset %d: want %s", d.data[d.off], d.off, want)
}

func (d *decoder) typeErr(want string) error {
	return fmt.Errorf("decoding health answer: wrong type before offset %d: want %s", d.off, want)
}

func (d *decoder) end() error {
	d.space()
	if d.off != len(d.data) {
		return d.syntax("the end of the answer")
	}
	return nil
}

func (d *decoder) space() {
	for d.off < len(d.data) {
		switch d.data[d.off] {
		case ' ', '\t', '\n', '\r':
			d.off++
		default:
			return
		}
	}
}

func (d *decoder) peek() byte {
	if d.off < len(d.data) {
		return d.data[d.off]
	}
	return 0
}

func (d *decoder) consume(c byte) bool {
	if d.off < len(d.data) && d.data[d.off] == c {
		d.off++
		return true
	}
	return false
}

func (d *decoder) expect(c byte) bool { return d.consume(c) }

func (d *decoder) literal(s string) bool {
	if len(d.data)-d.off >= len(s) && string(d.data[d.off:d.off+len(s)]) == s {
		d.off += len(s)
		return true
	}
	return false
}

// object walks an object's members, calling member with each key (with
// escapes resolved) while d sits on the value; member must consume it.
func (d *decoder) object(member func(key []byte) error) error {
	if !d.expect('{') {
		return d.syntax("'{'")
	}
	d.space()
	if d.consume('}') {
		return nil
	}
	for {
		d.space()
		key, err := d.str()
		if err != nil {
			return err
		}
		d.space()
		if !d.expect(':') {
			return d.syntax("':' after an object key")
		}
		d.space()
		if err := member(key); err != nil {
			return err
		}
		d.space()
		if d.consume(',') {
			continue
		}
		if d.consume('}') {
			return nil
		}
		return d.syntax("',' or '}' in an object")
	}
}

// Field numbers of the objects the decoder reads.
const (
	fOther = iota
	fNode
	fService
	fChecks
	fAddress
	fID
	fPort
	fModifyIndex
	fTags
	fMeta
	fWeights
	fPassing
	fWarning
	fCheckID
	fStatus
	fOutput
)

// Objects the decoder reads fields of.
const (
	oEntry = iota
	oNode
	oService
	oWeights
	oCheck
)

// objectNames lists each object's fields, lower-case.
var objectNames = [...][]string{
	oEntry:   {"node", "service", "checks"},
	oNode:    {"node", "address"},
	oService: {"id", "service", "address", "port", "modifyindex", "tags", "meta", "weights"},
	oWeights: {"passing", "warning"},
	oCheck:   {"checkid", "status", "output"},
}

// field maps a key of an object to the field it names, as encoding/json
// matches keys: exactly or else case-insensitively (bytes.EqualFold,
// Unicode folding included). No two fields of one object fold to the same
// name, so for an ASCII key the match is its lower-case form.
func field(key []byte, obj int) int {
	var buf [24]byte
	if len(key) <= len(buf) {
		ascii := true
		for i, c := range key {
			if c >= 0x80 {
				ascii = false
				break
			}
			if 'A' <= c && c <= 'Z' {
				c += 'a' - 'A'
			}
			buf[i] = c
		}
		if ascii {
			return lookupField(obj, buf[:len(key)])
		}
	}
	if utf8.RuneCount(key) > len(buf) {
		return fOther // longer than any field name, even folded
	}
	for _, name := range objectNames[obj] {
		if bytes.EqualFold(key, []byte(name)) {
			return lookupField(obj, []byte(name))
		}
	}
	return fOther
}

// lookupField maps a lower-case name to its field.
func lookupField(obj int, k []byte) int {
	switch obj {
	case oEntry:
		switch string(k) {
		case "node":
			return fNode
		case "service":
			return fService
		case "checks":
			return fChecks
		}
	case oNode:
		switch string(k) {
		case "node":
			return fNode
		case "address":
			return fAddress
		}
	case oService:
		switch string(k) {
		case "id":
			return fID
		case "service":
			return fService
		case "address":
			return fAddress
		case "port":
			return fPort
		case "modifyindex":
			return fModifyIndex
		case "tags":
			return fTags
		case "meta":
			return fMeta
		case "weights":
			return fWeights
		}
	case oWeights:
		switch string(k) {
		case "passing":
			return fPassing
		case "warning":
			return fWarning
		}
	case oCheck:
		switch string(k) {
		case "checkid":
			return fCheckID
		case "status":
			return fStatus
		case "output":
			return fOutput
		}
	}
	return fOther
}

func (d *decoder) entry(e *healthEntry) error {
	return d.object(func(key []byte) error {
		switch field(key, oEntry) {
		case fNode:
			if d.literal("null") {
				e.hasNode, e.node, e.nodeAddr = false, nil, nil
				return nil
			}
			if d.peek() != '{' {
				return d.wrongType("the Node object")
			}
			e.hasNode = true
			return d.object(func(k []byte) error {
				switch field(k, oNode) {
				case fNode:
					return d.strField(&e.node)
				case fAddress:
					return d.strField(&e.nodeAddr)
				}
				return d.skip()
			})
		case fService:
			if d.literal("null") {
				*e = healthEntry{hasNode: e.hasNode, node: e.node, nodeAddr: e.nodeAddr,
					checkLo: e.checkLo, checkEnd: e.checkEnd, checksSet: e.checksSet}
				return nil
			}
			if d.peek() != '{' {
				return d.wrongType("the Service object")
			}
			e.hasService = true
			return d.service(e)
		case fChecks:
			if d.literal("null") {
				e.checkLo, e.checkEnd, e.checksSet = 0, 0, false
				return nil
			}
			if d.peek() != '[' {
				return d.wrongType("the Checks array")
			}
			return d.checks(e)
		}
		return d.skip()
	})
}

func (d *decoder) service(e *healthEntry) error {
	return d.object(func(k []byte) error {
		switch field(k, oService) {
		case fID:
			return d.strField(&e.id)
		case fService:
			return d.strField(&e.name)
		case fAddress:
			return d.strField(&e.addr)
		case fPort:
			return d.intField(&e.port)
		case fModifyIndex:
			return d.uintField(&e.modifyIndex)
		case fTags:
			return d.rawField(&e.tagsRaw, '[', "the Tags array")
		case fMeta:
			return d.rawField(&e.metaRaw, '{', "the Meta object")
		case fWeights:
			if d.literal("null") {
				return nil
			}
			if d.peek() != '{' {
				return d.wrongType("the Weights object")
			}
			return d.object(func(k []byte) error {
				switch field(k, oWeights) {
				case fPassing:
					return d.intField(&e.passing)
				case fWarning:
					return d.intField(&e.warning)
				}
				return d.skip()
			})
		}
		return d.skip()
	})
}

func (d *decoder) checks(e *healthEntry) error {
	a := d.ans
	e.checksSet = true
	// A repeated Checks key replaces the list (encoding/json resets a
	// slice); the earlier checks stay in a.checks unreferenced.
	e.checkLo = len(a.checks)
	d.off++ // '['
	d.space()
	if !d.consume(']') {
		for {
			d.space()
			switch {
			case d.literal("null"):
				a.checks = append(a.checks, checkState{nullCheck: true})
			case d.peek() == '{':
				i := len(a.checks)
				a.checks = append(a.checks, checkState{})
				err := d.object(func(k []byte) error {
					switch field(k, oCheck) {
					case fCheckID:
						return d.strField(&a.checks[i].id)
					case fStatus:
						return d.strField(&a.checks[i].status)
					case fOutput:
						return d.prefixField(&a.checks[i].drain, DrainNote)
					}
					return d.skip()
				})
				if err != nil {
					return err
				}
			default:
				return d.wrongType("a check object")
			}
			d.space()
			if d.consume(',') {
				continue
			}
			if d.consume(']') {
				break
			}
			return d.syntax("',' or ']' in Checks")
		}
	}
	e.checkEnd = len(a.checks)
	return nil
}

// wrongType skips the value (so that a syntax error still wins, as in
// encoding/json) and reports a type error.
func (d *decoder) wrongType(want string) error {
	if err := d.skip(); err != nil {
		return err
	}
	return d.typeErr(want)
}

// strField sets *dst from a string value; null leaves it as it is.
func (d *decoder) strField(dst *[]byte) error {
	if d.literal("null") {
		return nil
	}
	if d.peek() != '"' {
		return d.wrongType("a string")
	}
	s, err := d.str()
	if err != nil {
		return err
	}
	*dst = s
	return nil
}

// prefixField sets *dst to whether a string value starts with prefix (an
// ASCII string), as encoding/json would decode the value, without keeping
// or unescaping it; null leaves it as it is.
func (d *decoder) prefixField(dst *bool, prefix string) error {
	if d.literal("null") {
		return nil
	}
	if d.peek() != '"' {
		return d.wrongType("a string")
	}
	start := d.off + 1
	if err := d.skipString(); err != nil {
		return err
	}
	*dst = hasEscapedPrefix(d.data[start:d.off-1], prefix)
	return nil
}

// hasEscapedPrefix reports whether the JSON string body raw (between its
// quotes, syntax already checked) decodes to a string starting with the
// ASCII prefix. An escape decodes to one character; \uXXXX of a non-ASCII
// rune, a surrogate or a raw byte ≥ 0x80 (invalid UTF-8 included, which
// encoding/json turns into U+FFFD) cannot match an ASCII byte.
func hasEscapedPrefix(raw []byte, prefix string) bool {
	i := 0
	for j := 0; j < len(prefix); j++ {
		if i >= len(raw) {
			return false
		}
		c := raw[i]
		i++
		if c == '\\' {
			switch e := raw[i]; e {
			case 'u':
				v := 0
				for _, h := range raw[i+1 : i+5] {
					v = v<<4 | hexVal(h)
				}
				if v >= 0x80 {
					return false
				}
				c = byte(v)
				i += 5
			default:
				c = unescaped[e]
				i++
			}
		}
		if c != prefix[j] {
			return false
		}
	}
	return true
}

// hexVal is the value of a hex digit (checked before).
func hexVal(h byte) int {
	switch {
	case h <= '9':
		return int(h - '0')
	case h >= 'a':
		return int(h-'a') + 10
	}
	return int(h-'A') + 10
}

// unescaped maps the character after a backslash to what it stands for
// (\u aside).
var unescaped = [256]byte{'"': '"', '\\': '\\', '/': '/', 'b': '\b', 'f': '\f', 'n': '\n', 'r': '\r', 't': '\t'}

// rawField records the span of an array or object value (open is '[' or
// '{'); null sets it to nil, as encoding/json does for slices and maps.
func (d *decoder) rawField(dst *[]byte, open byte, want string) error {
	if d.literal("null") {
		*dst = nil
		return nil
	}
	if d.peek() != open {
		return d.wrongType(want)
	}
	start := d.off
	if err := d.skip(); err != nil {
		return err
	}
	*dst = d.data[start:d.off]
	// Check the element types now, so that a bad Tags or Meta fails the
	// answer as it fails consul/api's decoding, not later.
	sub := decoder{data: *dst}
	var err error
	if open == '[' {
		err = sub.checkStrings()
	} else {
		err = sub.checkStringMap()
	}
	if err != nil {
		return err
	}
	return nil
}

func (d *decoder) number() ([]byte, error) {
	start := d.off
	if err := d.skipNumber(); err != nil {
		return nil, err
	}
	return d.data[start:d.off], nil
}

// numberField reads a number where one is expected; null gives nil, nil.
func (d *decoder) numberField() ([]byte, error) {
	if d.literal("null") {
		return nil, nil
	}
	c := d.peek()
	if c != '-' && (c < '0' || c > '9') {
		return nil, d.wrongType("a number")
	}
	return d.number()
}

func (d *decoder) intField(dst *int) error {
	num, err := d.numberField()
	if num == nil || err != nil {
		return err
	}
	n, err := strconv.ParseInt(string(num), 10, 0)
	if err != nil {
		return fmt.Errorf("decoding health answer: number %s at offset %d is not an int", num, d.off-len(num))
	}
	*dst = int(n)
	return nil
}

func (d *decoder) uintField(dst *uint64) error {
	num, err := d.numberField()
	if num == nil || err != nil {
		return err
	}
	n, err := strconv.ParseUint(string(num), 10, 64)
	if err != nil {
		return fmt.Errorf("decoding health answer: number %s at offset %d is not a uint64", num, d.off-len(num))
	}
	*dst = n
	return nil
}

// str reads a string token and returns its value: a slice of the input
// when it has no escapes and is valid UTF-8, else the value encoding/json
// gives it (invalid UTF-8 becomes U+FFFD), in new memory.
func (d *decoder) str() ([]byte, error) {
	if !d.expect('"') {
		return nil, d.syntax("a string")
	}
	start := d.off
	data := d.data
	i := start
	ascii, escaped := true, false
	for {
		for i < len(data) && plain[data[i]] {
			if data[i] >= 0x80 {
				ascii = false
			}
			i++
		}
		d.off = i
		if i == len(data) {
			return nil, d.syntax("the end of a string")
		}
		switch data[i] {
		case '"':
			d.off = i + 1
			s := data[start:i]
			if escaped || (!ascii && !utf8.Valid(s)) {
				var v string
				if err := json.Unmarshal(data[start-1:d.off], &v); err != nil {
					return nil, fmt.Errorf("decoding health answer: string at offset %d: %w", start-1, err)
				}
				d.scratch = append(d.scratch[len(d.scratch):], v...)
				d.escapes++
				return d.scratch, nil
			}
			return s, nil
		case '\\':
			escaped = true
			d.off = i + 1
			if err := d.escape(); err != nil {
				return nil, err
			}
			i = d.off
		default:
			return nil, d.syntax("a string character")
		}
	}
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// skip steps over one value, checking its syntax.
func (d *decoder) skip() error {
	switch c := d.peek(); {
	case c == '"':
		return d.skipString()
	case c == '{':
		d.off++
		d.space()
		if d.consume('}') {
			return nil
		}
		for {
			d.space()
			if d.peek() != '"' {
				return d.syntax("a string key")
			}
			if err := d.skipString(); err != nil {
				return err
			}
			d.space()
			if !d.consume(':') {
				return d.syntax("':' after an object key")
			}
			d.space()
			if err := d.skip(); err != nil {
				return err
			}
			d.space()
			if d.consume(',') {
				continue
			}
			if d.consume('}') {
				return nil
			}
			return d.syntax("',' or '}' in an object")
		}
	case c == '[':
		d.off++
		d.space()
		if d.consume(']') {
			return nil
		}
		for {
			d.space()
			if err := d.skip(); err != nil {
				return err
			}
			d.space()
			if d.consume(',') {
				continue
			}
			if d.consume(']') {
				return nil
			}
			return d.syntax("',' or ']' in an array")
		}
	case c == 't':
		if d.literal("true") {
			return nil
		}
	case c == 'f':
		if d.literal("false") {
			return nil
		}
	case c == 'n':
		if d.literal("null") {
			return nil
		}
	case c == '-' || ('0' <= c && c <= '9'):
		return d.skipNumber()
	}
	return d.syntax("a value")
}

// plain marks the bytes that need no attention inside a string.
var plain = func() (t [256]bool) {
	for c := 0x20; c < 256; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// skipString steps over a string without decoding it.
func (d *decoder) skipString() error {
	d.off++ // '"'
	data := d.data
	i := d.off
	for {
		for i < len(data) && plain[data[i]] {
			i++
		}
		d.off = i
		if i == len(data) {
			return d.syntax("the end of a string")
		}
		switch data[i] {
		case '"':
			d.off = i + 1
			return nil
		case '\\':
			d.off = i + 1
			if err := d.escape(); err != nil {
				return err
			}
			i = d.off
		default:
			return d.syntax("a string character")
		}
	}
}

// escape steps over an escape sequence after its backslash.
func (d *decoder) escape() error {
	if d.off >= len(d.data) {
		return d.syntax("an escape")
	}
	switch d.data[d.off] {
	case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
		d.off++
	case 'u':
		if len(d.data)-d.off < 5 {
			d.off = len(d.data)
			return d.syntax("four hex digits")
		}
		for _, h := range d.data[d.off+1 : d.off+5] {
			if !isHex(h) {
				return d.syntax("four hex digits")
			}
		}
		d.off += 5
	default:
		return d.syntax("an escape character")
	}
	return nil
}

// skipNumber steps over a number, checking JSON's number grammar.
func (d *decoder) skipNumber() error {
	digits := func() int {
		n := 0
		for d.off < len(d.data) && '0' <= d.data[d.off] && d.data[d.off] <= '9' {
			d.off++
			n++
		}
		return n
	}
	d.consume('-')
	switch {
	case d.consume('0'):
	case digits() == 0:
		return d.syntax("a digit")
	}
	if d.consume('.') && digits() == 0 {
		return d.syntax("a digit after '.'")
	}
	if c := d.peek(); c == 'e' || c == 'E' {
		d.off++
		if c := d.peek(); c == '+' || c == '-' {
			d.off++
		}
		if digits() == 0 {
			return d.syntax("a digit in the exponent")
		}
	}
	return nil
}

// checkStrings checks that the input is an array of strings (or nulls).
func (d *decoder) checkStrings() error {
	_, err := d.strings(false)
	return err
}

func (d *decoder) stringArray() ([]string, error) { return d.strings(true) }

func (d *decoder) strings(keep bool) ([]string, error) {
	var out []string
	d.off++ // '['
	d.space()
	if d.consume(']') {
		if keep {
			out = []string{}
		}
		return out, nil
	}
	for {
		d.space()
		var v string
		switch {
		case d.literal("null"):
		case d.peek() == '"':
			s, err := d.str()
			if err != nil {
				return nil, err
			}
			if keep {
				v = string(s)
			}
		default:
			return nil, d.wrongType("a string tag")
		}
		if keep {
			out = append(out, v)
		}
		d.space()
		if d.consume(',') {
			continue
		}
		if d.consume(']') {
			return out, nil
		}
		return nil, d.syntax("',' or ']' in Tags")
	}
}

func (d *decoder) checkStringMap() error {
	_, err := d.stringMapOf(false)
	return err
}

func (d *decoder) stringMap() (map[string]string, error) { return d.stringMapOf(true) }

func (d *decoder) stringMapOf(keep bool) (map[string]string, error) {
	var out map[string]string
	if keep {
		out = map[string]string{}
	}
	err := d.object(func(k []byte) error {
		var v string
		switch {
		case d.literal("null"):
		case d.peek() == '"':
			s, err := d.str()
			if err != nil {
				return err
			}
			if keep {
				v = string(s)
			}
		default:
			return d.wrongType("a string meta value")
		}
		if keep {
			out[string(k)] = v
		}
		return nil
	})
	return out, err
}
