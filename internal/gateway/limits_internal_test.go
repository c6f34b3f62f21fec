package gateway

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"log/slog"
	"math"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/redis/go-redis/v9"

	"github.com/keybridge/keybridge/internal/keybridge"
)

// t0 is a fixed instant, so budget periods are known: 2026-03-31 23:58 UTC.
var t0 = time.Date(2026, 3, 31, 23, 58, 0, 0, time.UTC)

// limiters returns the limiters to test: in process always, and on Redis
// when KEYBRIDGE_TEST_REDIS_URL is set.
func limiters(t testing.TB) map[string]func() limiter {
	m := map[string]func() limiter{"mem": func() limiter { return newMemLimiter() }}
	if rdb := testRedis(t); rdb != nil {
		m["redis"] = func() limiter {
			l, err := newRedisLimiter(rdb, LimitsRefuse, nil)
			if err != nil {
				t.Fatal(err)
			}
			return l
		}
	}
	return m
}

func testRedis(t testing.TB) *redis.Client {
	url := os.Getenv("KEYBRIDGE_TEST_REDIS_URL")
	if url == "" {
		return nil
	}
	opt, err := redis.ParseURL(url)
	if err != nil {
		t.Fatalf("KEYBRIDGE_TEST_REDIS_URL: %v", err)
	}
	rdb := redis.NewClient(opt)
	t.Cleanup(func() { rdb.Close() })
	return rdb
}

// needRedis is testRedis for a test that needs it: without it, skipped.
func needRedis(t *testing.T) *redis.Client {
	t.Helper()
	rdb := testRedis(t)
	if rdb == nil {
		t.Skip("KEYBRIDGE_TEST_REDIS_URL not set")
	}
	return rdb
}

// newKeyID is a fresh key, so runs on a shared Redis do not meet.
func newKeyID() string {
	b := make([]byte, 8)
	rand.Read(b)
	return "test-" + hex.EncodeToString(b)
}

func mustAdmit(t *testing.T, l limiter, id string, lim keybridge.Limits, reserve int64, now time.Time) (ticket, decision) {
	t.Helper()
	tk, d, err := l.admit(context.Background(), id, lim, reserve, now)
	if err != nil {
		t.Fatalf("admit at %v: %v", now.Sub(t0), err)
	}
	return tk, d
}

func TestLimitRPMWindowEdges(t *testing.T) {
	for name, newL := range limiters(t) {
		t.Run(name, func(t *testing.T) {
			l, id := newL(), newKeyID()
			lim := keybridge.Limits{RateLimitRPM: 3}
			for i := range 3 {
				_, d := mustAdmit(t, l, id, lim, 0, t0)
				if !d.ok || d.rpmLimit != 3 || d.rpmRemaining != int64(2-i) || d.tokLimit != -1 {
					t.Fatalf("admit %d = %+v, want ok with rpm 3, remaining %d, no token limit", i, d, 2-i)
				}
			}
			for _, at := range []time.Duration{0, time.Second, limitWindow - time.Millisecond} {
				_, d := mustAdmit(t, l, id, lim, 0, t0.Add(at))
				if want := limitWindow - at; d.ok || d.limit != limitRPM || d.retryAfter != want || d.rpmRemaining != 0 {
					t.Errorf("4th at +%v = %+v, want refused by rpm, retry after %v", at, d, want)
				}
			}
			// Refusals did not count: at +60 s the three left and three fit.
			for i := range 3 {
				if _, d := mustAdmit(t, l, id, lim, 0, t0.Add(limitWindow)); !d.ok {
					t.Fatalf("admit %d at +60s = %+v, want ok", i, d)
				}
			}
			if _, d := mustAdmit(t, l, id, lim, 0, t0.Add(limitWindow)); d.ok || d.retryAfter != limitWindow {
				t.Errorf("4th at +60s = %+v, want refused for 60s", d)
			}
		})
	}
}

func TestLimitRPMSpreadRetryAfter(t *testing.T) {
	for name, newL := range limiters(t) {
		t.Run(name, func(t *testing.T) {
			l, id := newL(), newKeyID()
			lim := keybridge.Limits{RateLimitRPM: 2}
			mustAdmit(t, l, id, lim, 0, t0)
			mustAdmit(t, l, id, lim, 0, t0.Add(10*time.Second))
			// The oldest leaves at +60s: 40 s from +20s.
			if _, d := mustAdmit(t, l, id, lim, 0, t0.Add(20*time.Second)); d.ok || d.retryAfter != 40*time.Second {
				t.Errorf("3rd = %+v, want refused for 40s", d)
			}
			if _, d := mustAdmit(t, l, id, lim, 0, t0.Add(60*time.Second)); !d.ok || d.rpmRemaining != 0 {
				t.Errorf("at +60s = %+v, want ok with 0 remaining", d)
			}
			if _, d := mustAdmit(t, l, id, lim, 0, t0.Add(61*time.Second)); d.ok || d.retryAfter != 9*time.Second {
				t.Errorf("at +61s = %+v, want refused for 9s", d)
			}
		})
	}
}

func TestLimitTPMReservationsAndSettlement(t *testing.T) {
	for name, newL := range limiters(t) {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			l, id := newL(), newKeyID()
			lim := keybridge.Limits{RateLimitTPM: 1000}
			a, d := mustAdmit(t, l, id, lim, 600, t0)
			if !d.ok || d.tokLimit != 1000 || d.tokRemaining != 400 {
				t.Fatalf("first = %+v, want ok, 400 tokens remaining", d)
			}
			b, d := mustAdmit(t, l, id, lim, 600, t0.Add(time.Second))
			if !d.ok || d.tokRemaining != 0 {
				t.Fatalf("second (under the limit before it) = %+v, want ok, 0 remaining", d)
			}
			// Only reservations hold the key over: no clock says when they end.
			if _, d := mustAdmit(t, l, id, lim, 1, t0.Add(2*time.Second)); d.ok || d.limit != limitTPM || d.retryAfter != pendingRetry {
				t.Fatalf("third = %+v, want refused by tpm for %v", d, pendingRetry)
			}
			// The first used 100 tokens, settled at +3s: 700 counted.
			if err := l.settle(ctx, a, 100, t0.Add(3*time.Second)); err != nil {
				t.Fatal(err)
			}
			if _, d := mustAdmit(t, l, id, lim, 0, t0.Add(4*time.Second)); !d.ok || d.tokRemaining != 300 {
				t.Fatalf("after settling 100 = %+v, want ok, 300 remaining", d)
			}
			// The second reports 950 at +5s (a cancel is never free): 1050.
			if err := l.settle(ctx, b, 950, t0.Add(5*time.Second)); err != nil {
				t.Fatal(err)
			}
			// 1050 >= 1000 until the 100 of +3s leaves, at +63s.
			if _, d := mustAdmit(t, l, id, lim, 0, t0.Add(10*time.Second)); d.ok || d.retryAfter != 53*time.Second {
				t.Fatalf("over = %+v, want refused for 53s", d)
			}
			if _, d := mustAdmit(t, l, id, lim, 0, t0.Add(63*time.Second)); !d.ok || d.tokRemaining != 50 {
				t.Fatalf("at +63s = %+v, want ok, 50 remaining", d)
			}
			if _, d := mustAdmit(t, l, id, lim, 0, t0.Add(65*time.Second)); !d.ok || d.tokRemaining != 1000 {
				t.Fatalf("at +65s = %+v, want ok, 1000 remaining", d)
			}
		})
	}
}

