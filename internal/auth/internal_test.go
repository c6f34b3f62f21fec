package auth

import (
	"context"
	"strconv"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/keybridge/keybridge/internal/keybridge"
)

// Two hashes that share the bytes a shard slot is made of (no real pair is
// known; they are built here) take turns in the cache: neither is ever
// answered with the other's entry.
func TestCacheSlotCollision(t *testing.T) {
	c := newCache(1000, 10)
	c.setAccepting(true)
	c.clear(true)
	var a, b [32]byte
	a[31], b[31] = 1, 2 // same shard byte and slot key, different hashes
	ea := &entry{hash: a, kind: kindAPIKey, id: "a", userID: "u", p: &keybridge.Principal{KeyID: "a"}}
	eb := &entry{hash: b, kind: kindAPIKey, id: "b", userID: "u", p: &keybridge.Principal{KeyID: "b"}}

	if !c.put(ea, c.gen.Load()) {
		t.Fatal("put(a) = false, want true")
	}
	if got, _ := c.get(&b); got != nil {
		t.Fatalf("get(b) with only a stored = %s, want nil", got.id)
	}
	if !c.put(eb, c.gen.Load()) {
		t.Fatal("put(b) = false, want true")
	}
	if got, _ := c.get(&a); got != nil {
		t.Errorf("get(a) after b took the slot = %s, want nil", got.id)
	}
	if got, _ := c.get(&b); got != eb {
		t.Errorf("get(b) = %v, want b's entry", got)
	}
	if _, ok := c.byID[idKey{kindAPIKey, "a"}]; ok {
		t.Error("a is still indexed after losing its slot")
	}
	if n := len(c.byUser["u"]); n != 1 {
		t.Errorf("user index holds %d entries, want 1", n)
	}
	c.dropUser("u")
	if got, _ := c.get(&b); got != nil {
		t.Error("b still cached after dropUser")
	}
}

// Every use between two drains is reported once, with its latest second,
// however many goroutines use the entries at once.
func TestCacheDirtyStack(t *testing.T) {
	c := newCache(1000, 10)
	entries := make([]*entry, 50)
	for i := range entries {
		entries[i] = &entry{id: string(rune('A' + i))}
	}
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for round := range 100 {
				for _, e := range entries {
					c.touch(e, int64(round+g)*1e9)
				}
			}
		})
	}
	wg.Wait()
	seen := map[*entry]int{}
	c.drainDirty(func(e *entry, sec int64) {
		seen[e]++
		if sec < 1 {
			t.Errorf("entry %s drained with second %d, want a use", e.id, sec)
		}
	})
	if len(seen) != len(entries) {
		t.Errorf("drained %d entries, want %d", len(seen), len(entries))
	}
	for e, n := range seen {
		if n != 1 {
			t.Errorf("entry %s drained %d times, want once", e.id, n)
		}
	}
	c.drainDirty(func(e *entry, sec int64) { t.Errorf("entry %s drained again with no new use", e.id) })

	c.touch(entries[0], 500e9)
	var got []int64
	c.drainDirty(func(e *entry, sec int64) { got = append(got, sec) })
	if len(got) != 1 || got[0] != 501 {
		t.Errorf("drain after one new use = %v, want [501]", got)
	}
}

// The in-process limiter's memory is bounded however many addresses fail.
func TestMemLimiterBound(t *testing.T) {
	l := newMemLimiter(time.Minute)
	for i := range maxWindows + 1000 {
		l.fail(context.Background(), []limitKey{{name: strconv.Itoa(i), limit: 1}})
	}
	if got := len(l.m); got > maxWindows {
		t.Errorf("limiter holds %d windows, want at most %d", got, maxWindows)
	}
	// The newest failure is still counted.
	if d := l.wait(context.Background(), []limitKey{{name: strconv.Itoa(maxWindows + 999), limit: 1}}); d <= 0 {
		t.Errorf("wait after the newest failure = %v, want a wait", d)
	}
}

// What a hit reads sits in the first cache line of an entry, and entries
// start on a line.
func TestEntryLayout(t *testing.T) {
	if size := unsafe.Sizeof(shard{}); size != 128 {
		t.Errorf("shard is %d bytes, want 128 (two cache lines of its own)", size)
	}
	var e entry
	if size := unsafe.Sizeof(e); size != 128 {
		t.Errorf("entry is %d bytes, want 128 (a size class aligned to cache lines)", size)
	}
	for name, end := range map[string]uintptr{
		"hash":      unsafe.Offsetof(e.hash) + unsafe.Sizeof(e.hash),
		"fastUntil": unsafe.Offsetof(e.fastUntil) + unsafe.Sizeof(e.fastUntil),
		"p":         unsafe.Offsetof(e.p) + unsafe.Sizeof(e.p),
		"lastUsed":  unsafe.Offsetof(e.lastUsed) + unsafe.Sizeof(e.lastUsed),
		"kind":      unsafe.Offsetof(e.kind) + unsafe.Sizeof(e.kind),
	} {
		if end > 64 {
			t.Errorf("entry.%s ends at byte %d, want within the first 64", name, end)
		}
	}
}
