package cli_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keybridge/keybridge/internal/cli"
	"github.com/keybridge/keybridge/internal/providertest"
)

// pgBin is where Debian's PostgreSQL 15 server binaries live.
const pgBin = "/usr/lib/postgresql/15/bin"

// privatePostgres is a PostgreSQL cluster of the test's own, on a free
// port, that the test may stop and start: the shared server is never
// touched. It runs as the postgres user, through runuser.
type privatePostgres struct {
	dir  string
	port int
}

// startPrivatePostgres initdbs a cluster in a temporary directory and
// starts it; it skips t where that cannot be done here (no server
// binaries, no runuser, not root). The cluster is stopped and removed when
// t ends.
func startPrivatePostgres(t *testing.T) *privatePostgres {
	t.Helper()
	if _, err := os.Stat(filepath.Join(pgBin, "pg_ctl")); err != nil {
		t.Skipf("no PostgreSQL server binaries: %v", err)
	}
	if _, err := exec.LookPath("runuser"); err != nil || os.Geteuid() != 0 {
		t.Skip("a private PostgreSQL cluster needs root and runuser, to run it as the postgres user")
	}
	// Not t.TempDir: the postgres user must be able to reach it.
	dir, err := os.MkdirTemp("", "keybridge-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if out, err := exec.Command("chown", "postgres:postgres", dir).CombinedOutput(); err != nil {
		t.Skipf("chown the cluster's directory to postgres: %v %s", err, out)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pg := &privatePostgres{dir: dir, port: ln.Addr().(*net.TCPAddr).Port}
	ln.Close()
	if out, err := pg.run("initdb", "-D", pg.data(), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	pg.start(t)
	t.Cleanup(func() { pg.run("pg_ctl", "-D", pg.data(), "-m", "immediate", "-w", "stop") })
	return pg
}

func (pg *privatePostgres) data() string { return filepath.Join(pg.dir, "data") }

func (pg *privatePostgres) run(tool string, args ...string) ([]byte, error) {
	return exec.Command("runuser", append([]string{"-u", "postgres", "--", filepath.Join(pgBin, tool)}, args...)...).CombinedOutput()
}

// url is a connection URL of the cluster's postgres database.
func (pg *privatePostgres) url() string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", pg.port)
}

// start starts the cluster and waits until it accepts connections.
func (pg *privatePostgres) start(t *testing.T) {
	t.Helper()
	opts := fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off", pg.port, pg.dir)
	if out, err := pg.run("pg_ctl", "-D", pg.data(), "-l", filepath.Join(pg.dir, "log"), "-o", opts, "-w", "-t", "60", "start"); err != nil {
		log, _ := os.ReadFile(filepath.Join(pg.dir, "log"))
		t.Fatalf("pg_ctl start: %v\n%s\n%s", err, out, log)
	}
}

// stop shuts the cluster down as a restart for maintenance would: fast
// mode, which ends every connection.
func (pg *privatePostgres) stop(t *testing.T) {
	t.Helper()
	if out, err := pg.run("pg_ctl", "-D", pg.data(), "-m", "fast", "-w", "-t", "60", "stop"); err != nil {
		t.Fatalf("pg_ctl stop: %v\n%s", err, out)
	}
}

// outageGrace is the --db-outage-grace of TestDatabaseRestart: short, so
// that the test sees it end.
const outageGrace = 4 * time.Second

// dbOutage is how long TestDatabaseRestart keeps the database down: longer
// than 10 retries, one a second, of the usage batch that found it gone.
const dbOutage = 13 * time.Second

// TestDatabaseRestart restarts Keybridge's PostgreSQL (a private cluster)
// under gateway load and checks what an outage does:
//
//   - keys and routes cached before it keep working through the gateway for
//     --db-outage-grace, then get 503; a key that was not cached gets 503 at
//     once, never 401 or 500;
//   - management writes answer 503 in the spec's error shape, code
//     "unavailable", and /readyz is 503;
//   - once the database is back, writes, new keys and the gateway work
//     again without restarting Keybridge;
//   - no usage row of the requests served meanwhile is lost, however long
//     the outage (dbOutage) lasted.
func TestDatabaseRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("starts and restarts a PostgreSQL cluster; skipped with -short")
	}
	t.Parallel()
	pg := startPrivatePostgres(t)
	master := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{3}, 32))
	env := envOf(map[string]string{"KEYBRIDGE_DATABASE_URL": pg.url(), "KEYBRIDGE_MASTER_KEY": master})
	var out, errOut bytes.Buffer
	if err := cli.Run(context.Background(), []string{"keybridge", "migrate"}, env, strings.NewReader(""), &out, &errOut); err != nil {
		t.Fatalf("migrate: %v\n%s", err, errOut.String())
	}
	owner := setupOwner(t, env)
	srv := startServeEnv(t, env, "--listen", "127.0.0.1:0", "--data-dir", t.TempDir(), "--db-outage-grace", outageGrace.String())

	up := providertest.NewOpenAI(t)
	up.AddKey("sk-outage-upstream-key-0000000000")
	manage := func(method, path string, body any, want int) []byte {
		t.Helper()
		resp, out := srv.call(t, method, path, owner, body)
		if resp.StatusCode != want {
			t.Fatalf("%s %s = %d %s, want %d", method, path, resp.StatusCode, out, want)
		}
		return out
	}
	manage("POST", "/api/v1/orgs/acme/providers", map[string]any{"name": "oai", "type": "openai", "base_url": up.URL + "/v1"}, http.StatusCreated)
	manage("POST", "/api/v1/orgs/acme/providers/oai/keys", map[string]any{"api_key": "sk-outage-upstream-key-0000000000"}, http.StatusCreated)
	var project, aiKey, spare struct{ ID, Secret, Key string }
	json.Unmarshal(manage("POST", "/api/v1/orgs/acme/projects", map[string]any{"name": "outage"}, http.StatusCreated), &project)
	json.Unmarshal(manage("POST", "/api/v1/orgs/acme/projects/"+project.ID+"/ai-keys", map[string]any{"name": "ci", "ai_type": "OPENAI"}, http.StatusCreated), &aiKey)
	json.Unmarshal(manage("POST", "/api/v1/api-keys", map[string]any{"name": "never used", "permissions": []string{"gateway:invoke"}}, http.StatusCreated), &spare)

	client := &http.Client{Timeout: 30 * time.Second}
	invoke := func(key string) (int, []byte) {
		b, _ := json.Marshal(map[string]any{"model": "gpt-4o-mini", "messages": []map[string]string{{"role": "user", "content": "hi"}}})
		req, _ := http.NewRequest("POST", srv.url+"/gateway/oai/chat/completions", bytes.NewReader(b))
		req.Header.Set("Authorization", "Bearer "+key)
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			t.Errorf("gateway request: %v", err)
			return 0, nil
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, body
	}
	for _, k := range []string{owner, aiKey.Secret} {
		if status, body := invoke(k); status != http.StatusOK {
			t.Fatalf("gateway before the outage = %d %s", status, body)
		}
	}

	// Gateway load throughout, with the two cached keys.
	type answer struct {
		at     time.Time
		status int
	}
	var mu sync.Mutex
	var answers []answer
	stopLoad := make(chan struct{})
	var load sync.WaitGroup
	for _, k := range []string{owner, aiKey.Secret} {
		load.Go(func() {
			for {
				select {
				case <-stopLoad:
					return
				default:
				}
				status, body := invoke(k)
				if status != http.StatusOK && status != http.StatusServiceUnavailable {
					t.Errorf("gateway under the outage = %d %s, want 200 or 503", status, body)
				}
				mu.Lock()
				answers = append(answers, answer{time.Now(), status})
				mu.Unlock()
				time.Sleep(5 * time.Millisecond)
			}
		})
	}
	time.Sleep(200 * time.Millisecond)

	stopping := time.Now()
	pg.stop(t)
	down := time.Now()
	// At once: cached keys still work, the uncached one and writes get 503.
	if status, body := invoke(owner); status != http.StatusOK {
		t.Errorf("gateway with a cached platform key just after the database stopped = %d %s, want 200", status, body)
	}
	if status, body := invoke(aiKey.Secret); status != http.StatusOK {
		t.Errorf("gateway with a cached AI key just after the database stopped = %d %s, want 200", status, body)
	}
	if status, body := invoke(spare.Key); status != http.StatusServiceUnavailable {
		t.Errorf("gateway with a key never cached while the database is down = %d %s, want 503", status, body)
	}
	wantUnavailable := func(what string, resp *http.Response, body []byte) {
		t.Helper()
		var e struct {
			Error struct{ Code, Message string }
		}
		if resp.StatusCode != http.StatusServiceUnavailable || json.Unmarshal(body, &e) != nil || e.Error.Code != "unavailable" || e.Error.Message == "" {
			t.Errorf("%s while the database is down = %d %s, want 503 with code unavailable", what, resp.StatusCode, body)
		}
	}
	resp, body := srv.call(t, "POST", "/api/v1/api-keys", owner, map[string]any{"name": "during", "permissions": []string{"gateway:invoke"}})
	wantUnavailable("POST /api/v1/api-keys", resp, body)
	resp, body = srv.call(t, "PATCH", "/api/v1/orgs/acme/providers/oai", owner, map[string]any{"display_name": "during"})
	wantUnavailable("PATCH provider", resp, body)
	resp, body = srv.call(t, "GET", "/api/v1/orgs/acme/projects", owner, nil)
	wantUnavailable("GET projects", resp, body)
	resp, body = srv.call(t, "GET", "/api/v1/users/me", spare.Key, nil)
	wantUnavailable("GET /users/me with a key never cached", resp, body)
	resp, body = srv.call(t, "POST", "/api/v1/auth/login", "", map[string]string{"email": "a@acme.test", "password": "not the password"})
	wantUnavailable("POST /auth/login", resp, body)
	if resp, body := srv.call(t, "GET", "/readyz", "", nil); resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("GET /readyz while the database is down = %d %s, want 503", resp.StatusCode, body)
	}

	// The grace ends: the cached keys get 503 too. It started when the
	// replica lost its connections, after stopping: no cached key may be
	// refused before stopping+grace.
	var endedAfter time.Duration
	for deadline := down.Add(outageGrace + 20*time.Second); ; {
		status, _ := invoke(owner)
		if status == http.StatusServiceUnavailable {
			endedAfter = time.Since(stopping)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a cached key still answers %d %v after the database stopped; --db-outage-grace is %v", status, time.Since(down), outageGrace)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if endedAfter < outageGrace {
		t.Errorf("a cached key was refused %v after the database began to stop, before --db-outage-grace %v", endedAfter, outageGrace)
	}

	time.Sleep(time.Until(down.Add(dbOutage)))
	pg.start(t)
	back := time.Now()
	var recovered time.Duration
	for deadline := back.Add(30 * time.Second); ; {
		resp, body := srv.call(t, "POST", "/api/v1/api-keys", owner, map[string]any{"name": "after", "permissions": []string{"gateway:invoke"}})
		if resp.StatusCode == http.StatusCreated {
			recovered = time.Since(back)
			break
		}
		if resp.StatusCode != http.StatusServiceUnavailable {
			t.Fatalf("POST /api/v1/api-keys as the database comes back = %d %s, want 503 or 201", resp.StatusCode, body)
		}
		if time.Now().After(deadline) {
			t.Fatalf("writes still fail %v after the database came back: %d %s", time.Since(back), resp.StatusCode, body)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, k := range []string{owner, aiKey.Secret, spare.Key} {
		if status, body := invoke(k); status != http.StatusOK {
			t.Errorf("gateway after the database came back = %d %s, want 200", status, body)
		}
	}
	manage("PATCH", "/api/v1/orgs/acme/providers/oai", map[string]any{"display_name": "after"}, http.StatusOK)
	if resp, body := srv.call(t, "GET", "/readyz", "", nil); resp.StatusCode != http.StatusOK {
		t.Errorf("GET /readyz after the database came back = %d %s", resp.StatusCode, body)
	}
	close(stopLoad)
	load.Wait()

	// Every usage row of the outage was kept and is written: none dropped.
	usageMetric := func(name string) float64 {
		t.Helper()
		_, out := srv.call(t, "GET", "/metrics", "", nil)
		v, ok := metricValue(out, name)
		if !ok {
			t.Fatalf("no %s in /metrics", name)
		}
		return v
	}
	for deadline := time.Now().Add(20 * time.Second); usageMetric("keybridge_usage_queue_depth") != 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("usage rows still waiting 20 s after the database came back: keybridge_usage_queue_depth = %v", usageMetric("keybridge_usage_queue_depth"))
		}
	}
	if got := usageMetric("keybridge_usage_dropped_total"); got != 0 {
		t.Errorf("keybridge_usage_dropped_total after an outage of %v = %v, want 0", dbOutage, got)
	}
	written := usageMetric("keybridge_usage_written_total")

	mu.Lock()
	defer mu.Unlock()
	var okInGrace, refused int
	for _, a := range answers {
		switch {
		case a.status == http.StatusOK && a.at.After(down) && a.at.Before(back):
			okInGrace++
		case a.status == http.StatusServiceUnavailable:
			refused++
			if a.at.Before(stopping.Add(outageGrace)) {
				t.Errorf("the load's cached key was refused %v after the database began to stop, before --db-outage-grace %v", a.at.Sub(stopping), outageGrace)
			}
		}
	}
	if okInGrace == 0 {
		t.Error("no gateway request of the load succeeded while the database was down")
	}
	if written < float64(okInGrace) {
		t.Errorf("keybridge_usage_written_total = %v, want at least the %d requests served while the database was down", written, okInGrace)
	}
	t.Logf("database down: cached keys kept working for %v after it began to stop (--db-outage-grace %v; %d requests of the load answered 200 meanwhile, %d answered 503); "+
		"writes recovered %v after the database was back, without a restart",
		endedAfter.Round(time.Millisecond), outageGrace, okInGrace, refused, recovered.Round(time.Millisecond))
}