func TestLimitBudgetMonthRollover(t *testing.T) {
	for name, newL := range limiters(t) {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			l, id := newL(), newKeyID()
			lim := keybridge.Limits{TokenBudget: 500, BudgetPeriod: keybridge.BudgetMonth, RateLimitTPM: 10000}
			tk, _ := mustAdmit(t, l, id, lim, 100, t0)
			if err := l.settle(ctx, tk, 500, t0); err != nil {
				t.Fatal(err)
			}
			// The budget (0 left) is tighter than TPM (9500 left).
			_, d := mustAdmit(t, l, id, lim, 0, t0.Add(30*time.Second))
			if want := 90 * time.Second; d.ok || d.limit != limitBudget || d.retryAfter != want || d.tokLimit != 500 || d.tokRemaining != 0 {
				t.Fatalf("spent = %+v, want refused by budget for %v (to April), token limit 500", d, want)
			}
			if _, d := mustAdmit(t, l, id, lim, 0, t0.Add(2*time.Minute)); !d.ok || d.tokRemaining != 500 {
				t.Fatalf("in April = %+v, want ok with the whole budget", d)
			}
		})
	}
}

func TestLimitBudgetDay(t *testing.T) {
	for name, newL := range limiters(t) {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			l, id := newL(), newKeyID()
			lim := keybridge.Limits{TokenBudget: 100, BudgetPeriod: keybridge.BudgetDay, RateLimitRPM: 10}
			at := time.Date(2026, 5, 4, 6, 0, 0, 0, time.UTC)
			tk, _ := mustAdmit(t, l, id, lim, 10, at)
			l.settle(ctx, tk, 100, at)
			_, d := mustAdmit(t, l, id, lim, 0, at.Add(time.Hour))
			if d.ok || d.retryAfter != 17*time.Hour || d.rpmRemaining != 10 {
				t.Fatalf("spent = %+v, want refused for 17h, 10 requests remaining (the first left the window)", d)
			}
			if _, d := mustAdmit(t, l, id, lim, 0, at.Add(18*time.Hour)); !d.ok {
				t.Fatalf("next day = %+v, want ok", d)
			}
		})
	}
}

// A key's budget_period switched to the other kind and back finds what
// it spent in each period kept: switching does not start a budget afresh.
func TestLimitBudgetPeriodSwitched(t *testing.T) {
	for name, newL := range limiters(t) {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			l, id := newL(), newKeyID()
			month := keybridge.Limits{TokenBudget: 500, BudgetPeriod: keybridge.BudgetMonth}
			day := keybridge.Limits{TokenBudget: 500, BudgetPeriod: keybridge.BudgetDay}
			at := time.Date(2026, 5, 4, 6, 0, 0, 0, time.UTC)
			tk, _ := mustAdmit(t, l, id, month, 0, at)
			l.settle(ctx, tk, 500, at)
			tk, d := mustAdmit(t, l, id, day, 0, at.Add(time.Minute))
			if !d.ok || d.tokRemaining != 500 {
				t.Fatalf("switched to day = %+v, want ok with the day's whole budget", d)
			}
			l.settle(ctx, tk, 10, at.Add(time.Minute))
			_, d = mustAdmit(t, l, id, month, 0, at.Add(2*time.Minute))
			if d.ok || d.limit != limitBudget {
				t.Errorf("switched back to month = %+v, want refused: the month's budget is spent", d)
			}
			if _, d = mustAdmit(t, l, id, day, 0, at.Add(3*time.Minute)); !d.ok || d.tokRemaining != 490 {
				t.Errorf("switched to day again = %+v, want ok with 490 tokens remaining", d)
			}
		})
	}
}

func TestLimitConcurrentBudgetOvershoot(t *testing.T) {
	for name, newL := range limiters(t) {
		t.Run(name, func(t *testing.T) {
			l, id := newL(), newKeyID()
			lim := keybridge.Limits{TokenBudget: 1000, BudgetPeriod: keybridge.BudgetDay}
			var ok atomic.Int64
			var wg sync.WaitGroup
			for range 50 {
				wg.Go(func() {
					_, d, err := l.admit(context.Background(), id, lim, 150, t0)
					if err != nil {
						t.Error(err)
					}
					if d.ok {
						ok.Add(1)
					}
				})
			}
			wg.Wait()
			// Admitted while under 1000: 0, 150, ..., 900 → 7, reserving 1050.
			if got := ok.Load(); got != 7 {
				t.Errorf("admitted %d of 50, want 7 (overshoot at most one reservation)", got)
			}
		})
	}
}

func TestLimitNoLimits(t *testing.T) {
	for name, newL := range limiters(t) {
		t.Run(name, func(t *testing.T) {
			tk, d := mustAdmit(t, newL(), newKeyID(), keybridge.Limits{}, 100, t0)
			if d != unlimited || tk != (ticket{}) {
				t.Errorf("admit = %+v, %+v; want unlimited and a zero ticket", tk, d)
			}
		})
	}
}

func TestMemLimiterDropsIdleKeys(t *testing.T) {
	l := newMemLimiter()
	lim := keybridge.Limits{RateLimitRPM: 5, RateLimitTPM: 100}
	for i := range 100 {
		tk, _ := mustAdmit(t, l, "k"+strconv.Itoa(i), lim, 10, t0)
		l.settle(context.Background(), tk, 5, t0)
	}
	open, _ := mustAdmit(t, l, "open", lim, 10, t0) // never settled in the window
	spent, _ := mustAdmit(t, l, "spent", keybridge.Limits{TokenBudget: 10, BudgetPeriod: keybridge.BudgetMonth}, 0, t0)
	l.settle(context.Background(), spent, 10, t0)
	_ = open
	later := t0.Add(limitWindow + idleSweep)
	for i := range l.shards {
		l.shards[i].mu.Lock()
		l.shards[i].sweep(later.UnixMilli())
		l.shards[i].mu.Unlock()
	}
	var left []string
	for i := range l.shards {
		for id := range l.shards[i].keys {
			left = append(left, id)
		}
	}
	// t0 is in March; later is in April, so the spent budget is over.
	if len(left) != 1 || left[0] != "open" {
		t.Errorf("kept %v, want only the key with an open ticket", left)
	}
}

func TestRedisLimiterTwoReplicasOneLimit(t *testing.T) {
	rdb := needRedis(t)
	a, _ := newRedisLimiter(rdb, LimitsRefuse, nil)
	b, _ := newRedisLimiter(rdb, LimitsRefuse, nil)
	id, lim := newKeyID(), keybridge.Limits{RateLimitRPM: 100}
	var ok atomic.Int64
	var wg sync.WaitGroup
	for i := range 300 {
		l := a
		if i%2 == 1 {
			l = b
		}
		wg.Go(func() {
			_, d, err := l.admit(context.Background(), id, lim, 0, t0.Add(time.Duration(i)*time.Millisecond))
			if err != nil {
				t.Error(err)
			}
			if d.ok {
				ok.Add(1)
			}
		})
	}
	wg.Wait()
	if got := ok.Load(); got != 100 {
		t.Errorf("two replicas admitted %d of 300, want 100", got)
	}
}

