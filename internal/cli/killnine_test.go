package cli_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/keybridge/keybridge/internal/cli"
	"github.com/keybridge/keybridge/internal/providertest"
	"github.com/keybridge/keybridge/internal/testsupport"
)

// childEnv, set in a child's environment, makes this test binary run
// keybridge itself instead of the tests: the crash tests run "serve" as a
// real process, to be killed with SIGKILL, without building a binary.
const childEnv = "KEYBRIDGE_TEST_RUN_AS_KEYBRIDGE"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "1" {
		// As cmd/keybridge's main, with the arguments after the binary's
		// name.
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		err := cli.Run(ctx, append([]string{"keybridge"}, os.Args[1:]...), os.Getenv, os.Stdin, os.Stdout, os.Stderr)
		stop()
		if err != nil {
			fmt.Fprintln(os.Stderr, "keybridge:", err)
			os.Exit(cli.ExitCode(err))
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// child is a "keybridge serve" running as a process of its own.
type child struct {
	cmd  *exec.Cmd
	url  string
	logs *testsupport.SyncBuffer
	done chan struct{}
}

// startChild runs this test binary as "keybridge serve" with exactly env
// (no KEYBRIDGE_* of the test's own environment) and the flags, on a free
// port, and waits for /healthz. The process is killed when t ends.
func startChild(t *testing.T, env []string, flags ...string) *child {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	c := &child{logs: &testsupport.SyncBuffer{}, done: make(chan struct{})}
	c.cmd = exec.Command(self, append([]string{"serve", "--listen", "127.0.0.1:0"}, flags...)...)
	c.cmd.Stdout, c.cmd.Stderr = c.logs, c.logs
	c.cmd.Env = append([]string{childEnv + "=1", "PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}, env...)
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { c.cmd.Wait(); close(c.done) }()
	t.Cleanup(c.kill)
	deadline := time.Now().Add(30 * time.Second)
	for c.url == "" {
		select {
		case <-c.done:
			t.Fatalf("serve exited before listening:\n%s", c.logs)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("serve did not start:\n%s", c.logs)
		}
		c.url = listeningURL(c.logs.String())
		time.Sleep(5 * time.Millisecond)
	}
	waitHealthy(t, c.url)
	return c
}

// kill ends the process with SIGKILL, as a crash or the OOM killer would,
// and waits until it is gone.
func (c *child) kill() {
	c.cmd.Process.Signal(syscall.SIGKILL)
	<-c.done
}

// TestKillNine runs serve as a real process under concurrent management
// writes and gateway traffic, kills it with SIGKILL at a random moment,
// starts it again on the same data and checks, after every restart:
//
//   - every write whose success the client received is there (platform keys,
//     projects, AI keys, providers, and each provider's last acknowledged
//     PATCH, or the one in flight at the kill);
//   - the audit chain verifies, and holds at least one event per
//     acknowledged write;
//   - usage: every row the recorder acknowledged (its batch committed, which
//     keybridge_usage_written_total counts) is there, no more rows than
//     requests sent, and the daily totals agree with the raw rows; after the
//     last restart, no row is there twice: each gateway request asks for a
//     model of its own, so a model with two requests is a duplicate.
//
// It runs on SQLite, and on PostgreSQL when KEYBRIDGE_TEST_POSTGRES_URL is
// set. KEYBRIDGE_KILL9_ROUNDS sets the rounds per engine (default 20).
func TestKillNine(t *testing.T) {
	if testing.Short() {
		t.Skip("kills serve processes; skipped with -short")
	}
	t.Parallel()
	rounds := 20
	if v := os.Getenv("KEYBRIDGE_KILL9_ROUNDS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("KEYBRIDGE_KILL9_ROUNDS=%q: want a positive number", v)
		}
		rounds = n
	}
	t.Run("sqlite", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		owner := setupOwner(t, noEnv, "--data-dir", dir)
		killNine(t, rounds, owner, nil, "--data-dir", dir)
	})
	t.Run("postgres", func(t *testing.T) {
		t.Parallel()
		dbURL := postgresURL(t)
		master := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{5}, 32))
		env := map[string]string{"KEYBRIDGE_DATABASE_URL": dbURL, "KEYBRIDGE_MASTER_KEY": master}
		var out, errOut bytes.Buffer
		if err := cli.Run(context.Background(), []string{"keybridge", "migrate"}, envOf(env), strings.NewReader(""), &out, &errOut); err != nil {
			t.Fatalf("migrate: %v\n%s", err, errOut.String())
		}
		owner := setupOwner(t, envOf(env))
		var serveEnv []string
		for k, v := range env {
			serveEnv = append(serveEnv, k+"="+v)
		}
		killNine(t, rounds, owner, serveEnv, "--data-dir", t.TempDir())
	})
}

