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

// TestReplicaStoppedHoldingLease stops replica A while it holds leases of
// keys' limits (docs/gateway.md, Leases), then sends B more than the keys
// have left. Killed with SIGKILL, A's leased slots and tokens, counted in
// Redis at the grant, stay counted: A and B together never admit past a
// limit, and B still gets all but A's unused share of what is left (1% of
// the limit a lease, and the lease before it whose return A may not have
// sent). Stopped with SIGTERM, A gives its leases back
// and sends what its requests owe before it exits: B gets exactly what is
// left, also of a limit that A's requests without a cap spent.
func TestReplicaStoppedHoldingLease(t *testing.T) {
	if testing.Short() {
		t.Skip("starts and kills serve processes on PostgreSQL and Redis; skipped with -short")
	}
	redisURL := testRedisURL(t)
	for _, how := range []string{"SIGKILL", "SIGTERM"} {
		t.Run(how, func(t *testing.T) {
			up := newRecordingUpstream(t) // 4 tokens an answer
			a, b, owner := replicaPair(t, up.URL, "--redis-url", redisURL)
			const rpm, tpm, onA = 400, 1600, 100
			capped := `{"model":"gpt-4o-mini","max_tokens":4,"messages":[{"role":"user","content":"hi"}]}`
			uncapped := `{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}`
			type limitCase struct {
				name   string
				body   string
				limit  int // in requests
				key    string
				limits map[string]any
			}
			cases := []*limitCase{
				{name: "rpm", body: capped, limit: rpm, limits: map[string]any{"rate_limit_rpm": rpm}},
				{name: "tpm", body: capped, limit: tpm / 4, limits: map[string]any{"rate_limit_tpm": tpm}},
			}
			if how == "SIGTERM" {
				cases = append(cases, &limitCase{name: "tpm without a cap", body: uncapped, limit: tpm / 4, limits: map[string]any{"rate_limit_tpm": tpm}})
			}
			for _, c := range cases {
				_, c.key = newLimitedKey(t, a.url, owner, c.limits)
				// Far under half their limits, A's requests come from
				// leases, and A holds one of each key when it stops.
				if got := spread(t, []string{a.url}, c.key, c.body, onA, 2); got[http.StatusOK] != onA {
					t.Fatalf("%s: through A before it stops: %v, want %d of 200", c.name, got, onA)
				}
			}
			if how == "SIGKILL" {
				a.kill()
			} else {
				a.stop()
			}
			for _, c := range cases {
				got := spread(t, []string{b.url}, c.key, c.body, c.limit, 4)
				admitted := onA + got[http.StatusOK]
				lo, hi := c.limit, c.limit
				switch {
				case how == "SIGKILL":
					// A's lease, and the one before it if A died
					// before its return went out: 1% each.
					lo -= 2 * c.limit / 100
				case c.body == uncapped:
					hi += 4 // B's concurrent requests, each by what it uses
				}
				if admitted < lo || admitted > hi {
					t.Errorf("%s: %d admitted by A before its %s and %d by B after (%v), want %d to %d in all",
						c.name, onA, how, got[http.StatusOK], got, lo, hi)
				}
				t.Logf("%s limit of %d requests: A admitted %d and got %s, B then %d", c.name, c.limit, onA, how, got[http.StatusOK])
			}
		})
	}
}

// TestReplicaTermDrainsStream stops replica A with SIGTERM while a stream
// runs through it (SPEC §10: graceful shutdown drains in-flight streams):
// A stops taking requests, the stream runs to its end with every event
// and [DONE], A exits cleanly, and the usage rows of every request A
// served, the stream's among them, and the last_used_at times they set
// are in the database once it is gone.
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
	// So were the last_used_at times A kept in memory (batched, up to 30
	// s apart): the owner's key's, and the upstream key's.
	_, out = call(t, b.url, "GET", "/api/v1/api-keys", owner, nil)
	var keys struct {
		Items []struct {
			LastUsedAt *time.Time `json:"last_used_at"`
		}
	}
	if json.Unmarshal(out, &keys) != nil || len(keys.Items) != 1 || keys.Items[0].LastUsedAt == nil {
		t.Errorf("platform keys once A stopped: %s; want the owner's with the last_used_at of its requests through A", out)
	}
	_, out = call(t, b.url, "GET", "/api/v1/orgs/acme/providers/oai/keys", owner, nil)
	if json.Unmarshal(out, &keys) != nil || len(keys.Items) != 1 || keys.Items[0].LastUsedAt == nil {
		t.Errorf("upstream keys once A stopped: %s; want the one A used, with its last_used_at", out)
	}
	// B served throughout.
	if ans := chatOnce(b.url, owner, chat); ans.status != http.StatusOK {
		t.Errorf("B after A stopped = %d %v", ans.status, ans.err)
	}
}
