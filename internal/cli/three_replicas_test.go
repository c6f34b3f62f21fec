package cli_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"os/signal"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/keybridge/keybridge/internal/cli"
	"github.com/keybridge/keybridge/internal/testsupport"
)

// replicaArgsEnv, in a process's environment, makes TestReplicaProcess run
// "keybridge" with the JSON array of arguments it holds: the three-replica
// test runs its replicas as processes of their own (this test binary),
// so that one can be killed as a crash would.
const replicaArgsEnv = "KEYBRIDGE_TEST_REPLICA_ARGS"

// TestReplicaProcess is not a test: run by TestThreeReplicas as a child
// process, it is a keybridge replica; otherwise it does nothing.
func TestReplicaProcess(t *testing.T) {
	args := os.Getenv(replicaArgsEnv)
	if args == "" {
		return
	}
	var flags []string
	if err := json.Unmarshal([]byte(args), &flags); err != nil {
		fmt.Fprintln(os.Stderr, "replica arguments:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := cli.Run(ctx, append([]string{"keybridge"}, flags...), os.Getenv, strings.NewReader(""), os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "keybridge:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// replica is a "keybridge serve" running as a child process.
type replica struct {
	name string
	cmd  *exec.Cmd
	url  string
	logs *testsupport.SyncBuffer
	done chan struct{}
}

// startReplica runs serve in a child process with exactly the KEYBRIDGE_*
// variables given, and waits for /healthz. It is stopped when t ends.
func startReplica(t *testing.T, name string, vars map[string]string, flags ...string) *replica {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	args, _ := json.Marshal(append([]string{"serve", "--listen", "127.0.0.1:0", "--data-dir", t.TempDir()}, flags...))
	r := &replica{name: name, logs: &testsupport.SyncBuffer{}, done: make(chan struct{})}
	r.cmd = exec.Command(self, "-test.run=^TestReplicaProcess$")
	r.cmd.Stdout, r.cmd.Stderr = r.logs, r.logs
	r.cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"), replicaArgsEnv + "=" + string(args)}
	for k, v := range vars {
		r.cmd.Env = append(r.cmd.Env, k+"="+v)
	}
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { r.cmd.Wait(); close(r.done) }()
	t.Cleanup(r.stop)
	deadline := time.Now().Add(30 * time.Second)
	for r.url == "" {
		select {
		case <-r.done:
			t.Fatalf("replica %s exited before listening:\n%s", name, r.logs)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("replica %s did not start:\n%s", name, r.logs)
		}
		r.url = listeningURL(r.logs.String())
		time.Sleep(10 * time.Millisecond)
	}
	waitHealthy(t, r.url)
	return r
}

// stop asks the replica to shut down, and kills it after 15 s.
func (r *replica) stop() {
	r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.done:
	case <-time.After(15 * time.Second):
		r.kill()
	}
}

// kill ends the replica with SIGKILL and waits until it is gone.
func (r *replica) kill() {
	r.cmd.Process.Signal(syscall.SIGKILL)
	<-r.done
}

// streamingUpstream is an OpenAI-style provider: a chat completion asked
// to stream sends holdAt events at once, waits for release, then the rest
// and [DONE]; other requests answer one completion.
type streamingUpstream struct {
	*httptest.Server
	release   chan struct{}
	requests  atomic.Int64
	completed atomic.Int64 // streams that reached [DONE]
	cut       atomic.Int64 // streams whose gateway went away before it
}

const (
	streamEvents = 40
	holdAt       = 5
)

func newStreamingUpstream(t *testing.T) *streamingUpstream {
	u := &streamingUpstream{release: make(chan struct{})}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		u.requests.Add(1)
		if !strings.Contains(string(b), `"stream":true`) {
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, `{"id":"chatcmpl-1","object":"chat.completion","model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}`)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		for i := range streamEvents {
			if i == holdAt {
				select {
				case <-u.release:
				case <-r.Context().Done():
				}
			}
			if r.Context().Err() != nil {
				u.cut.Add(1)
				return
			}
			fmt.Fprintf(w, "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"t%d\"}}]}\n\n", i)
			w.(http.Flusher).Flush()
			if i >= holdAt {
				time.Sleep(5 * time.Millisecond)
			}
		}
		io.WriteString(w, "data: [DONE]\n\n")
		u.completed.Add(1)
	}))
	t.Cleanup(u.Close)
	return u
}

