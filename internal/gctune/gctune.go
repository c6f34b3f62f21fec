// Package gctune lets the garbage collector run less often while the
// live heap is small, as the gateway's is: most of what a request
// allocates is garbage by its end, and at the default GOGC=100 a heap of
// a few MiB is collected every few thousand requests, a tenth of the
// gateway's own CPU on the measured machine.
//
// After each collection the percent is set from the live heap: the next
// collection comes once Budget bytes of new allocation (or MaxPercent of
// the live heap, if less) have piled up, never sooner than GOGC=100
// would have it. So the heap stays within live + Budget while the live
// heap is small, and behaves as by default once it is large: thousands of
// open streams do not make the heap grow to MaxPercent of them.
package gctune

import (
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync/atomic"
)

// Defaults of Start.
const (
	Budget     = 64 << 20
	MaxPercent = 400
	MinPercent = 100
)

// Percent is the GOGC that lets budget bytes of garbage pile up on a live
// heap of live bytes, between MinPercent and maxPercent.
func Percent(live, budget uint64, maxPercent int) int {
	if live == 0 {
		return maxPercent
	}
	p := budget * 100 / live
	if p > uint64(maxPercent) {
		return maxPercent
	}
	return max(int(p), MinPercent)
}

// Start tunes the collector after every collection until stop is called.
func Start(budget uint64, maxPercent int) (stop func()) {
	t := &tuner{budget: budget, max: maxPercent}
	t.sample[0].Name = "/gc/heap/live:bytes"
	t.tune()
	t.arm()
	return func() {
		if t.stopped.CompareAndSwap(false, true) {
			debug.SetGCPercent(MinPercent)
		}
	}
}

type tuner struct {
	budget  uint64
	max     int
	sample  [1]metrics.Sample
	stopped atomic.Bool
	last    int
}

// arm has the next collection call tune: a finalizer runs once the
// object it is set on is collected, in the cycle after it is garbage.
func (t *tuner) arm() {
	s := &sentinel{t: t}
	runtime.SetFinalizer(s, func(s *sentinel) {
		if s.t.stopped.Load() {
			return
		}
		s.t.tune()
		s.t.arm()
	})
}

type sentinel struct {
	t *tuner
	_ [16]byte // not a tiny allocation, which could share a block and outlive its cycle
}

func (t *tuner) tune() {
	metrics.Read(t.sample[:])
	var live uint64
	if t.sample[0].Value.Kind() == metrics.KindUint64 {
		live = t.sample[0].Value.Uint64()
	}
	if p := Percent(live, t.budget, t.max); p != t.last {
		t.last = p
		debug.SetGCPercent(p)
	}
}