// setupOwner runs "keybridge setup" for org acme and returns the owner's key.
func setupOwner(t *testing.T, getenv func(string) string, flags ...string) string {
	t.Helper()
	var stdout, stderr bytes.Buffer
	args := append([]string{"keybridge", "setup", "--org", "acme", "--email", "a@acme.test"}, flags...)
	if err := cli.Run(context.Background(), args, getenv, strings.NewReader(""), &stdout, &stderr); err != nil {
		t.Fatalf("setup: %v\n%s", err, stderr.String())
	}
	return strings.TrimSpace(stdout.String())
}

// crashLedger is what the clients of every round were told succeeded.
type crashLedger struct {
	mu        sync.Mutex
	apiKeys   []string
	projects  []string
	aiKeys    map[string][]string // project id -> AI key ids
	providers map[string]*patched // name -> display names
	// usageAcked sums, over the rounds, the last keybridge_usage_written_total
	// read from the killed process before the kill.
	usageAcked int64
	// gatewaySent counts the gateway requests sent (answered or not), and
	// gatewayOK those answered 200.
	gatewaySent, gatewayOK int64
	// auditEvents is the last count the chain's verification gave.
	auditEvents int64
}

// patched is a provider's display name: the last one acknowledged, and
// the one in flight (sent, unanswered) when the process died.
type patched struct{ acked, inFlight string }

// killNine is TestKillNine on one engine: owner is org acme's owner key,
// env and flags start serve on the engine's data.
func killNine(t *testing.T, rounds int, owner string, env []string, flags ...string) {
	up := providertest.NewOpenAI(t)
	upKey := "sk-crash-upstream-key-000000000000"
	up.AddKey(upKey)
	testStart := time.Now().UTC()
	ledger := &crashLedger{aiKeys: map[string][]string{}, providers: map[string]*patched{}}
	patches := 0 // acknowledged PATCHes, for the report

	c := startChild(t, env, flags...)
	must := func(method, path string, body any, want int) []byte {
		t.Helper()
		resp, out := call(t, c.url, method, path, owner, body)
		if resp.StatusCode != want {
			t.Fatalf("%s %s = %d %s, want %d", method, path, resp.StatusCode, out, want)
		}
		return out
	}
	must("POST", "/api/v1/orgs/acme/providers", map[string]any{"name": "oai", "type": "openai", "base_url": up.URL + "/v1"}, http.StatusCreated)
	must("POST", "/api/v1/orgs/acme/providers/oai/keys", map[string]any{"api_key": upKey, "name": "up"}, http.StatusCreated)

	for round := range rounds {
		// One round in four runs past the recorder's first flush (one
		// second after start), so that acknowledged usage rows are at
		// stake; the others die at any moment of their first 500 ms.
		life := time.Duration(20+rand.IntN(480)) * time.Millisecond
		if round%4 == 0 {
			life = time.Duration(1050+rand.IntN(350)) * time.Millisecond
		}
		p := crashRound(t, c, owner, round, life, ledger)
		patches += p
		c.kill()
		c = startChild(t, env, flags...)
		verifyLedger(t, c.url, owner, testStart, ledger, round == rounds-1)
		if t.Failed() {
			t.Fatalf("round %d (killed after %v): acknowledged writes are missing; logs of the restarted server:\n%s", round, life, c.logs)
		}
	}
	ledger.mu.Lock()
	defer ledger.mu.Unlock()
	if ledger.usageAcked == 0 || len(ledger.apiKeys) < rounds {
		t.Fatalf("only %d usage rows and %d platform keys were acknowledged in %d rounds; the test proves little", ledger.usageAcked, len(ledger.apiKeys), rounds)
	}
	aiKeys := 0
	for _, ids := range ledger.aiKeys {
		aiKeys += len(ids)
	}
	t.Logf("%d SIGKILL rounds: verified %d platform keys, %d projects, %d AI keys, %d providers (%d PATCHes acknowledged), "+
		"%d audit events in a verified chain, %d acknowledged usage rows of %d gateway requests answered 200 (%d sent), none duplicated",
		rounds, len(ledger.apiKeys), len(ledger.projects), aiKeys, len(ledger.providers), patches,
		ledger.auditEvents, ledger.usageAcked, ledger.gatewayOK, ledger.gatewaySent)
}

