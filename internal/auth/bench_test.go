package auth_test

import (
	"context"
	"flag"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keybridge/keybridge/internal/apikey"
	"github.com/keybridge/keybridge/internal/auth"
	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store"
	"github.com/keybridge/keybridge/internal/store/storetest"
)

// hitService returns a running Service with one key loaded in its cache.
func hitService(b *testing.B) (*auth.Service, string) {
	ctx := context.Background()
	f := newFixture(b, storetest.SQLite(b))
	s := startService(b, f.st, fastOptions())
	tok, _ := f.newKey(b, f.owner, keybridge.AllPermissions, nil)
	if _, err := s.VerifyAPIKey(ctx, tok); err != nil {
		b.Fatalf("VerifyAPIKey: %v", err)
	}
	return s, tok
}

// The gateway's hot path: a cached platform key. Target: at most 150 ns
// and no allocation on the project's 2-core machine.
func BenchmarkVerifyAPIKeyHit(b *testing.B) {
	ctx := context.Background()
	s, tok := hitService(b)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.VerifyAPIKey(ctx, tok); err != nil {
			b.Fatal(err)
		}
	}
}

// The floor under the hit path, for comparison in the same run: the
// checksum and the SHA-256 every verification must compute.
func BenchmarkVerifyAPIKeyFloor(b *testing.B) {
	tok, _ := apikey.Generate(apikey.PlatformPrefix)
	var sink byte
	b.ReportAllocs()
	for b.Loop() {
		if apikey.Valid(tok, apikey.PlatformPrefix) {
			h := apikey.Hash(tok)
			sink += h[0]
		}
	}
	_ = sink
}

func BenchmarkVerifyAPIKeyHitParallel(b *testing.B) {
	ctx := context.Background()
	s, tok := hitService(b)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := s.VerifyAPIKey(ctx, tok); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// A million keys stored and cached: the hit must cost what it costs with
// one. "same key" compares with BenchmarkVerifyAPIKeyHit; "spread" walks
// all million keys in a scattered order, so it also pays the memory
// latency of a cache far larger than the CPU's.
//
// Storing and loading the keys takes minutes, so it runs only when the
// -bench pattern names it: go test -run '^$' -bench HitMillion ./internal/auth
func BenchmarkVerifyAPIKeyHitMillion(b *testing.B) {
	if !strings.Contains(flag.Lookup("test.bench").Value.String(), "Million") {
		b.Skip("stores a million keys first; select it with -bench HitMillion")
	}
	const n = 1_000_000
	ctx := context.Background()
	st := storetest.SQLite(b)
	f := newFixture(b, st)
	opts := fastOptions()
	opts.CacheTTL = 24 * time.Hour // loading takes minutes; nothing may go stale meanwhile
	s := startService(b, st, opts)

	start := time.Now()
	toks := make([]string, n)
	err := st.InTx(ctx, func(tx store.Store) error {
		for i := range toks {
			tok, k := keyFor(b, f.org, f.owner, keybridge.PermGatewayInvoke)
			k.Name = "bulk"
			if err := tx.CreateAPIKey(ctx, k); err != nil {
				return err
			}
			toks[i] = tok
		}
		return nil
	})
	if err != nil {
		b.Fatalf("store %d keys: %v", n, err)
	}
	b.Logf("stored %d keys in one transaction in %v", n, time.Since(start).Round(time.Second))

	start = time.Now()
	var wg sync.WaitGroup
	workers := runtime.GOMAXPROCS(0)
	for w := range workers {
		wg.Go(func() {
			for i := w; i < n; i += workers {
				if _, err := s.VerifyAPIKey(ctx, toks[i]); err != nil {
					b.Errorf("VerifyAPIKey: %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
	stats := s.CacheStats()
	b.Logf("loaded the cache in %v: %+v", time.Since(start).Round(time.Second), stats)
	if stats.Entries != n {
		b.Fatalf("cache holds %d entries, want %d", stats.Entries, n)
	}
	runtime.GC()

	b.Run("same key", func(b *testing.B) {
		tok := toks[n/2]
		b.ReportAllocs()
		for b.Loop() {
			if _, err := s.VerifyAPIKey(ctx, tok); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("spread", func(b *testing.B) {
		i := 0
		b.ReportAllocs()
		for b.Loop() {
			if _, err := s.VerifyAPIKey(ctx, toks[i]); err != nil {
				b.Fatal(err)
			}
			i = (i + 7919) % n // a prime stride: no two neighbours in a row
		}
	})
	// The same walk without the cache: checksum and SHA-256 of each token.
	// What "spread" costs above it is the cache's own share.
	b.Run("spread floor", func(b *testing.B) {
		i := 0
		var sink byte
		for b.Loop() {
			if apikey.Valid(toks[i], apikey.PlatformPrefix) {
				h := apikey.Hash(toks[i])
				sink += h[0]
			}
			i = (i + 7919) % n
		}
		_ = sink
	})
	if got := s.CacheStats().Misses; got != stats.Misses {
		b.Errorf("%d misses during the benchmark, want none", got-stats.Misses)
	}
	start = time.Now()
	if err := s.Flush(ctx); err != nil {
		b.Fatalf("Flush: %v", err)
	}
	b.Logf("wrote last use of %d keys in %v", n, time.Since(start).Round(time.Second))
}

// The miss path: what a key costs the first time, read from the store.
// "known key" runs without Run, so nothing is cached and every call reads
// the key, the owner's role and the owner (three lookups); "unknown key"
// has the negative cache off, so every call is one lookup that finds
// nothing.
func BenchmarkVerifyAPIKeyMiss(b *testing.B) {
	for _, eng := range storetest.Engines() {
		b.Run(eng.Name, func(b *testing.B) {
			ctx := context.Background()
			f := newFixture(b, eng.New(b))
			tok, _ := f.newKey(b, f.owner, keybridge.AllPermissions, nil)
			b.Run("known key", func(b *testing.B) {
				s := auth.New(f.st, fastOptions())
				b.ReportAllocs()
				for b.Loop() {
					if _, err := s.VerifyAPIKey(ctx, tok); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.Run("unknown key", func(b *testing.B) {
				opts := fastOptions()
				opts.NegativeCacheSize = -1
				s := startService(b, f.st, opts)
				unknown, _ := apikey.Generate(apikey.PlatformPrefix)
				b.ReportAllocs()
				for b.Loop() {
					if _, err := s.VerifyAPIKey(ctx, unknown); !keybridge.IsCode(err, keybridge.EUnauthenticated) {
						b.Fatalf("VerifyAPIKey(unknown) = %v, want unauthenticated", err)
					}
				}
			})
		})
	}
}
