package proxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// h2Client writes client frames into a buffer.
type h2Client struct {
	buf bytes.Buffer
	fr  *http2.Framer
	enc *hpack.Encoder
	hb  bytes.Buffer
}

func newH2Client() *h2Client {
	c := &h2Client{}
	c.buf.WriteString(h2Preface)
	c.fr = http2.NewFramer(&c.buf, nil)
	c.enc = hpack.NewEncoder(&c.hb)
	return c
}

func (c *h2Client) headers(t *testing.T, id uint32, end bool, fields ...string) {
	t.Helper()
	c.hb.Reset()
	all := append([]string{":method", "POST", ":scheme", "http", ":path", "/", ":authority", "x"}, fields...)
	for i := 0; i < len(all); i += 2 {
		if err := c.enc.WriteField(hpack.HeaderField{Name: all[i], Value: all[i+1]}); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: c.hb.Bytes(), EndStream: end, EndHeaders: true}); err != nil {
		t.Fatal(err)
	}
}

// check passes the client's bytes through h2check and returns what the
// server would read, and the error that ended the read.
func check(client []byte) ([]byte, error) {
	a, b := net.Pipe()
	go func() {
		a.Write(client)
		a.Close()
	}()
	out, err := io.ReadAll(newH2Check(b, false))
	return out, err
}

func TestH2CheckPassesAValidExchange(t *testing.T) {
	c := newH2Client()
	c.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 20})
	c.headers(t, 1, false, "content-length", "4", "te", "trailers")
	c.fr.WriteData(1, true, []byte("test"))
	c.headers(t, 3, true)
	want := bytes.Clone(c.buf.Bytes())
	got, err := check(c.buf.Bytes())
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("valid frames changed or refused: err %v, %d of %d bytes", err, len(got), len(want))
	}
}

func TestH2CheckRefusesMalformedRequests(t *testing.T) {
	for _, tc := range []struct {
		name string
		send func(t *testing.T, c *h2Client)
		data int // >0: the HEADERS pass, the last DATA frame (that long) does not
	}{
		{"connection field", func(t *testing.T, c *h2Client) { c.headers(t, 1, true, "connection", "keep-alive") }, 0},
		{"transfer-encoding", func(t *testing.T, c *h2Client) { c.headers(t, 1, true, "transfer-encoding", "chunked") }, 0},
		{"te not trailers", func(t *testing.T, c *h2Client) { c.headers(t, 1, true, "te", "gzip") }, 0},
		{"data shorter than content-length", func(t *testing.T, c *h2Client) {
			c.headers(t, 1, false, "content-length", "10")
			c.fr.WriteData(1, true, []byte("test"))
		}, 9 + 4},
		{"data longer than content-length", func(t *testing.T, c *h2Client) {
			c.headers(t, 1, false, "content-length", "1")
			c.fr.WriteData(1, false, []byte("test"))
		}, 9 + 4},
		{"content-length without data", func(t *testing.T, c *h2Client) { c.headers(t, 1, true, "content-length", "3") }, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newH2Client()
			c.headers(t, 5, true) // a valid request first: it goes through
			valid := c.buf.Len()
			tc.send(t, c)
			if tc.data > 0 {
				valid = c.buf.Len() - tc.data
			}
			got, err := check(c.buf.Bytes())
			if !errors.Is(err, errH2Malformed) {
				t.Fatalf("read ended with %v, want errH2Malformed", err)
			}
			// What came before reached the server, and not a byte of the
			// frame that made the request malformed.
			if len(got) != valid {
				t.Errorf("%d bytes reached the server, want the %d before the malformed request (of %d sent)", len(got), valid, c.buf.Len())
			}
		})
	}
}

func TestH2CheckMergesRepeatedSettings(t *testing.T) {
	c := newH2Client()
	c.fr.WriteSettings(
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: 100},
		http2.Setting{ID: http2.SettingMaxFrameSize, Val: 1 << 15},
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1},
	)
	got, err := check(c.buf.Bytes())
	if err != io.EOF && err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(nil, bytes.NewReader(got[len(h2Preface):]))
	f, err := fr.ReadFrame()
	if err != nil {
		t.Fatalf("the server could not read the merged SETTINGS: %v", err)
	}
	sf := f.(*http2.SettingsFrame)
	if sf.HasDuplicates() || sf.NumSettings() != 2 {
		t.Fatalf("merged settings: %v", sf)
	}
	if v, _ := sf.Value(http2.SettingInitialWindowSize); v != 1 {
		t.Errorf("SETTINGS_INITIAL_WINDOW_SIZE %d, want the last value 1", v)
	}
	if v, _ := sf.Value(http2.SettingMaxFrameSize); v != 1<<15 {
		t.Errorf("SETTINGS_MAX_FRAME_SIZE %d, want %d", v, 1<<15)
	}
}