// TestRedisStops stops a private redis-server under serve's gateway and
// starts it again, for each --limits-when-redis-down policy: a key with
// limits is served on this replica's counters (local) or refused with 503
// (refuse) while Redis is away, a key without limits is served either way,
// keybridge_gateway_limits_redis_down and the log say so, refusals come in
// the provider's error shape, and all is back on Redis once it is, without
// a restart: a key's limit is counted in Redis again, nothing stays
// refused, and no goroutine is left behind. The limiter's own behaviour is tested in
// internal/gateway (TestRedisLimiterServerStops); this checks the serve
// wiring and the answers clients get.
func TestRedisStops(t *testing.T) {
	if testing.Short() {
		t.Skip("starts and stops redis-server; skipped with -short")
	}
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Skip("redis-server not installed")
	}
	t.Parallel()
	for _, policy := range []string{"local", "refuse"} {
		t.Run(policy, func(t *testing.T) {
			t.Parallel()
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			port := fmt.Sprint(ln.Addr().(*net.TCPAddr).Port)
			ln.Close()
			startRedis := func() *exec.Cmd {
				cmd := exec.Command(bin, "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no")
				if err := cmd.Start(); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
				for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(10 * time.Millisecond) {
					if c, err := net.Dial("tcp", "127.0.0.1:"+port); err == nil {
						c.Close()
						return cmd
					}
					if time.Now().After(deadline) {
						t.Fatal("redis-server did not start")
					}
				}
			}
			rs := startRedis()
			dir := t.TempDir()
			owner := setupOwner(t, noEnv, "--data-dir", dir)
			srv := startServe(t, dir, "--redis-url", "redis://127.0.0.1:"+port+"/0", "--limits-when-redis-down", policy)
			limited := limitedGateway(t, srv, owner, "sk-redis-stop-upstream-key-000000000")
			invoke := func(key string) int {
				resp, out := srv.call(t, "POST", "/gateway/oai/chat/completions", key,
					map[string]any{"model": "gpt-4o-mini", "messages": []map[string]string{{"role": "user", "content": "hi"}}})
				if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusServiceUnavailable {
					t.Errorf("gateway = %d %s, want 200 or 503", resp.StatusCode, out)
				}
				return resp.StatusCode
			}
			redisDown := func() float64 {
				_, out := srv.call(t, "GET", "/metrics", "", nil)
				v, _ := metricValue(out, "keybridge_gateway_limits_redis_down")
				return v
			}
			if got := invoke(limited); got != http.StatusOK {
				t.Fatalf("a key with limits, Redis up = %d, want 200", got)
			}
			// A key with a limit it reaches: counted in Redis, then on
			// this replica's own counters (local), then in Redis again.
			const small = 10
			resp, out := srv.call(t, "POST", "/api/v1/api-keys", owner, map[string]any{"name": "small", "permissions": []string{"gateway:invoke"}, "rate_limit_rpm": small})
			var smallKey struct{ Key string }
			if resp.StatusCode != http.StatusCreated || json.Unmarshal(out, &smallKey) != nil {
				t.Fatalf("create a key with a small limit = %d %s", resp.StatusCode, out)
			}
			// admitted sends n requests with key and returns how many got
			// 200; the others must be 429 (or, refusing, 503).
			admitted := func(key string, n int) int {
				ok := 0
				for range n {
					resp, out := srv.call(t, "POST", "/gateway/oai/chat/completions", key,
						map[string]any{"model": "gpt-4o-mini", "messages": []map[string]string{{"role": "user", "content": "hi"}}})
					switch resp.StatusCode {
					case http.StatusOK:
						ok++
					case http.StatusTooManyRequests, http.StatusServiceUnavailable:
					default:
						t.Errorf("gateway = %d %s, want 200, 429 or 503", resp.StatusCode, out)
					}
				}
				return ok
			}
			if got := admitted(smallKey.Key, 4); got != 4 {
				t.Fatalf("a key with an RPM limit of %d, Redis up: %d of 4 admitted", small, got)
			}
			goroutines := func() float64 {
				_, out := srv.call(t, "GET", "/metrics", "", nil)
				v, _ := metricValue(out, "go_goroutines")
				return v
			}
			before := goroutines()

			rs.Process.Kill()
			rs.Wait()
			want := http.StatusOK
			if policy == "refuse" {
				want = http.StatusServiceUnavailable
			}
			// The key's lease of capacity, taken from Redis before it
			// stopped, admits until it ends (within a second); from the
			// first failed call on, the policy decides.
			gone := time.Now()
			for deadline := gone.Add(5 * time.Second); invoke(limited) != want || redisDown() != 1; time.Sleep(20 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatalf("5 s after Redis stopped: a key with limits still not %d, or keybridge_gateway_limits_redis_down = %v", want, redisDown())
				}
			}
			t.Logf("--limits-when-redis-down %s applied %v after Redis stopped", policy, time.Since(gone).Round(time.Millisecond))
			for range 3 {
				if got := invoke(limited); got != want {
					t.Errorf("a key with limits, Redis down, --limits-when-redis-down %s = %d, want %d", policy, got, want)
				}
			}
			if got := invoke(owner); got != http.StatusOK {
				t.Errorf("a key without limits, Redis down = %d, want 200", got)
			}
			if got := redisDown(); got != 1 {
				t.Errorf("keybridge_gateway_limits_redis_down with Redis down = %v, want 1", got)
			}
			// Redis is not what readiness is about: the replica keeps
			// serving, and stays in its load balancer's rotation.
			if resp, out := srv.call(t, "GET", "/readyz", "", nil); resp.StatusCode != http.StatusOK {
				t.Errorf("/readyz with Redis down = %d %s, want 200 (the database and key ring are ready)", resp.StatusCode, out)
			}
			// Refused in the provider's shape (docs/gateway.md, errors the
			// gateway answers itself), or counted here.
			resp, out = srv.call(t, "POST", "/gateway/oai/chat/completions", limited,
				map[string]any{"model": "gpt-4o-mini", "messages": []map[string]string{{"role": "user", "content": "hi"}}})
			if policy == "refuse" {
				var e struct {
					Error struct{ Message, Type, Code string }
				}
				if json.Unmarshal(out, &e) != nil || e.Error.Code != "unavailable" || e.Error.Type != "server_error" ||
					!strings.Contains(e.Error.Message, "Redis") || resp.Header.Get("X-Keybridge-Error") != "unavailable" {
					t.Errorf("refused while Redis is down: %d %s (X-Keybridge-Error %q), want OpenAI's error shape, code unavailable",
						resp.StatusCode, out, resp.Header.Get("X-Keybridge-Error"))
				}
			}
			wantSmall := small
			if policy == "refuse" {
				wantSmall = 0
			}
			if got := admitted(smallKey.Key, small+5); got != wantSmall {
				t.Errorf("a key with an RPM limit of %d, Redis down, --limits-when-redis-down %s: %d of %d admitted, want %d",
					small, policy, got, small+5, wantSmall)
			}
			for range 40 {
				invoke(limited)
			}
			_, metrics := srv.call(t, "GET", "/metrics", "", nil)
			if v, _ := metricValue(metrics, "keybridge_gateway_limits_redis_down_total"); v < 40 {
				t.Errorf("keybridge_gateway_limits_redis_down_total = %v after 40 requests and more with Redis down, want 40 or more", v)
			}

			startRedis()
			back := time.Now()
			for deadline := back.Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
				if invoke(limited) == http.StatusOK && redisDown() == 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("30 s after Redis came back, keybridge_gateway_limits_redis_down = %v", redisDown())
				}
			}
			// Counted in Redis again (it restarted empty), not on this
			// replica's counters: the small key gets its whole limit,
			// and no more.
			if got := admitted(smallKey.Key, small+5); got != small {
				t.Errorf("a key with an RPM limit of %d, Redis back: %d of %d admitted, want %d", small, got, small+5, small)
			}
			// The log is written out every 50 ms.
			logs := srv.stderr.String()
			for deadline := time.Now().Add(2 * time.Second); !strings.Contains(logs, "redis reachable again for gateway limits"); logs = srv.stderr.String() {
				if time.Now().After(deadline) {
					t.Error("the log does not say that Redis is reachable again for gateway limits")
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			if n := strings.Count(logs, "redis unreachable for gateway limits"); n != 1 {
				t.Errorf("the log says %d times that Redis is unreachable for gateway limits, want once for the outage", n)
			}
			// What the outage started ended with it: the 70 and more
			// requests that did not wait on Redis left no goroutine
			// behind (the count is the test process's, both policies'
			// servers together, hence the slack).
			for deadline := time.Now().Add(5 * time.Second); goroutines() > before+40; time.Sleep(50 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Errorf("go_goroutines = %v once Redis is back, %v before the outage", goroutines(), before)
					break
				}
			}
			t.Logf("--limits-when-redis-down %s: Redis down answered %d to a key with limits; back on Redis %v after it restarted; goroutines %v before, %v after",
				policy, want, time.Since(back).Round(time.Millisecond), before, goroutines())
		})
	}
}