// TestRedisLimiterRoundTrips counts the commands that reach Redis: one per
// admit and one per settle, also after Redis forgot its scripts.
func TestRedisLimiterRoundTrips(t *testing.T) {
	rdb := needRedis(t)
	var cmds []string
	var mu sync.Mutex
	rdb.AddHook(countHook{func(name string) { mu.Lock(); cmds = append(cmds, name); mu.Unlock() }})
	l, _ := newRedisLimiter(rdb, LimitsRefuse, nil)
	id, lim := newKeyID(), keybridge.Limits{RateLimitRPM: 10, RateLimitTPM: 1000, TokenBudget: 5000, BudgetPeriod: keybridge.BudgetDay}
	ctx := context.Background()
	round := func() []string {
		mu.Lock()
		cmds = nil
		mu.Unlock()
		tk, d := mustAdmit(t, l, id, lim, 100, t0)
		if !d.ok {
			t.Fatalf("admit = %+v", d)
		}
		if err := l.settle(ctx, tk, 50, t0); err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		defer mu.Unlock()
		return cmds
	}
	round() // loads the scripts
	if got := round(); strings.Join(got, ",") != "evalsha,evalsha" {
		t.Errorf("admit+settle sent %v, want one evalsha each", got)
	}
	if err := rdb.ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if got := round(); strings.Join(got, ",") != "evalsha,eval,evalsha,eval" {
		t.Errorf("after SCRIPT FLUSH sent %v, want evalsha then eval, each", got)
	}
	if got := round(); strings.Join(got, ",") != "evalsha,evalsha" {
		t.Errorf("reloaded: sent %v, want one evalsha each", got)
	}
	// Every counter of the key expires, in one hash slot.
	keys, err := rdb.Keys(ctx, "{kb:"+id+"}:*").Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) < 5 {
		t.Errorf("keys %v, want the counters", keys)
	}
	for _, k := range keys {
		if ttl := rdb.PTTL(ctx, k).Val(); ttl <= 0 {
			t.Errorf("%s has TTL %v, want one", k, ttl)
		}
	}
}

// TestRedisLimiterCarriesSettlements: while run runs, a settlement is
// carried by the key's next admission (no call of its own), what no
// admission takes is sent within settleDelay, a settlement into last
// month's budget is not carried into this month's, and run's end sends
// what is left.
func TestRedisLimiterCarriesSettlements(t *testing.T) {
	rdb := needRedis(t)
	var cmds []string
	var mu sync.Mutex
	rdb.AddHook(countHook{func(name string) { mu.Lock(); cmds = append(cmds, name); mu.Unlock() }})
	sent := func() string {
		mu.Lock()
		defer mu.Unlock()
		s := strings.Join(cmds, ",")
		cmds = nil
		return s
	}
	l, _ := newRedisLimiter(rdb, LimitsRefuse, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); l.run(ctx) }()
	for !l.async.Load() {
		time.Sleep(time.Millisecond)
	}
	id, lim := newKeyID(), keybridge.Limits{RateLimitTPM: 1000, TokenBudget: 5000, BudgetPeriod: keybridge.BudgetMonth}
	at := t0.Add(-time.Minute) // 23:57, March
	tk, _ := mustAdmit(t, l, id, lim, 100, at)
	sent()
	if err := l.settle(ctx, tk, 30, at); err != nil {
		t.Fatal(err)
	}
	// The next admission, at once, sees 30 used instead of 100 reserved.
	tk, d := mustAdmit(t, l, id, lim, 100, at)
	if got := sent(); got != "evalsha" {
		t.Errorf("settle then admit sent %q, want the admission's evalsha alone", got)
	}
	if want := int64(1000 - 30 - 100); d.tokRemaining != want {
		t.Errorf("tokens remaining = %d, want %d (the first settled at 30)", d.tokRemaining, want)
	}
	// Not followed by an admission: sent by run.
	if err := l.settle(ctx, tk, 40, at); err != nil {
		t.Fatal(err)
	}
	waitTPM := func(want string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for rdb.Get(context.Background(), "{kb:"+id+"}:tpms").Val() != want {
			if time.Now().After(deadline) {
				t.Fatalf("TPM sum = %q, want %q", rdb.Get(context.Background(), "{kb:"+id+"}:tpms").Val(), want)
			}
			time.Sleep(time.Millisecond)
		}
	}
	waitTPM("70")
	// Settled in March, carried by an admission in April: the March
	// budget gets it (left to run), the April one does not.
	tk, _ = mustAdmit(t, l, id, lim, 100, at)
	if err := l.settle(ctx, tk, 50, at); err != nil {
		t.Fatal(err)
	}
	april := t0.Add(3 * time.Minute)
	mustAdmit(t, l, id, lim, 0, april)
	keysAt := func(tm time.Time) []string { return limitKeys(id, tm.UnixMilli(), keybridge.BudgetMonth) }
	deadline := time.Now().Add(5 * time.Second)
	for rdb.Get(context.Background(), keysAt(at)[5]).Val() != "120" {
		if time.Now().After(deadline) {
			t.Fatalf("March budget = %q, want 120", rdb.Get(context.Background(), keysAt(at)[5]).Val())
		}
		time.Sleep(time.Millisecond)
	}
	if got := rdb.Get(context.Background(), keysAt(april)[5]).Val(); got != "" {
		t.Errorf("April budget = %q, want nothing used", got)
	}
	// run's end sends what is owed.
	tk, _ = mustAdmit(t, l, id, lim, 100, april)
	l.mu.Lock()
	l.owed[id] = append(l.owed[id], owed{seq: tk.seq, reserved: tk.reserved, used: 7, ms: april.UnixMilli(), tpm: true,
		period: keybridge.BudgetMonth, budget: keysAt(april)[5], budTTL: time.Hour.Milliseconds()})
	l.mu.Unlock()
	cancel()
	<-done
	if got := rdb.Get(context.Background(), keysAt(april)[5]).Val(); got != "7" {
		t.Errorf("April budget after run ended = %q, want 7", got)
	}
	if l.async.Load() {
		t.Error("settlements still owed after run ended")
	}
}

type countHook struct{ f func(string) }

func (h countHook) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h countHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.f(cmd.Name())
		return next(ctx, cmd)
	}
}
func (h countHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// closedAddr is a loopback address nobody listens on.
func closedAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func counterValue(t *testing.T, c prometheus.Collector) float64 {
	t.Helper()
	ch := make(chan prometheus.Metric, 8)
	c.Collect(ch)
	close(ch)
	var sum float64
	for m := range ch {
		var pb dto.Metric
		if err := m.Write(&pb); err != nil {
			t.Fatal(err)
		}
		if pb.Counter != nil {
			sum += pb.Counter.GetValue()
		}
		if pb.Gauge != nil {
			sum += pb.Gauge.GetValue()
		}
	}
	return sum
}

// logCount counts the records at warn or above.
type logCount struct {
	slog.Handler
	warns *atomic.Int64
}

func (h logCount) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= slog.LevelWarn {
		h.warns.Add(1)
	}
	return h.Handler.Handle(ctx, r)
}

