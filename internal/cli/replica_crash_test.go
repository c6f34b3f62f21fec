package cli_test

import (
	"bufio"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"
)

// replicaPair starts replicas A and B, processes of their own, on one
// PostgreSQL schema (and Redis, with flags), gives them provider oai on
// up, and returns them with the owner's key.
func replicaPair(t *testing.T, upURL string, flags ...string) (a, b *replica, owner string) {
	t.Helper()
	env, owner := setupReplicas(t, postgresURL(t))
	vars := map[string]string{"KEYBRIDGE_DATABASE_URL": env("KEYBRIDGE_DATABASE_URL"), "KEYBRIDGE_MASTER_KEY": env("KEYBRIDGE_MASTER_KEY")}
	a, b = startReplica(t, "A", vars, flags...), startReplica(t, "B", vars, flags...)
	if resp, out := call(t, a.url, "POST", "/api/v1/orgs/acme/providers", owner,
		map[string]any{"name": "oai", "type": "openai", "base_url": upURL + "/v1"}); resp.StatusCode != http.StatusCreated {
		t.Fatalf("create provider = %d %s", resp.StatusCode, out)
	}
	if resp, out := call(t, a.url, "POST", "/api/v1/orgs/acme/providers/oai/keys", owner,
		map[string]any{"api_key": "sk-replica-pair-upstream-key-AAAAAAAAAA"}); resp.StatusCode != http.StatusCreated {
		t.Fatalf("add upstream key = %d %s", resp.StatusCode, out)
	}
	return a, b, owner
}

// TestReplicaKilledHoldingLease kills replica A with SIGKILL while it
// holds leases of a key's limits (docs/gateway.md, Leases), then sends B
// more than the key has left: A's leased slots and tokens, counted in
// Redis at the grant, stay counted, so A and B together never admit past
// the limit, and B still gets all but A's unused share (at most 1% of the
// limit) of what is left.
func TestReplicaKilledHoldingLease(t *testing.T) {
	if testing.Short() {
		t.Skip("starts and kills serve processes on PostgreSQL and Redis; skipped with -short")
	}
	redisURL := testRedisURL(t)
	up := newRecordingUpstream(t) // 4 tokens an answer
	a, b, owner := replicaPair(t, up.URL, "--redis-url", redisURL)
	const rpm, tpm, onA = 400, 1600, 100
	_, rpmKey := newLimitedKey(t, a.url, owner, map[string]any{"rate_limit_rpm": rpm})
	_, tpmKey := newLimitedKey(t, a.url, owner, map[string]any{"rate_limit_tpm": tpm})
	capped := `{"model":"gpt-4o-mini","max_tokens":4,"messages":[{"role":"user","content":"hi"}]}`

	// Far under half their limits, A's requests come from leases, and A
	// holds one of each key when it dies.
	for _, key := range []string{rpmKey, tpmKey} {
		if got := spread(t, []string{a.url}, key, capped, onA, 2); got[http.StatusOK] != onA {
			t.Fatalf("through A before the kill: %v, want %d of 200", got, onA)
		}
	}
	a.kill()

	for _, c := range []struct {
		name  string
		key   string
		limit int // in requests
	}{{"rpm", rpmKey, rpm}, {"tpm", tpmKey, tpm / 4}} {
		got := spread(t, []string{b.url}, c.key, capped, c.limit, 4)
		admitted := onA + got[http.StatusOK]
		if admitted > c.limit || admitted < c.limit-c.limit/100 {
			t.Errorf("%s: %d admitted by A before its SIGKILL and %d by B after (%v), want %d in all, less A's unused lease (1%% at most)",
				c.name, onA, got[http.StatusOK], got, c.limit)
		}
		t.Logf("%s limit of %d requests: A admitted %d and was killed, B then %d", c.name, c.limit, onA, got[http.StatusOK])
	}
}

// TestReplicaTermDrainsStream stops replica A with SIGTERM while a stream
// runs through it (SPEC §10: graceful shutdown drains in-flight streams):
// A stops taking requests, the stream runs to its end with every event
// and [DONE], A exits cleanly, and the usage rows of every request A
// served, the stream's among them, are in the database once it is gone.
func TestReplicaTermDrainsStream(t *testing.T) {
	if testing.Short() {
		t.Skip("starts serve processes on PostgreSQL; skipped with -short")
	}
	up := newStreamingUpstream(t)
	a, b, owner := replicaPair(t, up.URL)
	const plain = 20
	chat := `{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}`
	for i := range plain {
		if ans := chatOnce(a.url, owner, chat); ans.status != http.StatusOK {
			t.Fatalf("request %d through A = %d %v", i, ans.status, ans.err)
		}
	}

	req, _ := http.NewRequest("POST", a.url+"/gateway/oai/chat/completions",
		strings.NewReader(`{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}`))
	req.Header.Set("Authorization", "Bearer "+owner)
	req.Header.Set("Content-Type", "application/json")
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	events := 0
	for events < holdAt {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("stream through A before the stop: %v after %d events", err, events)
		}
		if strings.HasPrefix(line, "data: ") {
			events++
		}
	}

	a.cmd.Process.Signal(syscall.SIGTERM)
	// A no longer takes requests (its listener closes as the shutdown
	// begins), but keeps the stream.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if r, err := http.Get(a.url + "/healthz"); err != nil {
			break
		} else {
			r.Body.Close()
		}
		if time.Now().After(deadline) {
			t.Fatal("A still takes new connections 5 s after SIGTERM")
		}
	}
	select {
	case <-a.done:
		t.Fatalf("A exited with a stream in flight:\n%s", a.logs)
	default:
	}
	close(up.release)
	done := false
	for {
		line, err := br.ReadString('\n')
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("the stream through A, draining, broke after %d events: %v", events, err)
		}
		switch {
		case line == "data: [DONE]\n":
			done = true
		case strings.HasPrefix(line, "data: "):
			events++
		}
	}
	if events != streamEvents || !done {
		t.Errorf("the stream through A, stopped with SIGTERM mid-stream: %d events, [DONE] %v; want %d and [DONE]", events, done, streamEvents)
	}
	select {
	case <-a.done:
	case <-time.After(15 * time.Second):
		t.Fatal("A did not exit within 15 s of its stream's end")
	}
	if code := a.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("A exited with %d after SIGTERM, want 0:\n%s", code, a.logs)
	}

	// Every row A queued was written before it exited: B reads them at
	// once, with nothing left to wait for.
	_, out := call(t, b.url, "GET", "/api/v1/orgs/acme/usage?group_by=provider", owner, nil)
	var usage struct {
		Items []struct{ Requests, Errors, OutputTokens int }
	}
	if err := json.Unmarshal(out, &usage); err != nil {
		t.Fatalf("usage: %v %s", err, out)
	}
	if len(usage.Items) != 1 || usage.Items[0].Requests != plain+1 || usage.Items[0].Errors != 0 {
		t.Errorf("usage once A stopped: %s; want %d requests (%d and the stream), no errors", out, plain+1, plain)
	}
	// B served throughout.
	if ans := chatOnce(b.url, owner, chat); ans.status != http.StatusOK {
		t.Errorf("B after A stopped = %d %v", ans.status, ans.err)
	}
}
