package gctune_test

import (
	"runtime"
	"runtime/debug"
	"testing"
	"time"

	"github.com/keybridge/keybridge/internal/gctune"
)

func TestPercent(t *testing.T) {
	const mib = 1 << 20
	for _, c := range []struct {
		live uint64
		want int
	}{
		{0, 400},
		{4 * mib, 400},  // 64 MiB would be 1600%: capped
		{16 * mib, 400}, // exactly the budget at 400%
		{32 * mib, 200},
		{64 * mib, 100},
		{1024 * mib, 100}, // never below the default
	} {
		if got := gctune.Percent(c.live, 64*mib, 400); got != c.want {
			t.Errorf("Percent(%d MiB) = %d, want %d", c.live/mib, got, c.want)
		}
	}
}

// Start raises the percent on a small heap, lowers it again as the live
// heap grows, and stop puts the default back.
func TestStartFollowsTheLiveHeap(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	stop := gctune.Start(64<<20, 400)
	runtime.GC()
	if got := waitPercent(t, 400); got != 400 {
		t.Errorf("small heap: GOGC %d, want 400", got)
	}
	big := make([][]byte, 0, 64)
	for range 64 {
		b := make([]byte, 1<<20)
		for i := range b {
			b[i] = 1
		}
		big = append(big, b)
	}
	runtime.GC()
	runtime.GC() // the first collection's finalizer runs after it
	if got := waitPercent(t, 100); got != 100 {
		t.Errorf("64 MiB live: GOGC %d, want 100", got)
	}
	runtime.KeepAlive(big)
	stop()
	if got := debug.SetGCPercent(100); got != 100 {
		t.Errorf("after stop: GOGC %d, want 100", got)
	}
}

// waitPercent waits for the finalizer goroutine to set want, and returns
// the percent it found.
func waitPercent(t *testing.T, want int) int {
	t.Helper()
	var got int
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		got = debug.SetGCPercent(-1)
		debug.SetGCPercent(got)
		if got == want {
			break
		}
		runtime.GC()
	}
	return got
}
