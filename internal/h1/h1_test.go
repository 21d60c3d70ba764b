package h1

import "testing"

func TestAppendFieldValue(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", ""},
		{"text/html", "text/html"},
		{"a\r\nb", "a  b"},
		{"a\nb\rc", "a b c"},
	} {
		if got := string(AppendFieldValue([]byte("x:"), tc.in)); got != "x:"+tc.want {
			t.Errorf("AppendFieldValue(%q) = %q, want %q", tc.in, got, "x:"+tc.want)
		}
	}
}
