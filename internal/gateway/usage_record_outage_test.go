package gateway

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store"
	"github.com/keybridge/keybridge/internal/store/postgres"
	"github.com/keybridge/keybridge/internal/store/storetest"
	"github.com/keybridge/keybridge/internal/testsupport"
)

// recLog is a log the recorder writes to, from any goroutine.
type recLog struct{ testsupport.SyncBuffer }

func (l *recLog) logger() *slog.Logger { return slog.New(slog.NewTextHandler(l, nil)) }

// count is how many times s is in the log.
func (l *recLog) count(s string) int { return strings.Count(l.String(), s) }

// errConnRefused is what a write gets from a database whose server is
// down: its connection refused.
var errConnRefused = fmt.Errorf("connect: %w", &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED})

// unreachableStore is a real store whose writes of usage and of
// last_used_at fail, while down is set, as they do when the database's
// server cannot be reached. loseAnswer makes the next InsertUsage commit
// and then fail the same way, as when the connection drops after the
// commit was sent. inserts counts the InsertUsage calls.
type unreachableStore struct {
	store.Store
	down       atomic.Bool
	loseAnswer atomic.Bool
	silent     atomic.Bool // takes writes and never answers them
	inserts    atomic.Int64
}

func (s *unreachableStore) InsertUsage(ctx context.Context, batch []keybridge.Usage) error {
	s.inserts.Add(1)
	if s.down.Load() {
		return errConnRefused
	}
	if s.silent.Load() {
		<-ctx.Done()
		return ctx.Err()
	}
	err := s.Store.InsertUsage(ctx, batch)
	if err == nil && s.loseAnswer.CompareAndSwap(true, false) {
		return errConnRefused
	}
	return err
}

func (s *unreachableStore) TouchProviderKeys(ctx context.Context, m map[string]time.Time) error {
	if s.down.Load() {
		return errConnRefused
	}
	return s.Store.TouchProviderKeys(ctx, m)
}

func (s *unreachableStore) TouchCredentials(ctx context.Context, m map[string]time.Time) error {
	if s.down.Load() {
		return errConnRefused
	}
	return s.Store.TouchCredentials(ctx, m)
}

// cutProxy forwards TCP connections to a server until it is cut: then
// it closes every connection it carries and refuses new ones, as a
// database server that went down does, until it is joined again, on the
// same address.
type cutProxy struct {
	target string
	addr   string

	mu    sync.Mutex
	ln    net.Listener
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

func newCutProxy(t *testing.T, target string) *cutProxy {
	t.Helper()
	p := &cutProxy{target: target, addr: "127.0.0.1:0", conns: map[net.Conn]struct{}{}}
	if err := p.join(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.cut()
		p.wg.Wait()
	})
	return p
}

// join listens on the proxy's address again.
func (p *cutProxy) join() error {
	ln, err := net.Listen("tcp", p.addr)
	if err != nil {
		return err
	}
	p.mu.Lock()
	p.ln, p.addr = ln, ln.Addr().String()
	p.mu.Unlock()
	p.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", p.target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			if p.ln != ln { // cut meanwhile
				p.mu.Unlock()
				c.Close()
				up.Close()
				return
			}
			p.conns[c], p.conns[up] = struct{}{}, struct{}{}
			p.mu.Unlock()
			for _, pair := range [][2]net.Conn{{c, up}, {up, c}} {
				p.wg.Go(func() {
					io.Copy(pair[0], pair[1])
					pair[0].Close()
					pair[1].Close()
				})
			}
		}
	})
	return nil
}

// cut closes the listener and every connection.
func (p *cutProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	for c := range p.conns {
		c.Close()
	}
	clear(p.conns)
}

// outageStores are real stores that a test can make unreachable and
// reachable again: SQLite behind unreachableStore, and, when
// KEYBRIDGE_TEST_POSTGRES_URL is set, PostgreSQL behind a cutProxy, whose
// outage is a real one: connections dropped, new ones refused.
func outageStores() []struct {
	name string
	open func(t *testing.T) (st store.Store, down func(bool))
} {
	return []struct {
		name string
		open func(t *testing.T) (st store.Store, down func(bool))
	}{
		{"sqlite", func(t *testing.T) (store.Store, func(bool)) {
			st := &unreachableStore{Store: storetest.SQLite(t)}
			return st, st.down.Store
		}},
		{"postgres", func(t *testing.T) (store.Store, func(bool)) {
			u, err := url.Parse(storetest.PostgresURL(t))
			if err != nil {
				t.Fatal(err)
			}
			p := newCutProxy(t, u.Host)
			u.Host = p.addr
			st, err := postgres.Open(context.Background(), u.String())
			if err != nil {
				t.Fatalf("open postgres through a proxy: %v", err)
			}
			t.Cleanup(func() { st.Close() })
			return st, func(down bool) {
				t.Helper()
				if down {
					p.cut()
				} else if err := p.join(); err != nil {
					t.Fatalf("listen on %s again: %v", p.addr, err)
				}
			}
		}},
	}
}

