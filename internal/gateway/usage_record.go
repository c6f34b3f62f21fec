package gateway

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store"
)

const (
	// recorderQueue is the queue's size when newRecorder is given none:
	// at about 250 bytes a row, a few MiB, and several seconds of a busy
	// gateway while the database is slow.
	recorderQueue = 10000
	// recorderBatch rows at most go in one InsertUsage; that many queued
	// start a flush before the tick.
	recorderBatch = 500
	// recorderEvery is how often queued rows and touches are written.
	recorderEvery = time.Second
	// recorderAttempts bounds the writes of a batch the database
	// refuses: past it the batch is split to find the rows it refuses,
	// which are dropped and counted, so that one bad row cannot hold
	// usage up for ever. A database that cannot be reached refuses
	// nothing: its batch is kept and written once it is back, however
	// long that takes; the queue's bound keeps memory bounded.
	recorderAttempts = 10
	// recorderDrain bounds the last flush once run's context ends.
	recorderDrain = 5 * time.Second
	// recorderWriteTimeout bounds one write of usage: a database that
	// takes the connection but does not answer is one that cannot be
	// reached, and its batch is kept, instead of holding the recorder
	// until TCP gives up.
	recorderWriteTimeout = 30 * time.Second
)

// recorder writes usage rows in batches off the request path through a
// bounded queue; when the queue is full the row is dropped and counted,
// never blocking the request (SPEC §7.7). It also batches the
// last_used_at of upstream keys and personal credentials.
type recorder struct {
	st  store.Store
	log *slog.Logger

	queue chan keybridge.Usage
	// kick asks run for a flush before the tick: a full batch is queued.
	kick chan struct{}

	// retry holds the batches whose InsertUsage failed (and the one
	// being written), written again first one first, before anything
	// queued, each exactly as it was tried: a batch whose commit landed
	// unheard is known as written (a conflict) only when written again
	// whole. attempts counts the times the database refused retry[0]
	// (not those it could not be reached). down is when the database
	// became unavailable to writes, zero while it answers; downLost is
	// lost then. All belong to the flushing goroutine; retried mirrors
	// the rows in retry for the gauge.
	retry    [][]keybridge.Usage
	attempts int
	retried  atomic.Int64
	down     time.Time
	downLost int64
	// lost counts the rows dropped, as dropped does, for the logs and
	// for drain to read.
	lost atomic.Int64

	mu           sync.Mutex // guards the touch maps
	providerKeys map[string]time.Time
	credentials  map[string]time.Time

	depth   prometheus.GaugeFunc
	dropped prometheus.Counter
	// written counts rows whose batch committed: once it counts a row,
	// the row is durable and is never written again.
	written prometheus.Counter
	// writeTimeout is recorderWriteTimeout; tests shorten it.
	writeTimeout time.Duration
}

// newRecorder returns a recorder writing to st with a queue of size rows
// (size <= 0: 10,000). Nothing is written until run runs.
func newRecorder(st store.Store, log *slog.Logger, size int) *recorder {
	if size <= 0 {
		size = recorderQueue
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &recorder{
		st:           st,
		log:          log,
		queue:        make(chan keybridge.Usage, size),
		writeTimeout: recorderWriteTimeout,
		kick:         make(chan struct{}, 1),
		providerKeys: map[string]time.Time{},
		credentials:  map[string]time.Time{},
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "keybridge_usage_dropped_total",
			Help: "Usage rows lost: the queue was full, the database refused them, or they were left at shutdown.",
		}),
		written: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "keybridge_usage_written_total",
			Help: "Usage rows written: counted once the batch holding them committed.",
		}),
	}
	// A function rather than a gauge set on every add: the request path
	// pays nothing for it.
	r.depth = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "keybridge_usage_queue_depth",
		Help: "Usage rows waiting to be written.",
	}, func() float64 { return float64(len(r.queue)) + float64(r.retried.Load()) })
	return r
}

// collectors are the recorder's metrics, for a prometheus.Registerer.
func (r *recorder) collectors() []prometheus.Collector {
	return []prometheus.Collector{r.depth, r.dropped, r.written}
}

// add queues u. It never blocks: with the queue full, u is dropped and
// counted. u.Time is the caller's to set.
func (r *recorder) add(u keybridge.Usage) {
	select {
	case r.queue <- u:
	default:
		r.drop(1)
		return
	}
	if len(r.queue) >= recorderBatch {
		select {
		case r.kick <- struct{}{}:
		default:
		}
	}
}

// drop counts n rows lost.
func (r *recorder) drop(n int) {
	r.lost.Add(int64(n))
	r.dropped.Add(float64(n))
}

// touchProviderKey notes that the upstream key id was used at t.
func (r *recorder) touchProviderKey(id string, t time.Time) { r.touch(&r.providerKeys, id, t) }

