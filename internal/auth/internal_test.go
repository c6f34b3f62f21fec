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

// Hashes that start their probe at the same slot (no real pair is known;
// these are built) are both kept, each answered with its own entry, through
// removals and through the rebuilds that growth and tombstones cause.
func TestCacheProbing(t *testing.T) {
	c := newCache(1<<20, 10)
	c.setAccepting(true)
	c.clear(true)
	const n = 100
	hashes := make([][32]byte, n)
	entries := make([]*entry, n)
	for i := range hashes {
		hashes[i][31], hashes[i][30] = byte(i), 1 // same shard, same probe start
		entries[i] = &entry{hash: hashes[i], kind: kindAPIKey, id: strconv.Itoa(i), userID: "u" + strconv.Itoa(i%2),
			p: &keybridge.Principal{KeyID: strconv.Itoa(i)}}
		if !c.put(entries[i], c.gen.Load()) {
			t.Fatalf("put(%d) = false, want true", i)
		}
	}
	check := func(when string, present func(i int) bool) {
		t.Helper()
		for i := range hashes {
			got, _ := c.get(&hashes[i])
			switch {
			case present(i) && got != entries[i]:
				t.Errorf("%s: get(%d) = %v, want its entry", when, i, got)
			case !present(i) && got != nil:
				t.Errorf("%s: get(%d) = entry %s, want none", when, i, got.id)
			}
		}
		var missing [32]byte
		missing[31], missing[30] = 200, 1
		if got, _ := c.get(&missing); got != nil {
			t.Errorf("%s: get(unknown) = entry %s, want none", when, got.id)
		}
	}
	check("after puts", func(int) bool { return true })

	// Replacing an entry keeps one copy.
	again := &entry{hash: hashes[7], kind: kindAPIKey, id: "7", userID: "u1"}
	c.put(again, c.gen.Load())
	entries[7] = again
	if got, _ := c.stats(); got != n {
		t.Errorf("entries after replacing one = %d, want %d", got, n)
	}

	c.dropUser("u0") // every even entry
	check("after dropping even ones", func(i int) bool { return i%2 == 1 })
	for i := 1; i < n; i += 4 {
		c.dropID(kindAPIKey, strconv.Itoa(i))
	}
	check("after dropping some odd ones", func(i int) bool { return i%4 == 3 })
	// Refill: tombstones are reused or rebuilt away.
	for i := 0; i < n; i += 2 {
		c.put(entries[i], c.gen.Load())
	}
	check("after refilling even ones", func(i int) bool { return i%2 == 0 || i%4 == 3 })
	if got, _ := c.stats(); got != n/2+n/4 {
		t.Errorf("entries = %d, want %d", got, n/2+n/4)
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
		l.acquire(context.Background(), []limitKey{{name: strconv.Itoa(i), limit: 1}})
	}
	if got := len(l.m); got > maxWindows {
		t.Errorf("limiter holds %d windows, want at most %d", got, maxWindows)
	}
	// The newest failure is still counted.
	if d := l.acquire(context.Background(), []limitKey{{name: strconv.Itoa(maxWindows + 999), limit: 1}}); d <= 0 {
		t.Errorf("acquire after the newest failure = %v, want a wait", d)
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

// Readers that take no lock see, while writers insert, replace, remove,
// rebuild and clear, either nothing or the entry of the hash they asked for.
func TestCacheConcurrentReaders(t *testing.T) {
	c := newCache(64*shardCount, 10) // small shards: evictions and rebuilds
	c.setAccepting(true)
	c.clear(true)
	const n = 2000
	hashes := make([][32]byte, n)
	for i := range hashes {
		hashes[i][0] = byte(i % 4) // a few shards, so they fill
		hashes[i][8], hashes[i][9], hashes[i][31] = byte(i), byte(i>>8), 7
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for r := range 3 {
		wg.Go(func() {
			for i := r; ; i = (i + 7) % n {
				select {
				case <-stop:
					return
				default:
				}
				if e, _ := c.get(&hashes[i]); e != nil && e.hash != hashes[i] {
					t.Errorf("get(%d) returned the entry of another hash", i)
					return
				}
			}
		})
	}
	for round := range 20 {
		for i := range hashes {
			c.put(&entry{hash: hashes[i], kind: kindAPIKey, id: strconv.Itoa(i), userID: "u" + strconv.Itoa(i%3)}, c.gen.Load())
		}
		c.dropUser("u" + strconv.Itoa(round%3))
		if round%5 == 4 {
			c.clear(true)
		}
	}
	close(stop)
	wg.Wait()
	if entries, _ := c.stats(); entries > 4*c.perShardMax {
		t.Errorf("entries = %d, want at most %d (4 shards of %d)", entries, 4*c.perShardMax, c.perShardMax)
	}
}

// A signature's time is at most MaxSigV4Skew from the clock, either way
// (SPEC §7.2): exactly that far is in time, a second more (X-Amz-Date's
// step) is not.
func TestSignedInTime(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		at   time.Duration
		want bool
	}{
		{0, true},
		{-MaxSigV4Skew, true},
		{MaxSigV4Skew, true},
		{-MaxSigV4Skew - time.Second, false},
		{MaxSigV4Skew + time.Second, false},
		{-MaxSigV4Skew - time.Nanosecond, false},
		{MaxSigV4Skew + time.Nanosecond, false},
	} {
		if got := signedInTime(now.Add(tc.at), now); got != tc.want {
			t.Errorf("signedInTime(now%+v, now) = %v, want %v", tc.at, got, tc.want)
		}
	}
}