func TestRedisLimiterClosedPort(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: closedAddr(t), MaxRetries: -1, DialTimeout: time.Second})
	defer rdb.Close()
	lim := keybridge.Limits{RateLimitRPM: 2, RateLimitTPM: 100}
	ctx := context.Background()

	t.Run("refuse", func(t *testing.T) {
		l, _ := newRedisLimiter(rdb, LimitsRefuse, nil)
		if _, _, err := l.admit(ctx, "k", lim, 10, t0); !errors.Is(err, errLimitsDown) {
			t.Errorf("admit error = %v, want errLimitsDown", err)
		}
		// A key with no limits needs no Redis.
		if _, d, err := l.admit(ctx, "k", keybridge.Limits{}, 10, t0); err != nil || !d.ok {
			t.Errorf("unlimited admit = %+v, %v; want ok", d, err)
		}
	})
	t.Run("local", func(t *testing.T) {
		var warns atomic.Int64
		log := slog.New(logCount{slog.NewTextHandler(&bytes.Buffer{}, nil), &warns})
		l, _ := newRedisLimiter(rdb, LimitsLocal, log)
		var oks int
		for range 3 {
			tk, d, err := l.admit(ctx, "k", lim, 10, t0)
			if err != nil {
				t.Fatal(err)
			}
			if d.ok {
				oks++
				if !tk.local {
					t.Errorf("ticket %+v not local", tk)
				}
				if err := l.settle(ctx, tk, 5, t0); err != nil {
					t.Fatal(err)
				}
			}
		}
		if oks != 2 {
			t.Errorf("admitted %d of 3 locally, want the RPM of 2", oks)
		}
		if got := warns.Load(); got != 1 {
			t.Errorf("logged %d warnings, want one for the outage", got)
		}
		if got := counterValue(t, l.m.redisDown); got != 3 {
			t.Errorf("redis down counter = %v, want 3 (the admits; settles were local)", got)
		}
		if got := counterValue(t, l.m.refusals); got != 1 {
			t.Errorf("refusals = %v, want 1", got)
		}
		if len(l.collectors()) != 3 {
			t.Errorf("collectors = %d, want 3", len(l.collectors()))
		}
	})
}

// TestRedisLimiterServerStops runs a private redis-server and stops it
// between two requests.
// ownRedis starts a redis-server of the test's own, with args, and
// returns a client of it and a function that starts it again once killed.
func ownRedis(t *testing.T, args ...string) (*redis.Client, *exec.Cmd, func() *exec.Cmd) {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Skip("redis-server not installed")
	}
	addr := closedAddr(t)
	_, port, _ := net.SplitHostPort(addr)
	rdb := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialTimeout: time.Second})
	t.Cleanup(func() { rdb.Close() })
	start := func() *exec.Cmd {
		cmd := exec.Command(bin, append([]string{"--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"}, args...)...)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		for rdb.Ping(context.Background()).Err() != nil {
			time.Sleep(10 * time.Millisecond)
		}
		return cmd
	}
	return rdb, start(), start
}

// waitBack waits until l has found Redis back: its probe asks every
// redisRetry at most.
func waitBack(t *testing.T, l *redisLimiter) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); l.down.Load(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("Redis not found back 5 s after it started")
		}
		l.probeSoon()
	}
}

func TestRedisLimiterServerStops(t *testing.T) {
	rdb, srv, start := ownRedis(t)
	ctx := context.Background()
	var warns atomic.Int64
	log := slog.New(logCount{slog.NewTextHandler(&bytes.Buffer{}, nil), &warns})
	l, _ := newRedisLimiter(rdb, LimitsLocal, log)
	lim := keybridge.Limits{RateLimitRPM: 10, TokenBudget: 1000, BudgetPeriod: keybridge.BudgetDay}
	tk, d := mustAdmit(t, l, "k", lim, 100, t0)
	if !d.ok || tk.local {
		t.Fatalf("admit on redis = %+v, %+v; want ok, not local", d, tk)
	}
	srv.Process.Kill()
	srv.Wait()
	// Settling a Redis ticket while Redis is gone still counts its tokens here.
	if err := l.settle(ctx, tk, 1000, t0); err != nil {
		t.Fatal(err)
	}
	if _, d := mustAdmit(t, l, "k", lim, 0, t0); d.ok || d.limit != limitBudget {
		t.Errorf("admit after settling the budget locally = %+v, want refused by budget", d)
	}
	if got := counterValue(t, l.m.redisOutage); got != 1 {
		t.Errorf("outage gauge = %v, want 1", got)
	}
	start()
	waitBack(t, l)
	// Back on Redis (fresh, it lost everything): the budget there is whole.
	if tk, d := mustAdmit(t, l, "k", lim, 0, t0); !d.ok || tk.local {
		t.Errorf("admit after restart = %+v, %+v; want ok on redis", d, tk)
	}
	if got := counterValue(t, l.m.redisOutage); got != 0 {
		t.Errorf("outage gauge = %v, want 0", got)
	}
	if got := warns.Load(); got != 1 {
		t.Errorf("logged %d warnings, want one for the outage", got)
	}
}