// crashRound drives c with writers and gateway clients for life, then
// returns with every client stopped by the kill that follows; it records
// in l what was acknowledged, and returns how many PATCHes were.
func crashRound(t *testing.T, c *child, owner string, round int, life time.Duration, l *crashLedger) int {
	t.Helper()
	client := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
	defer client.CloseIdleConnections()
	// do sends one request; ok is false once the server is gone.
	do := func(method, path, key string, body any) (status int, out []byte, ok bool) {
		var rd io.Reader
		if body != nil {
			b, _ := json.Marshal(body)
			rd = bytes.NewReader(b)
		}
		req, _ := http.NewRequest(method, c.url+path, rd)
		req.Header.Set("Authorization", "Bearer "+key)
		if rd != nil {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := client.Do(req)
		if err != nil {
			return 0, nil, false
		}
		defer resp.Body.Close()
		out, err = io.ReadAll(resp.Body)
		if err != nil {
			return 0, nil, false // cut mid-answer: not acknowledged
		}
		return resp.StatusCode, out, true
	}
	idOf := func(b []byte) string {
		var v struct{ ID string }
		json.Unmarshal(b, &v)
		return v.ID
	}
	var patches atomic.Int64
	var wg sync.WaitGroup
	// Any answer but the expected one (a 5xx, say) while the server is up
	// is a failure of its own: the kill must be the only thing going wrong.
	unexpected := func(what string, status int, out []byte) {
		t.Errorf("round %d: %s = %d %s", round, what, status, out)
	}
	wg.Go(func() { // platform keys
		for i := 0; ; i++ {
			status, out, ok := do("POST", "/api/v1/api-keys", owner, map[string]any{"name": fmt.Sprintf("crash-%d-%d", round, i), "permissions": []string{"gateway:invoke"}})
			if !ok {
				return
			}
			if status != http.StatusCreated {
				unexpected("POST /api/v1/api-keys", status, out)
				return
			}
			l.mu.Lock()
			l.apiKeys = append(l.apiKeys, idOf(out))
			l.mu.Unlock()
		}
	})
	wg.Go(func() { // projects
		for i := 0; ; i++ {
			status, out, ok := do("POST", "/api/v1/orgs/acme/projects", owner, map[string]any{"name": fmt.Sprintf("p-%d-%d", round, i)})
			if !ok {
				return
			}
			if status != http.StatusCreated {
				unexpected("POST projects", status, out)
				return
			}
			l.mu.Lock()
			l.projects = append(l.projects, idOf(out))
			l.mu.Unlock()
		}
	})
	wg.Go(func() { // a project, then AI keys in it
		status, out, ok := do("POST", "/api/v1/orgs/acme/projects", owner, map[string]any{"name": fmt.Sprintf("ai-%d", round)})
		if !ok {
			return
		}
		if status != http.StatusCreated {
			unexpected("POST projects", status, out)
			return
		}
		project := idOf(out)
		l.mu.Lock()
		l.projects = append(l.projects, project)
		l.mu.Unlock()
		for i := 0; ; i++ {
			status, out, ok := do("POST", "/api/v1/orgs/acme/projects/"+project+"/ai-keys", owner, map[string]any{"name": fmt.Sprintf("k-%d", i), "ai_type": "OPENAI"})
			if !ok {
				return
			}
			if status != http.StatusCreated {
				unexpected("POST ai-keys", status, out)
				return
			}
			l.mu.Lock()
			l.aiKeys[project] = append(l.aiKeys[project], idOf(out))
			l.mu.Unlock()
		}
	})
	wg.Go(func() { // providers, each created then PATCHed again and again
		for i := 0; ; i++ {
			name := fmt.Sprintf("prov-%d-%d", round, i)
			status, out, ok := do("POST", "/api/v1/orgs/acme/providers", owner, map[string]any{"name": name, "type": "openai-compatible", "base_url": "http://127.0.0.1:9/v1"})
			if !ok {
				return
			}
			if status != http.StatusCreated {
				unexpected("POST providers", status, out)
				return
			}
			p := &patched{}
			l.mu.Lock()
			l.providers[name] = p
			l.mu.Unlock()
			for v := range 5 {
				display := fmt.Sprintf("%s v%d", name, v)
				l.mu.Lock()
				p.inFlight = display
				l.mu.Unlock()
				status, out, ok := do("PATCH", "/api/v1/orgs/acme/providers/"+name, owner, map[string]any{"display_name": display})
				if !ok {
					return
				}
				if status != http.StatusOK {
					unexpected("PATCH provider", status, out)
					return
				}
				l.mu.Lock()
				p.acked, p.inFlight = display, ""
				l.mu.Unlock()
				patches.Add(1)
			}
		}
	})
	for w := range 2 { // gateway traffic, a model of its own per request
		wg.Go(func() {
			for i := 0; ; i++ {
				model := fmt.Sprintf("crash-%d-%d-%d", round, w, i)
				atomic.AddInt64(&l.gatewaySent, 1)
				status, out, ok := do("POST", "/gateway/oai/chat/completions", owner,
					map[string]any{"model": model, "messages": []map[string]string{{"role": "user", "content": "hi"}}})
				if !ok {
					return
				}
				if status != http.StatusOK {
					unexpected("gateway chat completion", status, out)
					return
				}
				atomic.AddInt64(&l.gatewayOK, 1)
			}
		})
	}
	var written atomic.Int64 // the last keybridge_usage_written_total read
	wg.Go(func() {
		for {
			status, out, ok := do("GET", "/metrics", "", nil)
			if !ok {
				return
			}
			if status == http.StatusOK {
				if v, found := metricValue(out, "keybridge_usage_written_total"); found {
					written.Store(int64(v))
				}
			}
			time.Sleep(10 * time.Millisecond)
		}
	})

	time.Sleep(life)
	c.kill()
	wg.Wait()
	l.mu.Lock()
	l.usageAcked += written.Load()
	l.mu.Unlock()
	return int(patches.Load())
}

// metricValue finds an unlabelled sample in a Prometheus text exposition.
func metricValue(exposition []byte, name string) (float64, bool) {
	sc := bufio.NewScanner(bytes.NewReader(exposition))
	for sc.Scan() {
		line := sc.Text()
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return f, err == nil
		}
	}
	return 0, false
}

