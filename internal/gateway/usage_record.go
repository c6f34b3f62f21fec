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
	// recorderAttempts bounds the writes of one failed batch: past it
	// the batch is dropped and counted, so an outage of the database
	// costs rows, never unbounded memory.
	recorderAttempts = 10
	// recorderDrain bounds the last flush once run's context ends.
	recorderDrain = 5 * time.Second
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

	// retry is a batch whose InsertUsage failed, written again first by
	// the next flush; attempts counts its failures. Both belong to the
	// flushing goroutine; retried mirrors len(retry) for the gauge.
	retry    []keybridge.Usage
	attempts int
	retried  atomic.Int64

	mu           sync.Mutex // guards the touch maps
	providerKeys map[string]time.Time
	credentials  map[string]time.Time

	depth   prometheus.GaugeFunc
	dropped prometheus.Counter
	// written counts rows whose batch committed: once it counts a row,
	// the row is durable and is never written again.
	written prometheus.Counter
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
		kick:         make(chan struct{}, 1),
		providerKeys: map[string]time.Time{},
		credentials:  map[string]time.Time{},
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "keybridge_usage_dropped_total",
			Help: "Usage rows lost: the queue was full, or the database refused them too many times.",
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
		r.dropped.Inc()
		return
	}
	if len(r.queue) >= recorderBatch {
		select {
		case r.kick <- struct{}{}:
		default:
		}
	}
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
			r.flushAll(ctx)
		}
	}
}

// flushAll flushes until fewer than a batch is left, so that a backlog
// does not wait for the next tick batch by batch; it stops at the first
// failure, leaving the rest for the next tick.
func (r *recorder) flushAll(ctx context.Context) {
	for {
		n, err := r.flush(ctx)
		if err != nil || n < recorderBatch {
			return
		}
	}
}

// flush makes one InsertUsage of at most a batch: the batch that failed
// last time, or what is queued. It returns how many rows it tried.
func (r *recorder) flush(ctx context.Context) (int, error) {
	batch := r.retry
	if batch == nil {
		batch = make([]keybridge.Usage, 0, min(len(r.queue), recorderBatch))
	fill:
		for len(batch) < recorderBatch {
			select {
			case u := <-r.queue:
				batch = append(batch, u)
			default:
				break fill
			}
		}
	}
	if len(batch) == 0 {
		return 0, nil
	}
	// InsertUsage gives the rows their ids in batch, so a retry of a
	// batch whose commit did land conflicts instead of counting twice.
	err := r.st.InsertUsage(ctx, batch)
	if err == nil {
		r.written.Add(float64(len(batch)))
		r.retry, r.attempts = nil, 0
		r.retried.Store(0)
		return len(batch), nil
	}
	r.attempts++
	if r.attempts >= recorderAttempts {
		r.log.ErrorContext(ctx, "usage: rows dropped, the database refused them", "rows", len(batch), "attempts", r.attempts, "err", err)
		r.dropped.Add(float64(len(batch)))
		r.retry, r.attempts = nil, 0
		r.retried.Store(0)
		return len(batch), err
	}
	r.log.WarnContext(ctx, "usage: write failed, will retry", "rows", len(batch), "attempts", r.attempts, "err", err)
	r.retry = batch
	r.retried.Store(int64(len(batch)))
	return len(batch), err
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
		pending := *t.m
		if len(pending) > 0 {
			*t.m = make(map[string]time.Time, len(pending))
		}
		r.mu.Unlock()
		if len(pending) == 0 {
			continue
		}
		if err := t.write(ctx, pending); err != nil {
			r.log.WarnContext(ctx, "usage: write last_used_at of "+t.what, "keys", len(pending), "err", err)
			for id, at := range pending {
				r.touch(t.m, id, at)
			}
		}
	}
}

// drain is run's last flush: everything queued, each batch tried once
// more at most, within recorderDrain. What is left is dropped and counted.
func (r *recorder) drain(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, recorderDrain)
	defer cancel()
	var lost int
	var last error
	for ctx.Err() == nil {
		n, err := r.flush(ctx)
		if n == 0 {
			break
		}
		if err == nil {
			continue
		}
		// No time to wait for the database to come back: the batch is
		// lost, whether flush gave up on it or not.
		lost, last = lost+n, err
		if r.retry != nil {
			r.dropped.Add(float64(len(r.retry)))
			r.retry, r.attempts = nil, 0
			r.retried.Store(0)
		}
	}
	r.flushTouches(ctx)
	if left := len(r.queue); left > 0 {
		lost += left
		r.dropped.Add(float64(left))
	}
	if lost > 0 {
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