// An outage of the database longer than recorderAttempts flushes loses
// only the rows the queue's bound forces out: every row queued is kept
// and, once the database is back, written exactly once; last_used_at
// too. The outage is logged when it starts and when it ends, not at every
// flush.
func TestRecorderKeepsRowsThroughAnOutage(t *testing.T) {
	for _, e := range outageStores() {
		t.Run(e.name, func(t *testing.T) {
			ctx := context.Background()
			st, down := e.open(t)
			k, c, provider := recFixtures(t, st)
			var log recLog
			const size, perTick, ticks = 1000, 50, 3 * recorderAttempts
			r := newRecorder(st, log.logger(), size)

			for _, u := range recRows(perTick, "before") {
				r.add(u)
			}
			r.flushAll(ctx)
			down(true)
			var last time.Time
			for i := range ticks {
				for _, u := range recRows(perTick, "during") {
					r.add(u)
				}
				last = recStart.Add(time.Duration(i) * time.Minute)
				r.touchProviderKey(k.ID, last)
				r.touchCredential(c.ID, last)
				r.flushAll(ctx)
				r.flushTouches(ctx)
			}
			// The first tick's rows are the batch kept for retry; the
			// queue holds size more; the rest found it full.
			kept := perTick + size
			if got := recMetric(t, r, "keybridge_usage_queue_depth"); got != float64(kept) {
				t.Errorf("queue depth after %d flushes with the database down = %v, want %d", ticks, got, kept)
			}
			if got, want := recMetric(t, r, "keybridge_usage_dropped_total"), float64(ticks*perTick-kept); got != want {
				t.Errorf("dropped with the database down = %v, want %v: only what the queue could not hold", got, want)
			}
			if got := log.count("database unavailable"); got != 1 {
				t.Errorf("the outage was logged %d times over %d flushes, want once:\n%s", got, ticks, log.String())
			}
			if got := log.count("level=WARN"); got != 1 {
				t.Errorf("%d warnings over an outage of %d flushes, want 1:\n%s", got, ticks, log.String())
			}

			down(false)
			r.flushAll(ctx)
			r.flushTouches(ctx)
			if got := recRequests(t, st, "during"); got != int64(kept) {
				t.Errorf("stored requests of the outage = %d, want the %d kept, each once", got, kept)
			}
			if got := recRequests(t, st, "before"); got != perTick {
				t.Errorf("stored requests before the outage = %d, want %d", got, perTick)
			}
			if got := recMetric(t, r, "keybridge_usage_written_total"); got != float64(perTick+kept) {
				t.Errorf("keybridge_usage_written_total = %v, want %d", got, perTick+kept)
			}
			if got := recMetric(t, r, "keybridge_usage_queue_depth"); got != 0 {
				t.Errorf("queue depth once the database is back = %v, want 0", got)
			}
			if got, want := recMetric(t, r, "keybridge_usage_dropped_total"), float64(ticks*perTick-kept); got != want {
				t.Errorf("dropped once the database is back = %v, want still %v", got, want)
			}
			if got, want := log.count("database available again"), 1; got != want {
				t.Errorf("the recovery was logged %d times, want %d:\n%s", got, want, log.String())
			}
			if want := fmt.Sprintf("dropped_meanwhile=%d", ticks*perTick-kept); log.count(want) != 1 {
				t.Errorf("the recovery's log does not say %s:\n%s", want, log.String())
			}
			key, cred := recLastUsed(t, st, provider, k, c)
			if key == nil || !key.Equal(last) || cred == nil || !cred.Equal(last) {
				t.Errorf("last_used_at after the outage = %v, %v; want %v", key, cred, last)
			}

			// A second outage is logged again.
			down(true)
			r.add(recRows(1, "again")[0])
			r.flushAll(ctx)
			down(false)
			r.flushAll(ctx)
			if got := log.count("database unavailable"); got != 2 {
				t.Errorf("two outages logged %d times, want 2:\n%s", got, log.String())
			}
			if got := recRequests(t, st, "again"); got != 1 {
				t.Errorf("stored requests of the second outage = %d, want 1", got)
			}
		})
	}
}

