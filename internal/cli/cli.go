// Package cli holds what both meshlb binaries share on the command line:
// the root logger (go-hclog, level and JSON flags) and repeatable flags.
package cli

import (
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/hashicorp/go-hclog"
)

// LogLevels lists the accepted --log-level values.
const LogLevels = "trace, debug, info, warn, error"

// NewLogger returns the root logger of a binary. level is one of
// LogLevels; an unknown level is an error naming it.
func NewLogger(name, level string, json bool, w io.Writer) (hclog.Logger, error) {
	lvl := hclog.LevelFromString(level)
	if lvl == hclog.NoLevel {
		return nil, fmt.Errorf("invalid --log-level %q: valid levels are %s", level, LogLevels)
	}
	if w == nil {
		w = os.Stderr
	}
	return hclog.New(&hclog.LoggerOptions{
		Name:            name,
		Level:           lvl,
		JSONFormat:      json,
		Output:          w,
		IncludeLocation: false,
		TimeFormat:      "2006-01-02T15:04:05.000Z0700",
	}), nil
}

// StringList is a repeatable string flag (--tag a --tag b, or --tag a,b).
type StringList []string

func (s *StringList) String() string { return strings.Join(*s, ",") }

// Set appends the comma-separated values of v.
func (s *StringList) Set(v string) error {
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*s = append(*s, p)
		}
	}
	return nil
}

// KeyValues is a repeatable KEY=VALUE flag.
type KeyValues map[string]string

func (kv KeyValues) String() string {
	parts := make([]string, 0, len(kv))
	for k, v := range kv {
		parts = append(parts, k+"="+v)
	}
	return strings.Join(parts, ",")
}

// Set adds one KEY=VALUE pair; a value without '=' is an error naming it.
func (kv KeyValues) Set(v string) error {
	k, val, ok := strings.Cut(v, "=")
	if !ok || k == "" {
		return fmt.Errorf("%q is not KEY=VALUE", v)
	}
	if _, dup := kv[k]; dup {
		return fmt.Errorf("key %q given twice", k)
	}
	kv[k] = val
	return nil
}