// listAll reads every page of a list endpoint and returns its items.
func listAll(t *testing.T, base, path, key string) []json.RawMessage {
	t.Helper()
	var items []json.RawMessage
	cursor := ""
	for {
		sep := "?"
		if strings.Contains(path, "?") {
			sep = "&"
		}
		p := path + sep + "limit=500"
		if cursor != "" {
			p += "&cursor=" + url.QueryEscape(cursor)
		}
		resp, body := call(t, base, "GET", p, key, nil)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s = %d %s", p, resp.StatusCode, body)
		}
		var page struct {
			Items      []json.RawMessage `json:"items"`
			NextCursor string            `json:"next_cursor"`
		}
		if err := json.Unmarshal(body, &page); err != nil {
			t.Fatalf("GET %s: %v in %s", p, err, body)
		}
		items = append(items, page.Items...)
		if page.NextCursor == "" {
			return items
		}
		cursor = page.NextCursor
	}
}

// fieldSet is the set of one string field over items.
func fieldSet(t *testing.T, items []json.RawMessage, field string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, it := range items {
		var m map[string]any
		if err := json.Unmarshal(it, &m); err != nil {
			t.Fatal(err)
		}
		id, _ := m["id"].(string)
		v, _ := m[field].(string)
		out[v] = id
	}
	return out
}