// A batch whose commit landed but whose answer was lost with the
// connection is written again once the database answers; that write
// conflicts, and the rows count as written, once, not as dropped.
func TestRecorderLostAnswerCountsOnce(t *testing.T) {
	ctx := context.Background()
	st := &unreachableStore{Store: storetest.SQLite(t)}
	r := newRecorder(st, nil, 100)
	for _, u := range recRows(7, "good") {
		r.add(u)
	}
	st.loseAnswer.Store(true)
	if _, err := r.flush(ctx); !store.Unavailable(err) {
		t.Fatalf("flush whose answer was lost = %v, want the database unavailable", err)
	}
	if n, err := r.flush(ctx); n != 7 || err != nil {
		t.Fatalf("flush of the batch again = %d, %v; want its 7 rows, written", n, err)
	}
	checkRecorder(t, "after the batch was written again", r, st, recWant{stored: 7, written: 7})
}

// A database that takes a write and never answers is one that cannot be
// reached: the write gives up after the recorder's timeout, and the batch
// is kept and written once the database answers, not refused and dropped.
func TestRecorderWriteTimesOut(t *testing.T) {
	ctx := context.Background()
	st := &unreachableStore{Store: storetest.SQLite(t)}
	var log recLog
	r := newRecorder(st, log.logger(), 100)
	r.writeTimeout = 20 * time.Millisecond
	for _, u := range recRows(5, "good") {
		r.add(u)
	}
	st.silent.Store(true)
	for range recorderAttempts + 1 {
		if _, err := r.flush(ctx); !store.Unavailable(err) {
			t.Fatalf("flush to a database that does not answer = %v, want the database unavailable", err)
		}
	}
	checkRecorder(t, "while the database does not answer", r, st, recWant{depth: 5})
	st.silent.Store(false)
	if n, err := r.flush(ctx); n != 5 || err != nil {
		t.Fatalf("flush once the database answers = %d, %v; want the 5 kept rows", n, err)
	}
	checkRecorder(t, "once it answers", r, st, recWant{stored: 5, written: 5})
	if log.count("database unavailable") != 1 || log.count("database available again") != 1 {
		t.Errorf("the silence was not logged once as it began and once as it ended:\n%s", log.String())
	}
}

// refusedModel returns a model whose usage rows the database refuses:
// in PostgreSQL one with a NUL, which text cannot hold (the usage totals
// keep models as text); in SQLite, which stores it, one a trigger on
// those totals refuses. The row is bad, not the database.
func refusedModel(t *testing.T, st store.Store) string {
	t.Helper()
	raw := storetest.RawOf(t, st)
	if raw.Postgres {
		return "poison\x00"
	}
	stmt := `CREATE TRIGGER refuse_model BEFORE INSERT ON usage_rollup WHEN NEW.key = 'poison' BEGIN SELECT RAISE(ABORT, 'model refused'); END`
	if _, err := raw.DB.Exec(stmt); err != nil {
		t.Fatalf("%s: %v", stmt, err)
	}
	return "poison"
}

// A batch the database refuses is still dropped after recorderAttempts
// flushes, counted and logged, so that it cannot hold usage up; the rows
// of it the database does not refuse are found by halves and written.
func TestRecorderDropsRefusedRows(t *testing.T) {
	for _, e := range storetest.Engines() {
		t.Run(e.Name, func(t *testing.T) {
			ctx := context.Background()
			st := &recStore{Store: e.New(t)}
			poison := refusedModel(t, st.Store)
			var log recLog
			r := newRecorder(st, log.logger(), 1000)
			rows := recRows(40, "good")
			rows[17].Model = poison
			for _, u := range rows {
				r.add(u)
			}
			for i := range recorderAttempts - 1 {
				if _, err := r.flush(ctx); err == nil {
					t.Fatalf("flush %d of a batch holding a refused row = nil, want an error", i)
				}
			}
			if got := recMetric(t, r, "keybridge_usage_queue_depth"); got != 40 {
				t.Fatalf("queue depth after %d refusals = %v, want the 40 rows kept", recorderAttempts-1, got)
			}
			before := len(st.insertSizes())
			if _, err := r.flush(ctx); err == nil {
				t.Fatal("last flush of a batch holding a refused row = nil, want its error")
			}
			checkRecorder(t, "after giving up on the refused row", r, st, recWant{stored: 39, written: 39, dropped: 1})
			// 40 rows: 2 writes per halving, 6 halvings at most.
			if got := len(st.insertSizes()) - before; got > 2*6+1 {
				t.Errorf("the refused row was found in %d writes, want at most %d", got, 2*6+1)
			}
			if got := log.count("rows dropped, the database refused them"); got != 1 || log.count("rows=1 written=39") != 1 {
				t.Errorf("the drop was logged %d times, want once with rows=1 written=39:\n%s", got, log.String())
			}
			if got := log.count("level=WARN"); got != 1 {
				t.Errorf("%d warnings for one refused batch, want 1 (its first refusal):\n%s", got, log.String())
			}
			if got := log.count("database unavailable"); got != 0 {
				t.Errorf("a refusal was logged as an outage:\n%s", log.String())
			}

			// Refused as a whole: two more writes, then it is dropped.
			for _, u := range recRows(30, poison) {
				r.add(u)
			}
			before = len(st.insertSizes())
			for range recorderAttempts {
				r.flush(ctx)
			}
			if got := len(st.insertSizes()) - before; got != recorderAttempts+2 {
				t.Errorf("a batch refused as a whole took %d writes, want %d", got, recorderAttempts+2)
			}
			if got := recMetric(t, r, "keybridge_usage_dropped_total"); got != 31 {
				t.Errorf("dropped = %v, want 31", got)
			}
			r.add(recRows(1, "after")[0])
			r.flushAll(ctx)
			if got := recRequests(t, st, "after"); got != 1 {
				t.Errorf("stored requests after the drops = %d, want 1", got)
			}
		})
	}
}

