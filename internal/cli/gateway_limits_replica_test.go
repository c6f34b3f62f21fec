package cli_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keybridge/keybridge/internal/keybridge"
)

// TestGatewayLimitsAcrossReplicas runs two serve replicas on one
// PostgreSQL schema and one Redis, and sends twice a key's requests per
// minute through them, alternating and a few at a time: the limit is one
// limit for both (SPEC §7.6), so exactly that many are admitted.
func TestGatewayLimitsAcrossReplicas(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two servers on PostgreSQL and Redis; skipped with -short")
	}
	redisURL := testRedisURL(t)
	const (
		rpm     = 40
		workers = 4
	)
	replicas, owner := redisReplicas(t, 2, redisURL)
	up := newRecordingUpstream(t)
	if resp, out := replicas[0].call(t, "POST", "/api/v1/orgs/acme/providers", owner,
		map[string]any{"name": "oai", "type": "openai", "base_url": up.URL + "/v1"}); resp.StatusCode != http.StatusCreated {
		t.Fatalf("create provider = %d %s", resp.StatusCode, out)
	}
	if resp, out := replicas[0].call(t, "POST", "/api/v1/orgs/acme/providers/oai/keys", owner,
		map[string]any{"api_key": "sk-replica-limits-upstream-key-AAAAAAAA"}); resp.StatusCode != http.StatusCreated {
		t.Fatalf("add upstream key = %d %s", resp.StatusCode, out)
	}
	resp, out := replicas[0].call(t, "POST", "/api/v1/api-keys", owner,
		map[string]any{"org": "acme", "name": "limited", "permissions": []string{"gateway:invoke"}, "rate_limit_rpm": rpm})
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("create key = %d %s", resp.StatusCode, out)
	}
	var created struct{ Key string }
	if err := json.Unmarshal(out, &created); err != nil || created.Key == "" {
		t.Fatalf("no key in %s", out)
	}
	body := `{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}`

	// Request i goes to replica i%2; workers take the next one as they
	// finish, so both replicas admit at once.
	var (
		mu       sync.Mutex
		statuses = map[int]int{}
		perRep   [2]int
	)
	fanOut(2*rpm, workers, func(i int) bool {
		// Not call: it fails the test with FailNow, which only the
		// test's own goroutine may.
		req, _ := http.NewRequest("POST", replicas[i%2].url+"/gateway/oai/chat/completions", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+created.Key)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Errorf("request %d: %v", i, err)
			return false
		}
		out, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusTooManyRequests && resp.Header.Get("X-Keybridge-Error") != keybridge.ERateLimited {
			t.Errorf("429 without X-Keybridge-Error %s: %s", keybridge.ERateLimited, out)
		}
		mu.Lock()
		statuses[resp.StatusCode]++
		if resp.StatusCode == http.StatusOK {
			perRep[i%2]++
		}
		mu.Unlock()
		return true
	})
	if statuses[http.StatusOK] != rpm || statuses[http.StatusTooManyRequests] != rpm {
		t.Errorf("answers to %d requests alternating between two replicas: got %v, want %d of 200 and %d of 429",
			2*rpm, statuses, rpm, rpm)
	}
	if got := up.count(); got != rpm {
		t.Errorf("requests that reached the provider: got %d, want %d", got, rpm)
	}
	t.Logf("admitted by replica 1: %d, by replica 2: %d", perRep[0], perRep[1])
}