// touchCredential notes that the personal credential id was used at t.
func (r *recorder) touchCredential(id string, t time.Time) { r.touch(&r.credentials, id, t) }

// touch keeps the latest time per id in *m, which flushTouches replaces:
// it is read under the lock.
func (r *recorder) touch(m *map[string]time.Time, id string, t time.Time) {
	if id == "" {
		return
	}
	r.mu.Lock()
	if t.After((*m)[id]) {
		(*m)[id] = t
	}
	r.mu.Unlock()
}

// run writes what is queued every second, or as soon as a full batch is
// queued, until ctx ends; then it writes what is still queued, for at
// most a few seconds. It returns an error only when rows were lost at
// that last flush.
func (r *recorder) run(ctx context.Context) error {
	tick := time.NewTicker(recorderEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return r.drain(context.WithoutCancel(ctx))
		case <-tick.C:
			r.flushAll(ctx)
			r.flushTouches(ctx)
		case <-r.kick:
			// A batch waiting to be retried waits for the tick: a full
			// queue must not make a database that is down or refusing
			// it be tried again at the pace of requests.
			if len(r.retry) == 0 {
				r.flushAll(ctx)
			}
		}
	}
}

// flushAll flushes until the queue is empty, so that a backlog (the one
// an outage of the database left, say) does not wait for the next tick
// batch by batch; it stops at the first failure, leaving the rest for
// the next tick.
func (r *recorder) flushAll(ctx context.Context) {
	for {
		retried := len(r.retry) > 0
		n, err := r.flush(ctx)
		if err != nil || n == 0 || !retried && n < recorderBatch {
			return
		}
	}
}

// flush makes one InsertUsage of at most a batch: the batch that failed
// last time, or what is queued. It returns how many rows it tried, and
// the error of their write.
//
// A batch the database cannot be reached for is kept, without limit:
// it is written again by the next flushes until the database answers,
// while new rows queue up to the queue's bound. A batch it refuses is
// written again up to recorderAttempts times, then split to save the
// rows it does not refuse (salvage).
func (r *recorder) flush(ctx context.Context) (int, error) {
	if len(r.retry) == 0 {
		batch := make([]keybridge.Usage, 0, min(len(r.queue), recorderBatch))
	fill:
		for len(batch) < recorderBatch {
			select {
			case u := <-r.queue:
				batch = append(batch, u)
			default:
				break fill
			}
		}
		if len(batch) == 0 {
			return 0, nil
		}
		r.setRetry([][]keybridge.Usage{batch})
	}
	batch := r.retry[0]
	err := r.write(ctx, batch)
	switch {
	case err == nil:
		r.replaceFirst(nil)
		r.answered(ctx)
		return len(batch), nil
	case ctx.Err() != nil:
		// Cut off by the shutdown, not refused: drain writes it.
		return len(batch), err
	case store.Unavailable(err):
		r.unavailable(ctx, err)
		return len(batch), err
	}
	r.answered(ctx)
	r.attempts++
	if r.attempts < recorderAttempts {
		if r.attempts == 1 {
			r.log.WarnContext(ctx, "usage: the database refused a batch, will retry", "rows", len(batch), "err", err)
		}
		return len(batch), err
	}
	attempts := r.attempts
	dropped, rest, uerr := r.salvage(ctx, batch)
	r.replaceFirst(rest)
	if dropped > 0 {
		r.drop(dropped)
		kept := 0
		for _, b := range rest {
			kept += len(b)
		}
		r.log.ErrorContext(ctx, "usage: rows dropped, the database refused them",
			"rows", dropped, "written", len(batch)-dropped-kept, "attempts", attempts, "err", err)
	}
	if store.Unavailable(uerr) {
		// Cut off by an outage: rest is kept, and tried afresh.
		r.unavailable(ctx, uerr)
	}
	return len(batch), err
}

// write makes one InsertUsage of rows and counts them once written. A
// conflict means they were: InsertUsage named them by the ids it gave
// them at a first try, whose commit landed although its answer was lost.
func (r *recorder) write(ctx context.Context, rows []keybridge.Usage) error {
	wctx, cancel := context.WithTimeout(ctx, r.writeTimeout)
	defer cancel()
	err := r.st.InsertUsage(wctx, rows)
	if err != nil && ctx.Err() == nil && wctx.Err() != nil {
		// Unanswered, not refused: the write may even land later, and
		// then the batch written again conflicts, as a lost answer does.
		err = keybridge.Errorf(keybridge.EUnavailable, "usage: the database did not answer within %v: %v", r.writeTimeout, err)
	}
	if keybridge.IsCode(err, keybridge.EConflict) {
		err = nil
	}
	if err == nil {
		r.written.Add(float64(len(rows)))
	}
	return err
}