// TestRedisBlackholed points serve at a Redis that takes connections and
// never answers (a host gone quiet, a dropped route): under the default
// local policy, a key with limits is served on this replica's counters,
// the first request waiting at most for the client's short timeouts and
// the next ones not waiting on Redis at all while it is known down.
func TestRedisBlackholed(t *testing.T) {
	if testing.Short() {
		t.Skip("waits out Redis timeouts; skipped with -short")
	}
	t.Parallel()
	// Connections complete in the kernel's backlog; nothing reads them.
	hole, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hole.Close() })
	dir := t.TempDir()
	owner := setupOwner(t, noEnv, "--data-dir", dir)
	srv := startServe(t, dir, "--redis-url", "redis://"+hole.Addr().String()+"/0")
	limited := limitedGateway(t, srv, owner, "sk-redis-hole-upstream-key-0000000000")
	invoke := func() time.Duration {
		t.Helper()
		status, d := timedChat(t, srv, limited)
		if status != http.StatusOK {
			t.Errorf("gateway = %d, want 200 on this replica's counters", status)
		}
		return d
	}
	if d := invoke(); d > 2*time.Second {
		t.Errorf("first request with Redis blackholed took %v, want at most 2 s", d)
	}
	var total time.Duration
	const n = 20
	for range n {
		total += invoke()
	}
	if total > n*100*time.Millisecond {
		t.Errorf("%d requests with Redis known down took %v, want no wait on Redis (%v at most)", n, total, n*100*time.Millisecond)
	}
	t.Logf("with Redis blackholed: %d requests after the first took %v", n, total)
}