// An outage that cuts the search for a refused row short loses nothing:
// the halves are kept as they were written, so the one whose commit
// landed unheard is known as written when it is written again, and the
// other is still written.
func TestRecorderSalvageCutByAnOutage(t *testing.T) {
	ctx := context.Background()
	st := &unreachableStore{Store: storetest.SQLite(t)}
	poison := refusedModel(t, st.Store)
	var log recLog
	r := newRecorder(st, log.logger(), 100)
	rows := recRows(40, "good")
	rows[27].Model = poison
	for _, u := range rows {
		r.add(u)
	}
	for range recorderAttempts - 1 {
		r.flush(ctx)
	}
	// The last refusal: the first half is written, its answer lost.
	st.loseAnswer.Store(true)
	r.flush(ctx)
	if st.loseAnswer.Load() {
		t.Fatal("no half of the refused batch was written")
	}
	if got := recMetric(t, r, "keybridge_usage_queue_depth"); got != 40 {
		t.Errorf("queue depth after the outage cut the search short = %v, want the 40 rows kept", got)
	}
	for range recorderAttempts + 1 {
		r.flushAll(ctx)
	}
	checkRecorder(t, "once the database is back", r, st, recWant{stored: 39, written: 39, dropped: 1})
	if log.count("database unavailable") != 1 || log.count("database available again") != 1 {
		t.Errorf("the outage was not logged once as it began and once as it ended:\n%s", log.String())
	}
}

// While a batch waits to be retried, a full queue does not make run
// write it again at every row: only the tick retries it.
func TestRecorderRetriesOnTheTickOnly(t *testing.T) {
	st := &unreachableStore{Store: storetest.SQLite(t)}
	st.down.Store(true)
	r := newRecorder(st, nil, 5000)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- r.run(ctx) }()
	rows := recRows(2*recorderBatch+50, "m")
	for i, u := range rows {
		r.add(u)
		if i < 2*recorderBatch {
			continue
		}
		// Every row past two batches asks for a flush: wait until run
		// has heard it.
		for deadline := time.Now().Add(10 * time.Second); len(r.kick) > 0; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("run did not take a kick in 10 s")
			}
		}
	}
	cancel()
	<-done
	// A write at the first full batch, one per tick, one at shutdown.
	ticks := int64(time.Since(start) / recorderEvery)
	if got, most := st.inserts.Load(), 2+ticks; got > most {
		t.Errorf("%d writes of usage with the database down over %d ticks, want at most %d", got, ticks, most)
	}
}

// recWant is what a test expects of a recorder once it is done: the
// requests of model "good" the store holds, and the written, dropped and
// queue-depth metrics.
type recWant struct {
	stored                  int64
	written, dropped, depth float64
}

// checkRecorder compares r and st with w, when naming the moment.
func checkRecorder(t *testing.T, when string, r *recorder, st store.Store, w recWant) {
	t.Helper()
	if got := recRequests(t, st, "good"); got != w.stored {
		t.Errorf("%s: stored requests = %d, want %d, each once", when, got, w.stored)
	}
	for _, m := range []struct {
		name string
		want float64
	}{{"keybridge_usage_written_total", w.written}, {"keybridge_usage_dropped_total", w.dropped}, {"keybridge_usage_queue_depth", w.depth}} {
		if got := recMetric(t, r, m.name); got != m.want {
			t.Errorf("%s: %s = %v, want %v", when, m.name, got, m.want)
		}
	}
}