// TestGatewayCooldownAcrossReplicas: an upstream key that one replica saw
// rate limited rests on the other replica too (SPEC §7.4: cooldowns are
// shared when Redis is configured), within a second.
func TestGatewayCooldownAcrossReplicas(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two servers on PostgreSQL and Redis; skipped with -short")
	}
	redisURL := testRedisURL(t)
	replicas, owner := redisReplicas(t, 2, redisURL)
	const limited, spare = "sk-replica-cooldown-limited-AAAAAAAA", "sk-replica-cooldown-spare-BBBBBBBBBB"
	keysSeen, limitedID := restingProvider(t, replicas[0], owner, limited, spare)
	chat := func(s *server) int {
		t.Helper()
		resp, _ := s.call(t, "POST", "/gateway/oai/chat/completions", owner, map[string]any{"model": "gpt-4o-mini", "messages": []any{}})
		return resp.StatusCode
	}
	if got := chat(replicas[0]); got != http.StatusOK {
		t.Fatalf("through replica 1 = %d, want 200 from the spare key", got)
	}
	if s := keysSeen(); len(s) != 2 || s[0] != limited || s[1] != spare {
		t.Fatalf("upstream saw %d requests, want the limited key then the spare", len(s))
	}
	// The rest travels through Redis in milliseconds; replica 2 must not
	// try the limited key even once, so it is given a moment rather than
	// polled (a try would rest the key on replica 2 by its own hand). The
	// moment is generous: on a loaded machine the publishing loop and the
	// subscriber can each wait a scheduling round or more.
	start := time.Now()
	time.Sleep(time.Second)
	before := len(keysSeen())
	if got := chat(replicas[1]); got != http.StatusOK {
		t.Fatalf("through replica 2 = %d", got)
	}
	if s := keysSeen()[before:]; len(s) != 1 || s[0] != spare {
		t.Fatalf("replica 2 made %d upstream requests, want one with the spare key: it tried the key resting on replica 1", len(s))
	}
	t.Logf("replica 2 skipped the resting key %v after replica 1's 429", time.Since(start).Round(time.Millisecond))

	// The keys list of either replica shows the rest: about the 30 s
	// the provider asked for, from replica 1's 429.
	for i, r := range replicas {
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			resp, out := r.call(t, "GET", "/api/v1/orgs/acme/providers/oai/keys", owner, nil)
			var list struct {
				Items []struct {
					ID            string
					CooldownUntil *time.Time `json:"cooldown_until"`
				}
			}
			if resp.StatusCode != http.StatusOK || json.Unmarshal(out, &list) != nil {
				t.Fatalf("keys list on replica %d = %d %s", i+1, resp.StatusCode, out)
			}
			var until *time.Time
			for _, k := range list.Items {
				if k.ID == limitedID {
					until = k.CooldownUntil
				}
			}
			if left := time.Until(deref(until)); until != nil && left > 25*time.Second && left <= 30*time.Second {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("keys list on replica %d: cooldown_until of the resting key %v, want about 30 s from replica 1's 429: %s", i+1, until, out)
			}
		}
	}

	// An admin's change of the key through replica 2 ends its rest on
	// replica 1 too, which tries it again first.
	if resp, out := replicas[1].call(t, "PATCH", "/api/v1/orgs/acme/providers/oai/keys/"+limitedID, owner,
		map[string]any{"name": "fixed"}); resp.StatusCode != http.StatusOK {
		t.Fatalf("PATCH the resting key through replica 2 = %d %s", resp.StatusCode, out)
	}
	start = time.Now()
	for {
		before := len(keysSeen())
		chat(replicas[0])
		if s := keysSeen()[before:]; len(s) > 0 && s[0] == limited {
			break
		}
		if time.Since(start) > propagation {
			t.Fatalf("replica 1 still skips the key %v after an admin changed it through replica 2", propagation)
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("replica 1 tried the key again %v after its change through replica 2", time.Since(start).Round(time.Millisecond))
}

func deref(t *time.Time) time.Time {
	if t == nil {
		return time.Time{}
	}
	return *t
}

// privateRedis is a redis-server of the test's own on a free port, that
// the test may stop and start again on that port; the shared one is never
// touched. It is killed when t ends.
type privateRedis struct {
	t    *testing.T
	bin  string
	port string
	cmd  *exec.Cmd
}

// startPrivateRedis starts one, or skips t without redis-server.
func startPrivateRedis(t *testing.T) *privateRedis {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Skip("redis-server not installed")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &privateRedis{t: t, bin: bin, port: fmt.Sprint(ln.Addr().(*net.TCPAddr).Port)}
	ln.Close()
	r.start()
	t.Cleanup(r.stop)
	return r
}

func (r *privateRedis) url() string { return "redis://127.0.0.1:" + r.port + "/0" }

// start runs it and waits until it takes connections.
func (r *privateRedis) start() {
	r.t.Helper()
	r.cmd = exec.Command(r.bin, "--port", r.port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no")
	if err := r.cmd.Start(); err != nil {
		r.t.Fatal(err)
	}
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if c, err := net.Dial("tcp", "127.0.0.1:"+r.port); err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			r.t.Fatal("redis-server did not start")
		}
	}
}

// stop kills it, as a crash would.
func (r *privateRedis) stop() {
	if r.cmd != nil {
		r.cmd.Process.Kill()
		r.cmd.Wait()
		r.cmd = nil
	}
}

