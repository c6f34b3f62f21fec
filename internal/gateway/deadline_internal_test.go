package gateway

import (
	"context"
	"net"
	"testing"
	"time"
)

// deadlineConn records the read deadlines set on it.
type deadlineConn struct {
	net.Conn
	sets []time.Time
}

func (c *deadlineConn) SetReadDeadline(t time.Time) error {
	c.sets = append(c.sets, t)
	return nil
}

// A read deadline moves only when the one set is outside what is asked:
// at least t, at most t plus the slack.
func TestSetReadDeadlineSpan(t *testing.T) {
	nc := &deadlineConn{}
	cn := &conn{nc: nc}
	ctx := context.Background()
	t0 := time.Unix(1_000_000, 0)
	const slack = time.Second
	for i, step := range []struct {
		at   time.Time
		want time.Time // the deadline set, or zero for none
	}{
		{t0.Add(10 * time.Minute), t0.Add(10*time.Minute + slack)},                                             // none yet
		{t0.Add(10*time.Minute + 600*time.Millisecond), time.Time{}},                                           // the next request, within the span
		{t0.Add(10*time.Minute + slack), time.Time{}},                                                          // its edge
		{t0.Add(10*time.Minute + slack + time.Nanosecond), t0.Add(10*time.Minute + 2*slack + time.Nanosecond)}, // past it
		{t0.Add(5 * time.Minute), t0.Add(5*time.Minute + slack)},                                               // a tighter one (a stream's idle timeout)
	} {
		n := len(nc.sets)
		if err := setReadDeadline(ctx, cn, step.at, slack); err != nil {
			t.Fatal(err)
		}
		switch {
		case step.want.IsZero() && len(nc.sets) != n:
			t.Errorf("step %d: deadline moved to %v, want it kept at %v", i, nc.sets[n], cn.readBy)
		case !step.want.IsZero() && (len(nc.sets) != n+1 || !nc.sets[n].Equal(step.want)):
			t.Errorf("step %d: deadlines set %v, want %v", i, nc.sets[n:], step.want)
		}
	}
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	if err := setReadDeadline(canceled, cn, t0.Add(5*time.Minute), slack); err == nil {
		t.Error("a canceled request's deadline: got no error")
	}
}