// limitedGateway gives srv provider oai, a mock OpenAI upstream whose key
// is upKey, and returns a new key of owner's with an RPM limit (too high
// to reach), so every gateway request goes through the limiter.
func limitedGateway(t *testing.T, srv *server, owner, upKey string) string {
	t.Helper()
	up := providertest.NewOpenAI(t)
	up.AddKey(upKey)
	for _, c := range []struct {
		path string
		body map[string]any
	}{
		{"/api/v1/orgs/acme/providers", map[string]any{"name": "oai", "type": "openai", "base_url": up.URL + "/v1"}},
		{"/api/v1/orgs/acme/providers/oai/keys", map[string]any{"api_key": upKey}},
	} {
		if resp, out := srv.call(t, "POST", c.path, owner, c.body); resp.StatusCode != http.StatusCreated {
			t.Fatalf("POST %s = %d %s", c.path, resp.StatusCode, out)
		}
	}
	resp, out := srv.call(t, "POST", "/api/v1/api-keys", owner, map[string]any{"name": "limited", "permissions": []string{"gateway:invoke"}, "rate_limit_rpm": 100000})
	var limited struct{ Key string }
	if resp.StatusCode != http.StatusCreated || json.Unmarshal(out, &limited) != nil {
		t.Fatalf("create a key with limits = %d %s", resp.StatusCode, out)
	}
	return limited.Key
}

