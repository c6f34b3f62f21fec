package gateway_test

// The resend on a fresh connection (docs/gateway.md, failover): a pooled
// connection the provider closed while idle costs the request nothing,
// and a request the provider may have processed is never sent twice.

import (
	"context"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keybridge/keybridge/internal/gateway"
	"github.com/keybridge/keybridge/internal/store/storetest"
)

// callsOn answers each request to one upstream key with the next of
// faults, and the last one to any after them.
func callsOn(faults ...rawFault) rawFault {
	var n atomic.Int64
	return func(c *rawConn, r *http.Request) bool {
		i := min(int(n.Add(1))-1, len(faults)-1)
		return faults[i](c, r)
	}
}

// A provider that closes a keep-alive connection once it is idle: the
// next request, finding it in the pool, fails at once and is sent again
// on a fresh connection, answered, with no failover.
func TestIdleClosedConnectionIsResent(t *testing.T) {
	e := newFaultEnv(t, gateway.Options{})
	p := faultProviders[0]
	served := func(c *rawConn, r *http.Request) bool { return rawJSON(200, `{"ok":true}`)(c, r) }
	closeWhenIdle := func(c *rawConn, r *http.Request) bool {
		served(c, r)
		return false // the upstream closes the connection after its answer
	}
	name, keys := e.provider(p, callsOn(closeWhenIdle, served))
	if resp, body, err := e.call(context.Background(), p, name, false); err != nil || resp.StatusCode != 200 {
		t.Fatalf("first call = %d %s (%v)", resp.StatusCode, body, err)
	}
	time.Sleep(50 * time.Millisecond) // the close reaches the gateway's side
	resp, body, err := e.call(context.Background(), p, name, false)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("call on the closed connection = %d %s (%v), want 200 from a fresh one", resp.StatusCode, body, err)
	}
	if n := e.up.hitsOf(keys[0]); n != 2 {
		t.Errorf("the provider saw %d requests, want 2", n)
	}
	if logs := e.waitLog(2); strings.Contains(logs, `"failovers"`) {
		t.Errorf("the resend counted as a failover:\n%s", logs)
	}
}

// A provider that takes a request on a pooled connection, works on it,
// then drops the connection without answering may have done (and
// billed) the work: the request is not sent to it again.
func TestProcessedRequestIsNotResent(t *testing.T) {
	e := &faultEnv{env: newEnvWith(t, storetest.SQLite(t), envOptions{}), up: newRawUpstream(t),
		client: &http.Client{Transport: &http.Transport{}, Timeout: outerDeadline}}
	t.Cleanup(e.client.CloseIdleConnections)
	p := faultProviders[0]
	served := func(c *rawConn, r *http.Request) bool { return rawJSON(200, `{"ok":true}`)(c, r) }
	workThenDrop := func(c *rawConn, _ *http.Request) bool {
		time.Sleep(time.Second)
		c.rst()
		return false
	}
	name, keys := e.provider(p, callsOn(served, workThenDrop, served))
	if resp, body, err := e.call(context.Background(), p, name, false); err != nil || resp.StatusCode != 200 {
		t.Fatalf("first call = %d %s (%v)", resp.StatusCode, body, err)
	}
	resp, body, err := e.call(context.Background(), p, name, false)
	if err != nil || resp.StatusCode != http.StatusBadGateway {
		t.Errorf("call dropped after a second's work = %d %s (%v), want 502", resp.StatusCode, body, err)
	}
	if n := e.up.hitsOf(keys[0]); n != 2 {
		t.Errorf("the provider saw %d requests, want 2: the dropped one was sent again", n)
	}
}