// TestThreeReplicas runs three serve replicas, each a process of its
// own, on one PostgreSQL schema and one Redis:
//
//   - a platform key revoked through A is refused by B and C within a
//     second (measured: each is polled until it refuses);
//   - one key's RPM limit of N holds across the three: 2N requests spread
//     round-robin admit N (±1%);
//   - A killed with SIGKILL in the middle of streams ends only its own:
//     the streams through B and C complete intact.
func TestThreeReplicas(t *testing.T) {
	if testing.Short() {
		t.Skip("starts three serve processes on PostgreSQL and Redis; skipped with -short")
	}
	redisURL := testRedisURL(t)
	env, owner := setupReplicas(t, postgresURL(t))
	vars := map[string]string{"KEYBRIDGE_DATABASE_URL": env("KEYBRIDGE_DATABASE_URL"), "KEYBRIDGE_MASTER_KEY": env("KEYBRIDGE_MASTER_KEY")}
	var reps []*replica
	for _, name := range []string{"A", "B", "C"} {
		reps = append(reps, startReplica(t, name, vars, "--redis-url", redisURL))
	}
	a, b, c := reps[0], reps[1], reps[2]
	up := newStreamingUpstream(t)
	const upstreamKey = "sk-three-replicas-upstream-key-AAAAAAAAAA"
	if resp, out := call(t, a.url, "POST", "/api/v1/orgs/acme/providers", owner,
		map[string]any{"name": "oai", "type": "openai", "base_url": up.URL + "/v1"}); resp.StatusCode != http.StatusCreated {
		t.Fatalf("create provider = %d %s", resp.StatusCode, out)
	}
	if resp, out := call(t, a.url, "POST", "/api/v1/orgs/acme/providers/oai/keys", owner,
		map[string]any{"api_key": upstreamKey}); resp.StatusCode != http.StatusCreated {
		t.Fatalf("add upstream key = %d %s", resp.StatusCode, out)
	}
	newKey := func(fields map[string]any) (id, key string) {
		t.Helper()
		body := map[string]any{"org": "acme", "name": "k", "permissions": []string{"gateway:invoke"}}
		for k, v := range fields {
			body[k] = v
		}
		resp, out := call(t, a.url, "POST", "/api/v1/api-keys", owner, body)
		var v struct{ ID, Key string }
		if resp.StatusCode != http.StatusCreated || json.Unmarshal(out, &v) != nil || v.Key == "" {
			t.Fatalf("create key = %d %s", resp.StatusCode, out)
		}
		return v.ID, v.Key
	}
	chat := `{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}`
	// gateway sends one chat completion through r and returns its status;
	// safe off the test's goroutine.
	client := &http.Client{Timeout: 30 * time.Second}
	gateway := func(r *replica, key, body string) (int, error) {
		req, _ := http.NewRequest("POST", r.url+"/gateway/oai/chat/completions", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+key)
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			return 0, err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode, nil
	}

	t.Run("revocation", func(t *testing.T) {
		const rounds = 5
		var lat []time.Duration
		for round := range rounds {
			id, key := newKey(nil)
			for _, r := range []*replica{b, c} {
				for range 3 { // each replica has the key cached
					if st, err := gateway(r, key, chat); st != http.StatusOK {
						t.Fatalf("round %d: %s before the revocation = %d %v", round, r.name, st, err)
					}
				}
			}
			if resp, out := call(t, a.url, "POST", "/api/v1/api-keys/"+id+"/revoke", owner, nil); resp.StatusCode != http.StatusOK {
				t.Fatalf("revoke through A = %d %s", resp.StatusCode, out)
			}
			acked := time.Now()
			var wg sync.WaitGroup
			got := make([]time.Duration, 2)
			for i, r := range []*replica{b, c} {
				wg.Go(func() {
					for {
						st, _ := gateway(r, key, chat)
						if st == http.StatusUnauthorized {
							got[i] = time.Since(acked)
							return
						}
						if time.Since(acked) > 10*time.Second {
							got[i] = -1
							return
						}
						time.Sleep(2 * time.Millisecond)
					}
				})
			}
			wg.Wait()
			for i, d := range got {
				name := []string{"B", "C"}[i]
				if d < 0 || d > propagation {
					t.Errorf("round %d: %s refused the key revoked through A after %v, want within %v (-1: not within 10 s)", round, name, d, propagation)
				}
				lat = append(lat, d)
			}
		}
		sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
		t.Logf("revocation through A, refused by B and C: %d measurements, median %v, max %v (from the revoke's 200)",
			len(lat), lat[len(lat)/2].Round(100*time.Microsecond), lat[len(lat)-1].Round(100*time.Microsecond))
	})

	t.Run("one RPM limit", func(t *testing.T) {
		const rpm, workers = 300, 6
		_, key := newKey(map[string]any{"rate_limit_rpm": rpm})
		var (
			mu       sync.Mutex
			statuses = map[int]int{}
			perRep   [3]int
		)
		before := up.requests.Load()
		start := time.Now()
		fanOut(2*rpm, workers, func(i int) bool {
			st, err := gateway(reps[i%3], key, chat)
			if err != nil {
				st = -1
			}
			mu.Lock()
			statuses[st]++
			if st == http.StatusOK {
				perRep[i%3]++
			}
			mu.Unlock()
			return true
		})
		took := time.Since(start)
		admitted := statuses[http.StatusOK]
		if d := admitted - rpm; d < -rpm/100 || d > rpm/100 || statuses[http.StatusOK]+statuses[http.StatusTooManyRequests] != 2*rpm {
			t.Errorf("%d requests round-robin over three replicas with one limit of %d a minute: %v, want %d (±1%%) of 200, the rest 429",
				2*rpm, rpm, statuses, rpm)
		}
		if got := up.requests.Load() - before; got != int64(admitted) {
			t.Errorf("requests that reached the provider: %d, want the %d admitted", got, admitted)
		}
		t.Logf("RPM %d over three replicas: %d of %d admitted in %v (A %d, B %d, C %d)",
			rpm, admitted, 2*rpm, took.Round(time.Millisecond), perRep[0], perRep[1], perRep[2])
	})

	t.Run("a replica killed mid-stream", func(t *testing.T) {
		const perReplica = 3
		type result struct {
			rep    string
			events int
			done   bool
			err    error
		}
		results := make(chan result, 3*perReplica)
		var started sync.WaitGroup
		for _, r := range reps {
			for range perReplica {
				started.Add(1)
				go func() {
					res := result{rep: r.name}
					defer func() { results <- res }()
					req, _ := http.NewRequest("POST", r.url+"/gateway/oai/chat/completions",
						strings.NewReader(`{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}`))
					req.Header.Set("Authorization", "Bearer "+owner)
					req.Header.Set("Content-Type", "application/json")
					once := sync.OnceFunc(started.Done)
					defer once()
					resp, err := client.Do(req)
					if err != nil {
						res.err = err
						return
					}
					defer resp.Body.Close()
					br := bufio.NewReader(resp.Body)
					for {
						line, err := br.ReadString('\n')
						if err != nil {
							if err != io.EOF {
								res.err = err
							}
							return
						}
						switch {
						case line == "data: [DONE]\n":
							res.done = true
						case strings.HasPrefix(line, "data: "):
							if want := fmt.Sprintf(`"content":"t%d"`, res.events); !strings.Contains(line, want) {
								res.err = fmt.Errorf("event %d = %q", res.events, line)
								return
							}
							res.events++
							if res.events == holdAt {
								once() // every stream is under way: the kill is mid-stream
							}
						}
					}
				}()
			}
		}
		started.Wait()
		a.kill()
		close(up.release)
		got := map[string][]result{}
		for range 3 * perReplica {
			select {
			case r := <-results:
				got[r.rep] = append(got[r.rep], r)
			case <-time.After(60 * time.Second):
				t.Fatal("streams did not end within 60 s of the kill")
			}
		}
		for _, r := range append(got["B"], got["C"]...) {
			if r.err != nil || !r.done || r.events != streamEvents {
				t.Errorf("a stream through %s, which stayed up: %d events, [DONE] %v, err %v; want all %d and [DONE]", r.rep, r.events, r.done, r.err, streamEvents)
			}
		}
		for _, r := range got["A"] {
			if r.done || r.err == nil {
				t.Errorf("a stream through the killed replica A: %d events, [DONE] %v, err %v; want it broken off", r.events, r.done, r.err)
			}
		}
		// The provider saw A's streams end as A died, and finished the others.
		deadline := time.Now().Add(10 * time.Second)
		for up.cut.Load() < perReplica && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if up.completed.Load() != 2*perReplica || up.cut.Load() != perReplica {
			t.Errorf("upstream: %d streams completed and %d cut, want %d and %d", up.completed.Load(), up.cut.Load(), 2*perReplica, perReplica)
		}
		for _, r := range []*replica{b, c} {
			if st, err := gateway(r, owner, chat); st != http.StatusOK {
				t.Errorf("%s after A's death = %d %v, want 200", r.name, st, err)
			}
		}
		t.Logf("A killed with SIGKILL %d events into %d streams per replica: B and C completed theirs (%d events and [DONE] each), A's broke off",
			holdAt, perReplica, streamEvents)
	})

	for _, r := range reps {
		out := r.logs.String()
		for _, secret := range []string{upstreamKey, owner} {
			if strings.Contains(out, secret) {
				t.Errorf("replica %s's output holds a secret (%.6s...)", r.name, secret)
			}
		}
	}
}