// holeProxy forwards TCP connections to a Redis until it is told to
// blackhole them: from then on it keeps every connection, old and new,
// open and forwards nothing either way (a partition, a host gone quiet).
// mend ends the partition: the connections it held are closed, as a
// partition's are once TCP gives up, and new ones are forwarded again.
type holeProxy struct {
	ln    net.Listener
	to    string
	mu    sync.Mutex
	holed bool
	conns []net.Conn
}

func newHoleProxy(t *testing.T, to string) *holeProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &holeProxy{ln: ln, to: to}
	t.Cleanup(func() { ln.Close(); p.mend() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			p.conns = append(p.conns, c)
			holed := p.holed
			p.mu.Unlock()
			if holed {
				continue
			}
			up, err := net.Dial("tcp", to)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, up)
			p.mu.Unlock()
			go p.pipe(up, c)
			go p.pipe(c, up)
		}
	}()
	return p
}

// pipe copies src to dst until either closes, dropping what it reads
// while the proxy is holed.
func (p *holeProxy) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if err != nil {
			dst.Close()
			return
		}
		p.mu.Lock()
		holed := p.holed
		p.mu.Unlock()
		if holed {
			continue
		}
		if _, err := dst.Write(buf[:n]); err != nil {
			src.Close()
			return
		}
	}
}