// verifyLedger checks the restarted server at base against l.
func verifyLedger(t *testing.T, base, owner string, testStart time.Time, l *crashLedger, final bool) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()

	keys := fieldSet(t, listAll(t, base, "/api/v1/api-keys", owner), "id")
	for _, id := range l.apiKeys {
		if _, ok := keys[id]; !ok {
			t.Errorf("platform key %s was acknowledged (201) but is gone after SIGKILL", id)
		}
	}
	projects := fieldSet(t, listAll(t, base, "/api/v1/orgs/acme/projects", owner), "id")
	for _, id := range l.projects {
		if _, ok := projects[id]; !ok {
			t.Errorf("project %s was acknowledged (201) but is gone after SIGKILL", id)
		}
	}
	for project, ids := range l.aiKeys {
		have := fieldSet(t, listAll(t, base, "/api/v1/orgs/acme/projects/"+project+"/ai-keys", owner), "id")
		for _, id := range ids {
			if _, ok := have[id]; !ok {
				t.Errorf("AI key %s of project %s was acknowledged (201) but is gone after SIGKILL", id, project)
			}
		}
	}
	providers := map[string]string{}
	for _, it := range listAll(t, base, "/api/v1/orgs/acme/providers", owner) {
		var p struct{ Name, DisplayName string }
		var raw map[string]any
		json.Unmarshal(it, &raw)
		p.Name, _ = raw["name"].(string)
		p.DisplayName, _ = raw["display_name"].(string)
		providers[p.Name] = p.DisplayName
	}
	for name, p := range l.providers {
		got, ok := providers[name]
		switch {
		case !ok:
			t.Errorf("provider %s was acknowledged (201) but is gone after SIGKILL", name)
		case p.acked != "" && got != p.acked && got != p.inFlight:
			t.Errorf("provider %s has display_name %q after SIGKILL, want the last acknowledged %q (or %q, in flight)", name, got, p.acked, p.inFlight)
		case p.acked == "" && got != name && got != p.inFlight:
			t.Errorf("provider %s has display_name %q after SIGKILL, want %q (never PATCHed) or %q (in flight)", name, got, name, p.inFlight)
		}
		// The PATCH in flight at the kill may have landed or not, and on
		// PostgreSQL it may land even after the restart: the server
		// finishes a COMMIT it received although the client that sent it
		// is gone. Until it is seen, it stays a value the provider may
		// take (no later round PATCHes this provider).
		if got == p.inFlight {
			p.acked, p.inFlight = got, ""
		}
	}

	resp, body := call(t, base, "GET", "/api/v1/orgs/acme/audit-events/verify", owner, nil)
	var v struct {
		OK     bool  `json:"ok"`
		Events int64 `json:"events"`
	}
	if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &v) != nil || !v.OK {
		t.Errorf("GET audit-events/verify after SIGKILL = %d %s, want ok", resp.StatusCode, body)
	}
	writes := len(l.apiKeys) + len(l.projects) + len(l.providers)
	for _, ids := range l.aiKeys {
		writes += len(ids)
	}
	if v.Events < int64(writes) || v.Events < l.auditEvents {
		t.Errorf("the audit chain holds %d events after SIGKILL, want at least %d (one per acknowledged create) and at least the %d of the last restart", v.Events, writes, l.auditEvents)
	}
	l.auditEvents = v.Events

	// Usage: the raw rows of [testStart, now], and the daily totals of
	// whole days around them; per model (each request's own) after the
	// last round, in one total (cheaper) after the others.
	by := "provider"
	if final {
		by = "model"
	}
	now := time.Now().UTC().Add(time.Minute)
	raw := usageBy(t, base, owner, by, testStart.Add(-time.Second), now)
	day := testStart.Truncate(24 * time.Hour)
	daily := usageBy(t, base, owner, by, day.Add(-24*time.Hour), day.Add(48*time.Hour))
	var total int64
	for key, n := range raw {
		if final && n != 1 {
			t.Errorf("usage holds %d rows of model %s after SIGKILL, want 1: one request was recorded %d times", n, key, n)
		}
		if daily[key] != n {
			t.Errorf("daily usage totals say %d requests of %s %s, the rows %d", daily[key], by, key, n)
		}
		total += n
	}
	if len(daily) != len(raw) {
		t.Errorf("daily usage totals have %d groups by %s, the rows %d", len(daily), by, len(raw))
	}
	if total < l.usageAcked {
		t.Errorf("usage holds %d rows after SIGKILL, want at least the %d acknowledged by keybridge_usage_written_total", total, l.usageAcked)
	}
	if total > l.gatewaySent {
		t.Errorf("usage holds %d rows after SIGKILL, more than the %d gateway requests sent", total, l.gatewaySent)
	}
}

// usageBy returns the requests per group (by provider or model) of the
// org acme in [since, until): the crash test's models only, and its
// provider oai.
func usageBy(t *testing.T, base, owner, by string, since, until time.Time) map[string]int64 {
	t.Helper()
	p := "/api/v1/orgs/acme/usage?group_by=" + by + "&since=" + url.QueryEscape(since.Format(time.RFC3339Nano)) + "&until=" + url.QueryEscape(until.Format(time.RFC3339Nano))
	resp, body := call(t, base, "GET", p, owner, nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s = %d %s", p, resp.StatusCode, body)
	}
	var out struct {
		Items []struct {
			Key      string `json:"key"`
			Requests int64  `json:"requests"`
		} `json:"items"`
	}
	if err := json.Unmarshal(body, &out); err != nil {
		t.Fatalf("GET %s: %v", p, err)
	}
	m := map[string]int64{}
	for _, g := range out.Items {
		m[g.Key] += g.Requests
	}
	return m
}