// salvage writes rows, a batch the database keeps refusing, by halves,
// so that a row it refuses costs as few others as can be found cheaply:
// a half refused is split again while its other half is written, and
// dropped when it is one row or when both halves are refused (then the
// refusal is not one row's). One bad row in 500 costs itself and about
// twenty writes. It returns
// how many rows it dropped and, when the database could not be reached
// meanwhile or ctx ended, the batches it left unwritten, with that
// error: each as it was tried, for the commit of the last one may have
// landed unheard.
func (r *recorder) salvage(ctx context.Context, rows []keybridge.Usage) (dropped int, rest [][]keybridge.Usage, err error) {
	if len(rows) < 2 {
		return len(rows), nil, nil
	}
	halves := [2][]keybridge.Usage{rows[:len(rows)/2], rows[len(rows)/2:]}
	var refused [2]bool
	for i, h := range halves {
		err := r.write(ctx, h)
		if err != nil && (ctx.Err() != nil || store.Unavailable(err)) {
			if i == 0 || refused[0] {
				return 0, halves[:], err
			}
			return 0, halves[1:], err
		}
		refused[i] = err != nil
	}
	switch {
	case refused[0] && refused[1]:
		return len(rows), nil, nil
	case refused[0]:
		return r.salvage(ctx, halves[0])
	case refused[1]:
		return r.salvage(ctx, halves[1])
	}
	return 0, nil, nil
}

// setRetry makes batches the ones written before anything queued, the
// first one's count of refusals starting afresh.
func (r *recorder) setRetry(batches [][]keybridge.Usage) {
	r.retry, r.attempts = batches, 0
	var n int64
	for _, b := range batches {
		n += int64(len(b))
	}
	r.retried.Store(n)
}

// replaceFirst puts the batches rest (none: nil) where retry[0] was,
// once it is written or given up on.
func (r *recorder) replaceFirst(rest [][]keybridge.Usage) {
	r.setRetry(append(rest, r.retry[1:]...))
}

// unavailable notes that the database could not be reached for a write
// of usage: logged once per outage, not at every flush that retries.
func (r *recorder) unavailable(ctx context.Context, err error) {
	if !r.down.IsZero() {
		return
	}
	r.down, r.downLost = time.Now(), r.lost.Load()
	r.log.WarnContext(ctx, "usage: database unavailable, rows are kept and written once it is back",
		"queued", int64(len(r.queue))+r.retried.Load(), "err", err)
}

// answered notes that the database answered a write of usage, ending
// an outage if there was one.
func (r *recorder) answered(ctx context.Context) {
	if r.down.IsZero() {
		return
	}
	r.log.InfoContext(ctx, "usage: database available again, writing the rows kept",
		"down", time.Since(r.down).Round(time.Millisecond).String(), "queued", int64(len(r.queue))+r.retried.Load(),
		"dropped_meanwhile", r.lost.Load()-r.downLost)
	r.down = time.Time{}
}

// flushTouches writes the last_used_at times noted since the last call.
// Times that fail go back, to be written with the next ones; they are at
// most one per key.
func (r *recorder) flushTouches(ctx context.Context) {
	for _, t := range []struct {
		m     *map[string]time.Time
		write func(context.Context, map[string]time.Time) error
		what  string
	}{
		{&r.providerKeys, r.st.TouchProviderKeys, "upstream keys"},
		{&r.credentials, r.st.TouchCredentials, "personal credentials"},
	} {
		r.mu.Lock()
		pending := takeMap(t.m)
		r.mu.Unlock()
		if pending == nil {
			continue
		}
		if err := t.write(ctx, pending); err != nil {
			// An outage is logged once, by the usage rows.
			if r.down.IsZero() || !store.Unavailable(err) {
				r.log.WarnContext(ctx, "usage: write last_used_at of "+t.what, "keys", len(pending), "err", err)
			}
			for id, at := range pending {
				r.touch(t.m, id, at)
			}
		}
	}
}

// drain is run's last flush: everything queued, each batch tried once
// more at most, within recorderDrain; a database that cannot be reached
// is not waited for. What is left is dropped and counted.
func (r *recorder) drain(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, recorderDrain)
	defer cancel()
	lost := r.lost.Load()
	var last error
	for ctx.Err() == nil {
		n, err := r.flush(ctx)
		if n == 0 {
			break
		}
		if err == nil {
			continue
		}
		last = err
		if store.Unavailable(err) {
			break
		}
		// Refused, and kept for another try (not given up on and
		// salvaged): there is no time for it.
		if r.attempts > 0 {
			r.drop(len(r.retry[0]))
			r.replaceFirst(nil)
		}
	}
	r.drop(int(r.retried.Load()))
	r.setRetry(nil)
	r.flushTouches(ctx)
	r.drop(len(r.queue))
	if lost := r.lost.Load() - lost; lost > 0 {
		return fmt.Errorf("usage: %d rows not written at shutdown: %w", lost, cmpErr(last, ctx.Err()))
	}
	return nil
}

// cmpErr is the first error that is not nil.
func cmpErr(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}