func (p *holeProxy) addr() string { return p.ln.Addr().String() }

func (p *holeProxy) hole() {
	p.mu.Lock()
	p.holed = true
	p.mu.Unlock()
}

func (p *holeProxy) mend() {
	p.mu.Lock()
	conns := p.conns
	p.conns, p.holed = nil, false
	p.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
}

// TestRedisBlackholedMidway cuts serve off from a Redis it was using, by
// a partition rather than a refusal: pooled connections stay open and
// nothing answers on them (docs/gateway.md: no request waits on a Redis
// known to be down). The requests on their way to Redis as it goes quiet
// wait about a second at most, once; the next ones are decided by the
// policy at once (local: served; refuse: 503); and once the partition
// ends, limits are counted in Redis again within seconds.
func TestRedisBlackholedMidway(t *testing.T) {
	if testing.Short() {
		t.Skip("waits out Redis timeouts; skipped with -short")
	}
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Skip("redis-server not installed")
	}
	t.Parallel()
	for _, policy := range []string{"local", "refuse"} {
		t.Run(policy, func(t *testing.T) {
			t.Parallel()
			rs := startPrivateRedis(t)
			proxy := newHoleProxy(t, "127.0.0.1:"+rs.port)
			dir := t.TempDir()
			owner := setupOwner(t, noEnv, "--data-dir", dir)
			srv := startServe(t, dir, "--redis-url", "redis://"+proxy.addr()+"/0", "--limits-when-redis-down", policy)
			limited := limitedGateway(t, srv, owner, "sk-redis-midway-upstream-key-000000000")
			invoke := func() (int, time.Duration) { return timedChat(t, srv, limited) }
			redisDown := func() float64 {
				_, out := srv.call(t, "GET", "/metrics", "", nil)
				v, _ := metricValue(out, "keybridge_gateway_limits_redis_down")
				return v
			}
			for range 5 {
				if st, _ := invoke(); st != http.StatusOK {
					t.Fatalf("with Redis up = %d, want 200", st)
				}
			}
			// A key with a limit it reaches, too small for leases: Redis
			// keeps its count through the partition.
			const small, before = 10, 4
			_, smallKey := newLimitedKey(t, srv.url, owner, map[string]any{"rate_limit_rpm": small})
			admitted := func(n int) int {
				ok := 0
				for range n {
					if a := chatOnce(srv.url, smallKey, `{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}`); a.status == http.StatusOK {
						ok++
					}
				}
				return ok
			}
			if got := admitted(before); got != before {
				t.Fatalf("a key with an RPM limit of %d, Redis up: %d of %d admitted", small, got, before)
			}

			proxy.hole()
			want := http.StatusOK
			if policy == "refuse" {
				want = http.StatusServiceUnavailable
			}
			// Until the key's lease ends (a second at most) requests
			// are admitted from it; then one call to Redis finds it
			// quiet, and waits out its bound.
			var slowest, rest time.Duration
			var decided int
			start := time.Now()
			for decided < 20 {
				st, d := invoke()
				if st == want && redisDown() == 1 {
					decided++
					rest += d
				} else if st != http.StatusOK {
					t.Fatalf("Redis blackholed, --limits-when-redis-down %s: %d, want 200 (from the lease) or %d", policy, st, want)
				}
				slowest = max(slowest, d)
				if time.Since(start) > 10*time.Second {
					t.Fatalf("10 s after Redis went quiet: %d requests decided by the policy, keybridge_gateway_limits_redis_down %v", decided, redisDown())
				}
			}
			if slowest > 1500*time.Millisecond {
				t.Errorf("the slowest request with Redis blackholed took %v, want about a second at most", slowest)
			}
			if rest > 20*100*time.Millisecond {
				t.Errorf("20 requests with Redis known down took %v, want no wait on Redis", rest)
			}
			wantDown := small // counted afresh in this process
			if policy == "refuse" {
				wantDown = 0
			}
			if got := admitted(small + 5); got != wantDown {
				t.Errorf("a key with an RPM limit of %d, Redis blackholed: %d of %d admitted, want %d", small, got, small+5, wantDown)
			}

			proxy.mend()
			back := time.Now()
			for {
				st, _ := invoke()
				if st == http.StatusOK && redisDown() == 0 {
					break
				}
				if time.Since(back) > 10*time.Second {
					t.Fatalf("10 s after the partition ended: %d, keybridge_gateway_limits_redis_down %v", st, redisDown())
				}
				time.Sleep(20 * time.Millisecond)
			}
			// Back on Redis's count, which the partition kept; what this
			// replica counted meanwhile is not carried over.
			if got := admitted(small + 5); got != small-before {
				t.Errorf("a key with an RPM limit of %d, %d admitted in Redis before the partition: %d of %d admitted after it, want %d",
					small, before, got, small+5, small-before)
			}
			t.Logf("--limits-when-redis-down %s: slowest request %v as Redis went quiet, then 20 in %v; back on Redis %v after the partition ended",
				policy, slowest.Round(time.Millisecond), rest.Round(time.Millisecond), time.Since(back).Round(time.Millisecond))
		})
	}
}

// timedChat sends one chat completion through srv's gateway with key,
// and returns its status and how long it took, the body read.
func timedChat(t *testing.T, srv *server, key string) (int, time.Duration) {
	t.Helper()
	req, _ := http.NewRequest("POST", srv.url+"/gateway/oai/chat/completions",
		strings.NewReader(`{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}`))
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	client := &http.Client{Timeout: 10 * time.Second}
	start := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("gateway: %v", err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, time.Since(start)
}