// subscribers is how many clients are subscribed to channel.
func (r *privateRedis) subscribers(channel string) int {
	out, err := exec.Command("redis-cli", "-p", r.port, "PUBSUB", "NUMSUB", channel).Output()
	if err != nil {
		return -1
	}
	f := strings.Fields(string(out))
	if len(f) != 2 {
		return -1
	}
	n, _ := strconv.Atoi(f[1])
	return n
}

// TestGatewayCooldownAfterRedisRestart: the replicas share cooldowns
// again once a Redis that went away is back (docs/gateway.md: pub/sub
// keeps no history, so rests decided meanwhile are missed, but not those
// decided after): each subscribes again by itself, and a 429 on replica 1
// rests the key on replica 2.
func TestGatewayCooldownAfterRedisRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two servers on PostgreSQL and a redis-server it stops; skipped with -short")
	}
	rs := startPrivateRedis(t)
	replicas, owner := redisReplicas(t, 2, rs.url())
	const limited, spare = "sk-replica-restart-limited-AAAAAAAA", "sk-replica-restart-spare-BBBBBBBBBB"
	keysSeen, _ := restingProvider(t, replicas[0], owner, limited, spare)
	waitSubscribers := func(what string) {
		t.Helper()
		start := time.Now()
		for rs.subscribers(cooldownChannel) != 2 {
			if time.Since(start) > 10*time.Second {
				t.Fatalf("%s: %d replicas subscribed to %s after %v, want 2", what, rs.subscribers(cooldownChannel), cooldownChannel, time.Since(start).Round(time.Millisecond))
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Logf("%s: both replicas subscribed after %v", what, time.Since(start).Round(time.Millisecond))
	}
	waitSubscribers("at start")
	rs.stop()
	time.Sleep(200 * time.Millisecond) // both replicas find their subscriptions gone
	rs.start()
	waitSubscribers("once Redis is back")

	chat := func(s *server) int {
		t.Helper()
		resp, _ := s.call(t, "POST", "/gateway/oai/chat/completions", owner, map[string]any{"model": "gpt-4o-mini", "messages": []any{}})
		return resp.StatusCode
	}
	if got := chat(replicas[0]); got != http.StatusOK {
		t.Fatalf("through replica 1 = %d, want 200 from the spare key", got)
	}
	// As in TestGatewayCooldownAcrossReplicas: a moment, not a poll.
	time.Sleep(time.Second)
	before := len(keysSeen())
	if got := chat(replicas[1]); got != http.StatusOK {
		t.Fatalf("through replica 2 = %d", got)
	}
	if s := keysSeen()[before:]; len(s) != 1 || s[0] != spare {
		t.Fatalf("replica 2 made %d upstream requests, want one with the spare key: it tried the key resting on replica 1 after Redis came back", len(s))
	}
}

const cooldownChannel = "keybridge:cooldowns"

// restingProvider creates provider "oai" through s, in front of an
// upstream that answers key limited with 429 and Retry-After: 30 and key
// spare with a chat completion, with the two keys in that order of
// priority. keysSeen returns the keys the upstream got, in order.
func restingProvider(t *testing.T, s *server, owner, limited, spare string) (keysSeen func() []string, limitedID string) {
	t.Helper()
	var mu sync.Mutex
	var seen []string
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		key := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
		mu.Lock()
		seen = append(seen, key)
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		if key == limited {
			w.Header().Set("Retry-After", "30")
			w.WriteHeader(http.StatusTooManyRequests)
			io.WriteString(w, `{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}`)
			return
		}
		io.WriteString(w, `{"id":"chatcmpl-1","object":"chat.completion","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}`)
	}))
	t.Cleanup(up.Close)
	if resp, out := s.call(t, "POST", "/api/v1/orgs/acme/providers", owner,
		map[string]any{"name": "oai", "type": "openai", "base_url": up.URL + "/v1"}); resp.StatusCode != http.StatusCreated {
		t.Fatalf("create provider = %d %s", resp.StatusCode, out)
	}
	for i, k := range []string{limited, spare} {
		resp, out := s.call(t, "POST", "/api/v1/orgs/acme/providers/oai/keys", owner,
			map[string]any{"api_key": k, "priority": i})
		if resp.StatusCode != http.StatusCreated {
			t.Fatalf("add upstream key = %d %s", resp.StatusCode, out)
		}
		if i == 0 {
			var v struct{ ID string }
			json.Unmarshal(out, &v)
			limitedID = v.ID
		}
	}
	keysSeen = func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), seen...)
	}
	return keysSeen, limitedID
}
