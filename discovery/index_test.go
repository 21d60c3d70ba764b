package discovery

import "testing"

func TestNextIndex(t *testing.T) {
	for _, tc := range []struct {
		name            string
		prev, got, want uint64
	}{
		{"first read answers an index", 0, 7, 7},
		{"first read answers 0: never wait on 0", 0, 0, 1},
		{"moved on", 7, 9, 9},
		{"equal: timed out, no news, same index", 7, 7, 7},
		{"went backwards: reset", 9, 3, 0},
		{"went backwards to 0: reset first", 9, 0, 0},
		{"went backwards by one: reset", 10, 9, 0},
		{"waiting on 1 and got 1", 1, 1, 1},
		{"waiting on 1 and got 0: reset", 1, 0, 0},
		{"huge index", 1 << 62, 1<<62 + 1, 1<<62 + 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := NextIndex(tc.prev, tc.got); got != tc.want {
				t.Errorf("NextIndex(%d, %d) = %d, want %d", tc.prev, tc.got, got, tc.want)
			}
		})
	}
}

// TestNextIndexNeverBlocksOnZeroTwice checks the loop property the rules
// exist for: whatever Consul answers, a reset (0) is followed by a real
// wait, so a broken Consul cannot turn the loop into a busy loop of
// non-blocking reads.
func TestNextIndexNeverBlocksOnZeroTwice(t *testing.T) {
	answers := []uint64{0, 0, 5, 0, 0, 3, 3, 0, 9, 2, 0}
	var idx uint64
	zeros := 0
	for i, got := range answers {
		idx = NextIndex(idx, got)
		if idx == 0 {
			zeros++
			if zeros > 1 {
				t.Fatalf("answer %d (%d): two non-blocking reads in a row", i, got)
			}
		} else {
			zeros = 0
		}
	}
}