func BenchmarkLimiter(b *testing.B) {
	lim := keybridge.Limits{RateLimitRPM: 1 << 40, RateLimitTPM: 1 << 50, TokenBudget: 1 << 50, BudgetPeriod: keybridge.BudgetMonth}
	for name, newL := range limiters(b) {
		b.Run(name, func(b *testing.B) {
			l, id, ctx := newL(), newKeyID(), context.Background()
			if rl, ok := l.(*redisLimiter); ok {
				// As serve runs it: settlements carried or sent in
				// batches, leases returned.
				runCtx, cancel := context.WithCancel(ctx)
				done := make(chan struct{})
				go func() { defer close(done); rl.run(runCtx) }()
				defer func() { cancel(); <-done }()
				for !rl.async.Load() {
					time.Sleep(time.Millisecond)
				}
			}
			now := time.Now()
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				at := now.Add(time.Duration(i) * 100 * time.Microsecond)
				tk, d, err := l.admit(ctx, id, lim, 4096, at)
				if err != nil || !d.ok {
					b.Fatalf("admit = %+v, %v", d, err)
				}
				if err := l.settle(ctx, tk, 1200, at); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// A WebSocket's later responses are charged at a limit or over: the
// charge passes and counts, so the key's next request waits longer.
func TestChargeOnlyCountsAtTheLimit(t *testing.T) {
	l := newMemLimiter()
	ctx, now := context.Background(), time.Now()
	lim := keybridge.Limits{RateLimitRPM: 1, RateLimitTPM: 100}
	t1, d, err := l.admit(ctx, "k", lim, 0, now)
	if err != nil || !d.ok {
		t.Fatalf("first admit = %+v, %v", d, err)
	}
	l.settle(ctx, t1, 100, now)
	t2, d, err := l.admit(ctx, "k", chargeOnly(lim), 0, now)
	if err != nil || !d.ok {
		t.Fatalf("charge at the limit = %+v, %v; want it to pass", d, err)
	}
	l.settle(ctx, t2, 50, now)
	_, d, _ = l.admit(ctx, "k", lim, 0, now.Add(30*time.Second))
	if d.ok || d.rpmRemaining != 0 {
		t.Errorf("after the charge: %+v, want refused", d)
	}
	if d.tokRemaining != 0 {
		t.Errorf("tokens remaining = %d, want 0 after 150 of 100 counted", d.tokRemaining)
	}
}

// bigLimits are far from reach: admissions lease capacity.
var bigLimits = keybridge.Limits{RateLimitRPM: 1_000_000, RateLimitTPM: 1_000_000_000, TokenBudget: 1_000_000_000_000, BudgetPeriod: keybridge.BudgetMonth}

// TestRedisLeaseSavesRoundTrips: a key far from its limits is admitted
// from leases, nearly without round trips, and once the leases are
// returned Redis holds exactly what was admitted and settled.
func TestRedisLeaseSavesRoundTrips(t *testing.T) {
	rdb := needRedis(t)
	var calls atomic.Int64
	rdb.AddHook(countHook{func(string) { calls.Add(1) }})
	l, _ := newRedisLimiter(rdb, LimitsRefuse, nil)
	id, ctx := newKeyID(), context.Background()
	var admits int64
	const n = 1000
	for i := range n {
		at := t0.Add(time.Duration(i) * 100 * time.Microsecond)
		before := calls.Load()
		tk, d := mustAdmit(t, l, id, bigLimits, 10, at)
		admits += calls.Load() - before
		if !d.ok || d.rpmRemaining != bigLimits.RateLimitRPM-int64(i+1) {
			t.Fatalf("admit %d = %+v, want ok with %d requests remaining", i, d, bigLimits.RateLimitRPM-int64(i+1))
		}
		if err := l.settle(ctx, tk, 7, at); err != nil {
			t.Fatal(err)
		}
	}
	// Leases of 8, 16, … 256 slots, then of 256.
	if admits > 12 {
		t.Errorf("%d admissions made %d calls to Redis, want at most 12", n, admits)
	}
	t.Logf("%d admissions made %d calls to Redis", n, admits)
	l.expire(math.MaxInt64)
	l.flush(ctx)
	k := limitKeys(id, t0.UnixMilli(), keybridge.BudgetMonth)
	if got := rdb.Get(ctx, k[6]).Val(); got != strconv.Itoa(n) {
		t.Errorf("RPM log counts %s, want %d", got, n)
	}
	var inLog int
	for _, m := range rdb.ZRange(ctx, k[0], 0, -1).Val() {
		c, _ := strconv.Atoi(m[strings.LastIndexByte(m, ':')+1:])
		inLog += c
	}
	if inLog != n {
		t.Errorf("RPM log entries sum to %d, want %d", inLog, n)
	}
	if got := rdb.Get(ctx, k[2]).Val(); got != strconv.Itoa(7*n) {
		t.Errorf("TPM sum = %s, want %d", got, 7*n)
	}
	if got := rdb.Get(ctx, k[5]).Val(); got != strconv.Itoa(7*n) {
		t.Errorf("budget = %s, want %d", got, 7*n)
	}
	if got := rdb.ZCard(ctx, k[3]).Val(); got != 0 {
		t.Errorf("%d reservations left, want none: %v", got, rdb.ZRange(ctx, k[3], 0, -1).Val())
	}
	// Each used slot is scored at the time it was taken.
	last := rdb.ZRangeWithScores(ctx, k[0], -1, -1).Val()
	if want := float64(t0.Add((n - 1) * 100 * time.Microsecond).UnixMilli()); len(last) != 1 || last[0].Score != want {
		t.Errorf("newest RPM entry %v, want scored %v", last, want)
	}
}

// TestRedisLeaseTwoReplicasExact: two replicas leasing one key's capacity
// admit exactly its RPM limit between them.
func TestRedisLeaseTwoReplicasExact(t *testing.T) {
	rdb := needRedis(t)
	var calls atomic.Int64
	rdb.AddHook(countHook{func(string) { calls.Add(1) }})
	a, _ := newRedisLimiter(rdb, LimitsRefuse, nil)
	b, _ := newRedisLimiter(rdb, LimitsRefuse, nil)
	id, lim := newKeyID(), keybridge.Limits{RateLimitRPM: 2000}
	var ok atomic.Int64
	var wg sync.WaitGroup
	for w := range 8 {
		l := a
		if w%2 == 1 {
			l = b
		}
		wg.Go(func() {
			for i := range 750 {
				_, d, err := l.admit(context.Background(), id, lim, 0, t0.Add(time.Duration(i)*time.Millisecond))
				if err != nil {
					t.Error(err)
					return
				}
				if d.ok {
					ok.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if got := ok.Load(); got != 2000 {
		t.Errorf("two replicas admitted %d of 6000, want 2000", got)
	}
	// Up to half the limit, leases of 8 to 20 slots admit most requests.
	if got := calls.Load(); got > 6000-800 {
		t.Errorf("6000 admissions made %d calls to Redis, want leases to save 800 at least", got)
	}
}

// TestRedisLeaseCountsTokensBeyondReservations: requests that declare no
// output cap reserve nothing, and those that do reserve only their output
// (their input counts too), so a lease must count what their answers use
// beyond that against its tokens: three replicas taking turns on one
// limit, each request settled before the next, admit what the limit holds
// and no more (before, each replica's leases admitted them until its own
// answers made half the limit, and three replicas together spent up to
// one and a half times it).
func TestRedisLeaseCountsTokensBeyondReservations(t *testing.T) {
	rdb := needRedis(t)
	for _, c := range []struct {
		lim           keybridge.Limits
		reserve, used int64
	}{
		{keybridge.Limits{RateLimitTPM: 10_000}, 0, 40},
		{keybridge.Limits{TokenBudget: 10_000, BudgetPeriod: keybridge.BudgetDay}, 0, 40},
		{keybridge.Limits{RateLimitRPM: 100_000, RateLimitTPM: 10_000}, 0, 40},
		// A long prompt, a short answer: 10 reserved, 400 used.
		{keybridge.Limits{RateLimitTPM: 100_000}, 10, 400},
	} {
		lim, used := c.lim, c.used
		var reps []*redisLimiter
		for range 3 {
			l, _ := newRedisLimiter(rdb, LimitsRefuse, nil)
			reps = append(reps, l)
		}
		id, ctx := newKeyID(), context.Background()
		var admitted, fromLeases int64
		for i := range 600 {
			l, at := reps[i%3], t0.Add(time.Duration(i)*time.Millisecond/2)
			tk, d, err := l.admit(ctx, id, lim, c.reserve, at)
			if err != nil {
				t.Fatal(err)
			}
			if !d.ok {
				continue
			}
			admitted++
			if tk.lease != nil {
				fromLeases++
			}
			if err := l.settle(ctx, tk, used, at); err != nil {
				t.Fatal(err)
			}
		}
		limit := max(lim.RateLimitTPM, lim.TokenBudget)
		if want := limit / used; admitted < want-3 || admitted > want {
			t.Errorf("limits %+v, %d reserved: three replicas admitted %d requests of %d tokens, want %d (3 fewer at most, for leases still held)",
				lim, c.reserve, admitted, used, want)
		}
		if fromLeases == 0 {
			t.Errorf("limits %+v: no request was admitted from a lease", lim)
		}
		t.Logf("limits %+v, %d reserved: %d admitted, %d of them from leases", lim, c.reserve, admitted, fromLeases)
	}
}

// TestRedisLeaseNearLimitIsExact: a key near its limit gets no lease, and
// one lease never takes more than 1% of a limit or past half of it.
func TestRedisLeaseNearLimitIsExact(t *testing.T) {
	rdb := needRedis(t)
	l, _ := newRedisLimiter(rdb, LimitsRefuse, nil)
	id, lim := newKeyID(), keybridge.Limits{RateLimitRPM: 1000}
	mustAdmit(t, l, id, lim, 0, t0)
	ls := l.leases[id]
	if ls == nil || ls.slots != leaseMinSlots {
		t.Fatalf("lease %+v, want %d slots", ls, leaseMinSlots)
	}
	for i := 1; i < 500; i++ {
		mustAdmit(t, l, id, lim, 0, t0)
	}
	if ls := l.leases[id]; ls != nil && !ls.ended && int64(len(ls.at)) < ls.slots {
		t.Fatalf("lease with room left at half the limit: %+v", ls)
	}
	for ls := l.leases[id]; ls != nil && !ls.ended && int64(len(ls.at)) < ls.slots; ls = l.leases[id] {
		mustAdmit(t, l, id, lim, 0, t0) // use up what is left of the last lease
	}
	mustAdmit(t, l, id, lim, 0, t0)
	if ls := l.leases[id]; ls != nil && !ls.ended {
		t.Fatalf("a lease past half the limit: %+v", ls)
	}
	// Tokens: a lease never holds more than 1% of TPM.
	id2, lim2 := newKeyID(), keybridge.Limits{RateLimitTPM: 10_000}
	mustAdmit(t, l, id2, lim2, 500, t0)
	if ls := l.leases[id2]; ls == nil || ls.tokens != 100 || ls.slots != 0 {
		t.Fatalf("token lease %+v, want 100 tokens and no slots", ls)
	}
	// A request whose cap does not fit the lease goes to Redis.
	if tk, _ := mustAdmit(t, l, id2, lim2, 500, t0); tk.lease != nil {
		t.Errorf("a 500-token request admitted from a 100-token lease")
	}
}

// TestRedisLeaseReleasesTokensAfterLastSettle: an ended lease keeps its
// reservation while a request admitted from it is open.
func TestRedisLeaseReleasesTokensAfterLastSettle(t *testing.T) {
	rdb := needRedis(t)
	l, _ := newRedisLimiter(rdb, LimitsRefuse, nil)
	id, ctx := newKeyID(), context.Background()
	first, _ := mustAdmit(t, l, id, bigLimits, 10, t0)
	tk, _ := mustAdmit(t, l, id, bigLimits, 10, t0)
	if tk.lease == nil || first.lease != nil {
		t.Fatalf("tickets %+v, %+v: want the second from a lease", first, tk)
	}
	k := limitKeys(id, t0.UnixMilli(), keybridge.BudgetMonth)
	pend := func() string { return rdb.Get(ctx, k[4]).Val() }
	if got := pend(); got != "90" { // 10 for the first, 80 leased
		t.Fatalf("pending = %s, want 90", got)
	}
	l.expire(math.MaxInt64)
	l.flush(ctx)
	if got := pend(); got != "90" {
		t.Errorf("pending after the lease ended with a request open = %s, want 90", got)
	}
	if err := l.settle(ctx, first, 3, t0); err != nil {
		t.Fatal(err)
	}
	if err := l.settle(ctx, tk, 4, t0); err != nil {
		t.Fatal(err)
	}
	if got := pend(); got != "" {
		t.Errorf("pending after the last settle = %q, want none", got)
	}
	if got := rdb.Get(ctx, k[5]).Val(); got != "7" {
		t.Errorf("budget = %s, want 7", got)
	}
	// Changed limits do not use the old lease.
	mustAdmit(t, l, id, bigLimits, 0, t0)
	other := bigLimits
	other.RateLimitRPM++
	if tk, _ := mustAdmit(t, l, id, other, 0, t0); tk.lease != nil {
		t.Error("admitted from a lease granted under other limits")
	}
}

// TestRedisRPMLogWithoutSum: entries an older replica wrote (one member
// per request, no sum) count one each.
func TestRedisRPMLogWithoutSum(t *testing.T) {
	rdb := needRedis(t)
	l, _ := newRedisLimiter(rdb, LimitsRefuse, nil)
	id, ctx := newKeyID(), context.Background()
	k := limitKeys(id, t0.UnixMilli(), "")
	for i := range 3 {
		rdb.ZAdd(ctx, k[0], redis.Z{Score: float64(t0.UnixMilli()), Member: strconv.Itoa(i + 1)})
	}
	rdb.PExpire(ctx, k[0], time.Minute)
	lim := keybridge.Limits{RateLimitRPM: 4}
	if _, d := mustAdmit(t, l, id, lim, 0, t0.Add(time.Second)); !d.ok || d.rpmRemaining != 0 {
		t.Fatalf("4th = %+v, want ok with none remaining", d)
	}
	if _, d := mustAdmit(t, l, id, lim, 0, t0.Add(time.Second)); d.ok || d.retryAfter != limitWindow-time.Second {
		t.Errorf("5th = %+v, want refused for 59s", d)
	}
}

// TestRedisLeaseReturnsWaitForRedis: a lease that ends while Redis is
// down is kept, and returned by the key's first call once Redis answers
// again.
func TestRedisLeaseReturnsWaitForRedis(t *testing.T) {
	rdb, srv, start := ownRedis(t)
	l, _ := newRedisLimiter(rdb, LimitsLocal, nil)
	ctx := context.Background()
	mustAdmit(t, l, "k", bigLimits, 10, t0)
	if tk, _ := mustAdmit(t, l, "k", bigLimits, 10, t0); tk.lease == nil {
		t.Fatal("no lease")
	}
	srv.Process.Kill()
	srv.Wait()
	l.expire(math.MaxInt64)
	l.flush(ctx)
	if len(l.unsent) != 1 || !l.down.Load() {
		t.Fatalf("unsent %v, down %v: want the return kept while Redis is down", l.unsent, l.down.Load())
	}
	start()
	waitBack(t, l)
	// Redis answers: the key's admission carries the return.
	if tk, d := mustAdmit(t, l, "k", bigLimits, 0, t0); !d.ok || tk.local {
		t.Fatalf("admit once Redis is back = %+v, %+v; want ok in Redis", d, tk)
	}
	l.mu.Lock()
	queued, unsent := len(l.returns), len(l.unsent)
	l.mu.Unlock()
	if queued != 0 || unsent != 0 {
		t.Fatalf("after Redis came back: %d returns queued, %d kept; want them sent", queued, unsent)
	}
	l.flush(ctx)
	if len(l.unsent)+len(l.returns) != 0 {
		t.Errorf("returns left after the flush: %v %v", l.unsent, l.returns)
	}
}

// TestRedisLeaseReturnOutOfOrder: a lease's requests may be admitted at
// times out of order (concurrent requests read the clock before they
// take a slot); its return still counts every used slot in Redis, one
// millisecond used twice apart included.
func TestRedisLeaseReturnOutOfOrder(t *testing.T) {
	rdb := needRedis(t)
	l, _ := newRedisLimiter(rdb, LimitsRefuse, nil)
	id, ctx := newKeyID(), context.Background()
	lim := keybridge.Limits{RateLimitRPM: 100_000}
	times := []time.Duration{0, 1, 2, 1, 2, 0, 3} // ms after t0
	for _, d := range times {
		mustAdmit(t, l, id, lim, 0, t0.Add(d*time.Millisecond))
	}
	l.expire(math.MaxInt64)
	l.flush(ctx)
	k := limitKeys(id, t0.UnixMilli(), keybridge.BudgetMonth)
	var inLog int
	for _, m := range rdb.ZRange(ctx, k[0], 0, -1).Val() {
		c, _ := strconv.Atoi(m[strings.LastIndexByte(m, ':')+1:])
		inLog += c
	}
	if got := rdb.Get(ctx, k[6]).Val(); got != strconv.Itoa(len(times)) || inLog != len(times) {
		t.Errorf("RPM log counts %s, its entries sum to %d; want %d requests: %v", got, inLog, len(times), rdb.ZRange(ctx, k[0], 0, -1).Val())
	}
}

// Settlements queued while run flushes are each sent once: admissions
// carry a key's queued settlements, so run often finds nothing queued
// when it wakes, while others queue more. The month's budget in Redis is
// then the exact sum of the tokens settled.
func TestRedisLimiterSettlesWhileFlushing(t *testing.T) {
	rdb := needRedis(t)
	l, _ := newRedisLimiter(rdb, LimitsRefuse, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); l.run(ctx) }()
	for !l.async.Load() {
		time.Sleep(time.Millisecond)
	}
	lim := keybridge.Limits{TokenBudget: 1 << 40, BudgetPeriod: keybridge.BudgetMonth}
	const workers, rounds = 4, 300
	ids := make([]string, workers)
	for w := range ids {
		ids[w] = newKeyID()
	}
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range rounds {
				// Two keys each: one's admission carries, the other's
				// settlements wait for run.
				for _, id := range []string{ids[w], ids[(w+1)%workers]} {
					tk, d, err := l.admit(ctx, id, lim, 10, t0)
					if err != nil || !d.ok {
						t.Errorf("admit: %v, %+v", err, d)
						return
					}
					if err := l.settle(ctx, tk, 3, t0); err != nil {
						t.Error(err)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	cancel()
	<-done
	for _, id := range ids {
		key := limitKeys(id, t0.UnixMilli(), keybridge.BudgetMonth)[5]
		if got, want := rdb.Get(context.Background(), key).Val(), strconv.Itoa(2*rounds*3); got != want {
			t.Errorf("key %s: budget used = %s, want %s", id, got, want)
		}
	}
}

// The cached budget keys are budgetKey's, and their ends period's, across
// the ends of days and months and with clocks that step back.
func TestRedisBudgetKeyCache(t *testing.T) {
	l := &redisLimiter{}
	t0 := time.Date(2026, 12, 31, 23, 59, 59, 0, time.UTC).UnixMilli()
	for _, step := range []int64{0, 999, 1, 1, -2, 86_400_000, -86_400_000 * 40, 1, 0} {
		t0 += step
		for _, id := range []string{"a", "b"} {
			for _, p := range []keybridge.BudgetPeriod{keybridge.BudgetDay, keybridge.BudgetMonth, ""} {
				got, end := l.budgetKey(id, t0, p)
				if want := budgetKey(id, t0, p); got != want {
					t.Fatalf("at %s, %s %q: %s, want %s", time.UnixMilli(t0).UTC(), id, p, got, want)
				}
				if _, want := period(t0, p); p != "" && end != want {
					t.Fatalf("at %s, %s %q: ends %d, want %d", time.UnixMilli(t0).UTC(), id, p, end, want)
				}
			}
		}
	}
}

// Counts at the bounds, in Redis: a reservation and settlements of
// maxTokens each, many in one millisecond (one TPM entry for all of
// them, past 1e14), under limits of maxLimit and more. Every entry the
// scripts write names its count in digits, and the sums agree with the
// entries, so the window counts down exactly as they leave it.
func TestRedisCountsAtTheBounds(t *testing.T) {
	rdb := needRedis(t)
	l, _ := newRedisLimiter(rdb, LimitsRefuse, nil)
	id, ctx := newKeyID(), context.Background()
	lim := keybridge.Limits{RateLimitRPM: math.MaxInt64, RateLimitTPM: math.MaxInt64, TokenBudget: maxLimit, BudgetPeriod: keybridge.BudgetMonth}
	const n = 200
	var tks []ticket
	for range n {
		tk, d := mustAdmit(t, l, id, lim, math.MaxInt64, t0)
		if !d.ok || tk.reserved != maxTokens {
			t.Fatalf("admit = %+v, %+v; want ok, reserving %d", d, tk, int64(maxTokens))
		}
		tks = append(tks, tk)
	}
	l.async.Store(true) // the settlements queue, to go in one call
	for _, tk := range tks {
		if err := l.settle(ctx, tk, math.MaxInt64, t0); err != nil {
			t.Fatal(err)
		}
	}
	l.async.Store(false)
	l.expire(math.MaxInt64)
	l.flush(ctx)
	if l.down.Load() || counterValue(t, l.m.redisDown) != 0 {
		t.Fatal("Redis taken for down")
	}
	k := limitKeys(id, t0.UnixMilli(), keybridge.BudgetMonth)
	sumOf := func(log string) int64 {
		var sum int64
		for _, m := range rdb.ZRange(ctx, log, 0, -1).Val() {
			c, err := strconv.ParseInt(m[strings.LastIndexByte(m, ':')+1:], 10, 64)
			if err != nil {
				t.Errorf("%s holds %q, not a count in digits", log, m)
			}
			sum += c
		}
		return sum
	}
	want := strconv.FormatInt(n*maxTokens, 10)
	if got, entries := rdb.Get(ctx, k[2]).Val(), sumOf(k[1]); got != want || strconv.FormatInt(entries, 10) != want {
		t.Errorf("TPM sum %s, its entries %d; want %s", got, entries, want)
	}
	if got := rdb.Get(ctx, k[5]).Val(); got != want {
		t.Errorf("budget used %s, want %s", got, want)
	}
	if got := rdb.ZCard(ctx, k[3]).Val(); got != 0 {
		t.Errorf("%d reservations left, want none", got)
	}
	// The sum is made again from the entries when it is gone.
	rdb.Del(ctx, k[2])
	if _, d := mustAdmit(t, l, id, lim, 0, t0.Add(time.Second)); !d.ok || d.tokRemaining != maxLimit-n*maxTokens {
		t.Errorf("admit with the sum made again = %+v, want %d tokens remaining", d, int64(maxLimit-n*maxTokens))
	}
}

// A script that fails on an answering Redis (here a key of the wrong
// type where a counter should be) fails its request, and is no outage:
// not counted, not logged as one, and not answered 503 by "refuse".
func TestRedisScriptErrorIsNoOutage(t *testing.T) {
	rdb := needRedis(t)
	var warns atomic.Int64
	log := slog.New(logCount{slog.NewTextHandler(&bytes.Buffer{}, nil), &warns})
	l, _ := newRedisLimiter(rdb, LimitsRefuse, log)
	id, ctx := newKeyID(), context.Background()
	k := limitKeys(id, t0.UnixMilli(), "")
	rdb.Set(ctx, k[3], "not a sorted set", time.Minute)
	_, _, err := l.admit(ctx, id, keybridge.Limits{RateLimitTPM: 1000}, 10, t0)
	if err == nil || errors.Is(err, errLimitsDown) {
		t.Errorf("admit = %v, want the script's error, not errLimitsDown", err)
	}
	if l.down.Load() || counterValue(t, l.m.redisDown) != 0 || counterValue(t, l.m.redisOutage) != 0 || warns.Load() != 0 {
		t.Errorf("down %v, down counter %v, outage gauge %v, %d warnings: want no outage", l.down.Load(),
			counterValue(t, l.m.redisDown), counterValue(t, l.m.redisOutage), warns.Load())
	}
}

// A settlement that cannot reach Redis takes its reservation back there
// once Redis answers again: the reservation is named, so sending it late
// (or twice) is harmless, and leaving it would hold the key at its limit
// for an hour. Here Redis keeps its data across the outage, as a
// persistent one or one behind a network fault does.
func TestRedisUnreserveWaitsForRedis(t *testing.T) {
	rdb, srv, start := ownRedis(t, "--dir", t.TempDir(), "--dbfilename", "limits.rdb")
	l, _ := newRedisLimiter(rdb, LimitsLocal, nil)
	ctx := context.Background()
	lim := keybridge.Limits{RateLimitTPM: 1000}
	tk, d := mustAdmit(t, l, "k", lim, 1000, t0)
	if !d.ok || tk.local || tk.lease != nil {
		t.Fatalf("admit = %+v, %+v; want ok in Redis, reserving 1000", d, tk)
	}
	if err := rdb.Save(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	srv.Process.Kill()
	srv.Wait()
	if err := l.settle(ctx, tk, 10, t0.Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	if !l.down.Load() {
		t.Fatal("settling with Redis gone: not down")
	}
	start()
	waitBack(t, l)
	tk, d = mustAdmit(t, l, "k", lim, 0, t0.Add(2*time.Second))
	if !d.ok || tk.local || d.tokRemaining != 1000 {
		t.Errorf("admit once Redis is back = %+v, %+v; want ok in Redis with 1000 tokens remaining", d, tk)
	}
	if got := rdb.ZCard(ctx, limitKeys("k", 0, "")[3]).Val(); got != 0 {
		t.Errorf("%d reservations left in Redis, want none", got)
	}
}

// A Redis that takes connections and never answers costs one call its
// timeout; from then on, while it is known down, admissions and
// settlements do not wait on it, and a probe in the background asks it
// again every redisRetry.
func TestRedisDownIsNotWaitedOn(t *testing.T) {
	hole, err := net.Listen("tcp", "127.0.0.1:0") // nothing reads what it takes
	if err != nil {
		t.Fatal(err)
	}
	defer hole.Close()
	rdb := redis.NewClient(&redis.Options{Addr: hole.Addr().String(), MaxRetries: -1, DialerRetries: 1,
		DialTimeout: 200 * time.Millisecond, ReadTimeout: 200 * time.Millisecond})
	defer rdb.Close()
	var calls atomic.Int64
	rdb.AddHook(countHook{func(string) { calls.Add(1) }})
	l, _ := newRedisLimiter(rdb, LimitsLocal, nil)
	ctx := context.Background()
	lim := keybridge.Limits{RateLimitRPM: 1000, RateLimitTPM: 100000}
	start := time.Now()
	if tk, d := mustAdmit(t, l, "k", lim, 10, t0); !d.ok || !tk.local || !l.down.Load() {
		t.Fatalf("first admit = %+v, %+v, down %v; want ok locally, Redis down", d, tk, l.down.Load())
	}
	first := time.Since(start)
	start = time.Now()
	const n = 50
	for range n {
		tk, d := mustAdmit(t, l, "k", lim, 10, t0)
		if !d.ok || !tk.local {
			t.Fatalf("admit with Redis down = %+v, %+v; want ok locally", d, tk)
		}
		l.settle(ctx, tk, 5, t0)
	}
	if took := time.Since(start); took > 100*time.Millisecond {
		t.Errorf("%d admissions and settlements with Redis known down took %v (the first %v), want no wait on Redis", n, took, first)
	}
	// The probes: one call every redisRetry at most, none of them a
	// request's.
	time.Sleep(2 * redisRetry)
	mustAdmit(t, l, "k", lim, 10, t0)
	if got := calls.Load(); got > 4 {
		t.Errorf("%d calls to Redis, want the first admission's and a probe or two", got)
	}
	if got := counterValue(t, l.m.redisDown); got != n+2 {
		t.Errorf("redis down counter = %v, want %d: every admission made without Redis (local tickets settle locally)", got, n+2)
	}
}

// An admission whose answer is lost (Redis ran the script, and the reply
// never came) leaves nothing of itself in Redis once Redis answers again:
// neither its reservation, which would hold the key's tokens for
// reserveTTL, nor the tokens of the lease it was granted and never knew.
func TestRedisLostAnswerLeavesNothing(t *testing.T) {
	rdb, shared := needRedis(t), testRedis(t) // a client of its own to hook, one to look
	var lose atomic.Bool
	rdb.AddHook(loseHook{&lose})
	l, _ := newRedisLimiter(rdb, LimitsLocal, nil)
	ctx := context.Background()
	id := newKeyID()
	lim := keybridge.Limits{RateLimitTPM: 1_000_000} // far from it: a lease is granted
	k := limitKeys(id, t0.UnixMilli(), "")

	lose.Store(true)
	tk, d := mustAdmit(t, l, id, lim, 1000, t0)
	if !d.ok || !tk.local || !l.down.Load() {
		t.Fatalf("admit whose answer was lost = %+v, %+v, down %v; want ok in process, Redis taken for down", d, tk, l.down.Load())
	}
	if got := shared.ZRange(ctx, k[3], 0, -1).Val(); len(got) != 2 {
		t.Fatalf("reservations in Redis after the lost answer = %v, want 2: the request's and its lease's", got)
	}
	lose.Store(false)
	waitBack(t, l)
	if _, d := mustAdmit(t, l, id, lim, 0, t0.Add(time.Second)); !d.ok || d.tokRemaining != lim.RateLimitTPM {
		t.Errorf("admit once Redis answers = %+v, want ok with all %d tokens remaining", d, lim.RateLimitTPM)
	}
	if got := shared.ZRange(ctx, k[3], 0, -1).Val(); len(got) != 0 {
		t.Errorf("reservations left in Redis = %v, want none", got)
	}
	if got := shared.Get(ctx, k[4]).Val(); got != "" && got != "0" {
		t.Errorf("reserved sum in Redis = %q, want none", got)
	}
}

// loseHook, while on, lets script calls run and then reports their
// answers lost, as a read that timed out.
type loseHook struct{ on *atomic.Bool }

func (h loseHook) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h loseHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		if err == nil && h.on.Load() && strings.HasPrefix(cmd.Name(), "eval") {
			err = &net.OpError{Op: "read", Net: "tcp", Err: os.ErrDeadlineExceeded}
			cmd.SetErr(err)
		}
		return err
	}
}
func (h loseHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// A key's limits, changed, and a WebSocket's charge, under each limiter:
// neither leaves capacity held that the key's next requests are refused
// for. In Redis, a lease granted under the old limits goes back with the
// first admission under the new ones, and a charge takes no lease.
func TestLimitsChangedAndChargesHoldNothing(t *testing.T) {
	for name, newLimiter := range limiters(t) {
		t.Run(name, func(t *testing.T) {
			l, id, ctx := newLimiter(), newKeyID(), context.Background()
			old := keybridge.Limits{RateLimitRPM: 1000}
			for i := range 4 {
				mustAdmit(t, l, id, old, 0, t0.Add(time.Duration(i)*time.Millisecond))
			}
			lim := keybridge.Limits{RateLimitRPM: 20}
			at := t0.Add(10 * time.Millisecond)
			// A later response of a WebSocket, charged.
			if _, d, err := l.admit(ctx, id, chargeOnly(lim), 0, at); err != nil || !d.ok {
				t.Fatalf("charge = %+v, %v", d, err)
			}
			for i := range 15 {
				_, d := mustAdmit(t, l, id, lim, 0, at.Add(time.Duration(i)*time.Millisecond))
				if !d.ok || d.rpmRemaining != int64(14-i) {
					t.Fatalf("request %d under the new limit of 20 (5 counted before) = %+v, want %d remaining", i+1, d, 14-i)
				}
			}
			_, d := mustAdmit(t, l, id, lim, 0, at.Add(20*time.Millisecond))
			if d.ok || d.retryAfter != limitWindow-30*time.Millisecond {
				t.Errorf("request 21 = %+v, want refused until the first leaves the window", d)
			}
		})
	}
}
