package cli_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keybridge/keybridge/internal/apikey"
	"github.com/keybridge/keybridge/internal/cli"
	"github.com/keybridge/keybridge/internal/testsupport"
)

var update = flag.Bool("update", false, "rewrite golden files")

// noEnv is a process environment with nothing set.
func noEnv(string) string { return "" }

func envOf(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

// TestHelp pins the help of the command and of the subcommands this file's
// owner keeps, so a changed flag or default shows up in review.
func TestHelp(t *testing.T) {
	for _, c := range []struct {
		name string
		args []string
	}{
		{"keybridge", []string{"keybridge", "-h"}},
		{"serve", []string{"keybridge", "serve", "-h"}},
		{"setup", []string{"keybridge", "setup", "-h"}},
		{"migrate", []string{"keybridge", "migrate", "-h"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			err := cli.Run(context.Background(), c.args, noEnv, strings.NewReader(""), &stdout, &stderr)
			if err != nil {
				t.Fatalf("Run(%q) = %v, want nil", c.args, err)
			}
			got := stdout.String() + stderr.String()
			golden := filepath.Join("testdata", "help", c.name+".golden")
			if *update {
				if err := os.MkdirAll(filepath.Dir(golden), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("read golden file (create it with -update): %v", err)
			}
			if got != string(want) {
				t.Errorf("help of %q changed; rerun with -update if meant.\ngot:\n%s\nwant:\n%s", c.args, got, want)
			}
		})
	}
}

func TestUsageErrors(t *testing.T) {
	dir := t.TempDir()
	for _, args := range [][]string{
		{"keybridge", "serve", "--no-such-flag"},
		{"keybridge", "serve", "--egress-deny", "10.0.0.0/8,not-a-cidr", "--data-dir", dir},
		{"keybridge", "serve", "--log-level", "loud", "--data-dir", dir},
		{"keybridge", "serve", "stray"},
		{"keybridge", "setup", "--org", "acme", "--data-dir", dir},
		{"keybridge", "setup", "--email", "a@acme.test", "--data-dir", dir},
		{"keybridge", "migrate", "--database-url", "mysql://x", "--data-dir", dir},
		// Values serve can only use after opening the database are still
		// refused before it is created, and before a master key is.
		{"keybridge", "serve", "--listen", "bogus", "--data-dir", dir},
		{"keybridge", "serve", "--listen", "127.0.0.1:99999", "--data-dir", dir},
		{"keybridge", "serve", "--listen", "127.0.0.1:0", "--metrics-listen", "9090", "--data-dir", dir},
		{"keybridge", "serve", "--listen", "127.0.0.1:0", "--public-url", "keybridge.example.test", "--data-dir", dir},
		{"keybridge", "serve", "--listen", "127.0.0.1:0", "--redis-url", "http://127.0.0.1:6379", "--data-dir", dir},
		{"keybridge", "serve", "--listen", "127.0.0.1:0", "--limits-when-redis-down", "wait", "--data-dir", dir},
		{"keybridge", "serve", "--listen", "127.0.0.1:0", "--gateway-max-body", "-1", "--data-dir", dir},
		{"keybridge", "serve", "--listen", "127.0.0.1:0", "--max-conns", "-1", "--data-dir", dir},
		{"keybridge", "serve", "--listen", "127.0.0.1:0", "--api-body-timeout", "0s", "--data-dir", dir},
		{"keybridge", "serve", "--listen", "127.0.0.1:0", "--db-outage-grace", "-1s", "--data-dir", dir},
		{"keybridge", "serve", "--listen", "127.0.0.1:0", "--shutdown-timeout", "30", "--data-dir", dir},
		{"keybridge", "serve", "--listen", "127.0.0.1:0", "--shutdown-timeout", "-1s", "--data-dir", dir},
		{"keybridge", "serve", "--listen", "127.0.0.1:0", "--usage-retention", "-24h", "--data-dir", dir},
		{"keybridge", "serve", "--listen", "127.0.0.1:0", "--audit-retention", "-1h", "--data-dir", dir},
		{"keybridge", "serve", "--listen", "127.0.0.1:0", "--gateway-header-timeout", "-1s", "--data-dir", dir},
		{"keybridge", "serve", "--listen", "127.0.0.1:0", "--gateway-idle-timeout", "-1s", "--data-dir", dir},
	} {
		var stdout, stderr bytes.Buffer
		err := cli.Run(context.Background(), args, noEnv, strings.NewReader(""), &stdout, &stderr)
		if err == nil || cli.ExitCode(err) != 2 {
			t.Errorf("Run(%q) = %v (exit %d), want a usage error (exit 2)", args, err, cli.ExitCode(err))
		}
	}
	// A database URL of another engine is named as the mistake, not the
	// master key PostgreSQL would need.
	var stdout, stderr bytes.Buffer
	err := cli.Run(context.Background(), []string{"keybridge", "serve", "--database-url", "mysql://x", "--data-dir", dir}, noEnv, strings.NewReader(""), &stdout, &stderr)
	if err == nil || !strings.Contains(err.Error(), "--database-url must be a postgres:// URL") {
		t.Errorf("serve --database-url mysql://x = %v, want an error about --database-url", err)
	}
	for _, name := range []string{"keybridge.db", "master.key"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err == nil {
			t.Errorf("a usage error still created %s", name)
		}
	}
}

// TestServePortTaken starts serve on an address already in use: it stops
// with an error that names the address, before creating a data directory
// (and a master key nobody will use).
func TestServePortTaken(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	dir := filepath.Join(t.TempDir(), "data")
	var stdout, stderr bytes.Buffer
	err = cli.Run(context.Background(), []string{"keybridge", "serve", "--listen", ln.Addr().String(), "--data-dir", dir},
		noEnv, strings.NewReader(""), &stdout, &stderr)
	if err == nil || !strings.Contains(err.Error(), ln.Addr().String()) {
		t.Errorf("serve on a taken address = %v, want an error naming %s", err, ln.Addr())
	}
	if _, err := os.Stat(dir); err == nil {
		t.Error("serve on a taken address created its data directory")
	}
}

func TestSetupCommand(t *testing.T) {
	dir := t.TempDir()
	run := func(stdin string, args ...string) (string, string, error) {
		var stdout, stderr bytes.Buffer
		err := cli.Run(context.Background(), append([]string{"keybridge", "setup", "--data-dir", dir}, args...), noEnv,
			strings.NewReader(stdin), &stdout, &stderr)
		return stdout.String(), stderr.String(), err
	}
	out, errOut, err := run("a password for the owner\n", "--org", "acme", "--email", "admin@acme.test", "--password-stdin")
	if err != nil {
		t.Fatalf("setup: %v\n%s", err, errOut)
	}
	// stdout is not a terminal: the key alone, on its own line.
	key := strings.TrimSuffix(out, "\n")
	if !apikey.Valid(key, apikey.PlatformPrefix) || strings.Contains(key, "\n") {
		t.Fatalf("setup printed %q, want one platform key on its own line", out)
	}
	if strings.Contains(errOut, key) || strings.Contains(errOut, "a password for the owner") {
		t.Error("setup's log holds the key or the password")
	}

	_, _, err = run("", "--org", "acme", "--email", "other@acme.test")
	if err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("second setup of acme = %v, want an error saying it exists", err)
	}
	_, _, err = run("", "--org", "beta", "--email", "x@beta.test", "--password-stdin")
	if err == nil || cli.ExitCode(err) != 2 {
		t.Errorf("--password-stdin with empty stdin = %v, want a usage error", err)
	}
	// Stdin not a terminal and no --password-stdin: no password, and
	// stderr says how to set one.
	out, errOut, err = run("", "--org", "beta", "--email", "boss@beta.test")
	if err != nil || !apikey.Valid(strings.TrimSpace(out), apikey.PlatformPrefix) {
		t.Errorf("setup of a second org = %q, %v; want its key", out, err)
	}
	if !strings.Contains(errOut, "no password") || !strings.Contains(errOut, "/api/v1/users/me/password") {
		t.Errorf("setup without a password said %q; want how to set one (POST /api/v1/users/me/password)", errOut)
	}

	// The key and the password work against a server on the same data.
	srv := startServe(t, dir)
	resp, body := srv.call(t, "GET", "/api/v1/users/me", key, nil)
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"role":"owner"`) {
		t.Errorf("GET /users/me with the setup key = %d %s", resp.StatusCode, body)
	}
	resp, body = srv.call(t, "POST", "/api/v1/auth/login", "", map[string]string{"email": "admin@acme.test", "password": "a password for the owner"})
	if resp.StatusCode != 200 {
		t.Errorf("login with the setup password = %d %s", resp.StatusCode, body)
	}
	if strings.Contains(srv.stdout.String(), "setup?token=") {
		t.Error("serve printed a setup link although setup was done")
	}

	var stdout, stderr bytes.Buffer
	if err := cli.Run(context.Background(), []string{"keybridge", "migrate", "--data-dir", dir}, noEnv, strings.NewReader(""), &stdout, &stderr); err != nil {
		t.Errorf("migrate: %v", err)
	}
}

// server is a "keybridge serve" running in this process.
type server struct {
	url            string
	stdout, stderr *testsupport.SyncBuffer
	stop           func() error
}

// startServe runs serve on a free port over dir, waits for /healthz, and
// stops it when t ends.
func startServe(t *testing.T, dir string, extra ...string) *server {
	t.Helper()
	return startServeEnv(t, noEnv, append([]string{"--listen", "127.0.0.1:0", "--data-dir", dir}, extra...)...)
}

// startServeEnv runs serve with the given environment and flags.
func startServeEnv(t *testing.T, getenv func(string) string, flags ...string) *server {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := &server{stdout: &testsupport.SyncBuffer{}, stderr: &testsupport.SyncBuffer{}}
	done := make(chan error, 1)
	args := append([]string{"keybridge", "serve"}, flags...)
	go func() { done <- cli.Run(ctx, args, getenv, strings.NewReader(""), s.stdout, s.stderr) }()
	var once sync.Once
	var stopErr error
	s.stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case stopErr = <-done:
			case <-time.After(30 * time.Second):
				stopErr = errors.New("serve did not stop within 30 s")
			}
		})
		return stopErr
	}
	t.Cleanup(func() {
		if err := s.stop(); err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for s.url == "" {
		select {
		case err := <-done:
			t.Fatalf("serve stopped: %v\n%s", err, s.stderr)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("serve did not log its address:\n%s", s.stderr)
		}
		s.url = listeningURL(s.stderr.String())
		time.Sleep(10 * time.Millisecond)
	}
	waitHealthy(t, s.url)
	return s
}

// listeningURL finds the address in serve's "listening" log line.
func listeningURL(logs string) string {
	sc := bufio.NewScanner(strings.NewReader(logs))
	for sc.Scan() {
		var l struct{ Msg, Addr string }
		if json.Unmarshal(sc.Bytes(), &l) == nil && l.Msg == "listening" && l.Addr != "" {
			return "http://" + l.Addr
		}
	}
	return ""
}

func waitHealthy(t *testing.T, url string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get(url + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s/healthz never answered 200: %v", url, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (s *server) call(t *testing.T, method, path, key string, body any) (*http.Response, []byte) {
	t.Helper()
	return call(t, s.url, method, path, key, body)
}

func call(t *testing.T, base, method, path, key string, body any) (*http.Response, []byte) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, base+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, out
}

var setupLink = regexp.MustCompile(`(http://\S+)/setup\?token=(\S+)`)

// TestServeEndToEnd starts serve on an empty data directory as a user would,
// completes setup through the printed link, and uses the API.
func TestServeEndToEnd(t *testing.T) {
	dir := t.TempDir()
	srv := startServe(t, dir)

	m := setupLink.FindStringSubmatch(srv.stdout.String())
	if m == nil {
		t.Fatalf("serve printed no setup link; stdout:\n%s", srv.stdout)
	}
	if m[1] != srv.url {
		t.Errorf("setup link points at %s, want %s", m[1], srv.url)
	}
	token := m[2]
	if strings.Contains(srv.stderr.String(), token) {
		t.Error("the setup token is in the log")
	}
	st, err := os.Stat(filepath.Join(dir, "master.key"))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("master.key: %v, mode %v; want a 0600 file", err, st)
	}
	if !strings.Contains(srv.stderr.String(), "generated a master key") {
		t.Error("serve did not say loudly that it generated a master key")
	}

	// The UI's setup page (the single page whose script draws the setup
	// form), then the setup it posts.
	resp, page := srv.call(t, "GET", "/setup?token="+token, "", nil)
	if resp.StatusCode != 200 || !strings.Contains(string(page), `src="/ui/js/app.js"`) || resp.Header.Get("Referrer-Policy") != "no-referrer" {
		t.Errorf("GET /setup = %d, Referrer-Policy %q", resp.StatusCode, resp.Header.Get("Referrer-Policy"))
	}
	resp, body := srv.call(t, "POST", "/api/v1/setup", "", map[string]string{"token": token, "org": "acme", "email": "admin@acme.test", "password": "end to end password"})
	if resp.StatusCode != 201 {
		t.Fatalf("POST /api/v1/setup = %d %s", resp.StatusCode, body)
	}
	resp, body = srv.call(t, "POST", "/api/v1/setup", "", map[string]string{"token": token, "org": "acme2", "email": "x@acme.test", "password": "end to end password"})
	if resp.StatusCode != 404 {
		t.Errorf("a second setup = %d %s, want 404", resp.StatusCode, body)
	}

	// Log in, make a key, use it.
	jar := &cookieClient{}
	resp, body = jar.do(t, srv.url, "POST", "/api/v1/auth/login", "", map[string]string{"email": "admin@acme.test", "password": "end to end password"})
	if resp.StatusCode != 200 {
		t.Fatalf("login = %d %s", resp.StatusCode, body)
	}
	var login struct {
		CSRF string `json:"csrf_token"`
	}
	json.Unmarshal(body, &login)
	resp, body = jar.do(t, srv.url, "POST", "/api/v1/api-keys", login.CSRF, map[string]any{"name": "e2e", "permissions": []string{"members:read", "gateway:invoke"}})
	if resp.StatusCode != 201 {
		t.Fatalf("create key = %d %s", resp.StatusCode, body)
	}
	var k struct{ Key string }
	json.Unmarshal(body, &k)
	resp, body = srv.call(t, "GET", "/api/v1/orgs/acme/members", k.Key, nil)
	if resp.StatusCode != 200 || !strings.Contains(string(body), "admin@acme.test") {
		t.Errorf("GET members with the new key = %d %s", resp.StatusCode, body)
	}
	for path, want := range map[string]string{"/readyz": `"ready"`, "/metrics": "keybridge_http_requests_total", "/": "Keybridge", "/api/v1/openapi.json": `"openapi"`} {
		resp, body := srv.call(t, "GET", path, "", nil)
		if resp.StatusCode != 200 || !strings.Contains(string(body), want) {
			t.Errorf("GET %s = %d, want 200 with %q", path, resp.StatusCode, want)
		}
		if resp.Header.Get("X-Request-Id") == "" {
			t.Errorf("GET %s: no X-Request-Id", path)
		}
	}

	if err := srv.stop(); err != nil {
		t.Fatalf("serve returned %v on shutdown", err)
	}
	if !strings.Contains(srv.stderr.String(), `"msg":"stopped"`) {
		t.Errorf("serve did not log its orderly stop:\n%s", srv.stderr)
	}
	// A restart keeps everything, and asks for no setup.
	again := startServe(t, dir)
	if strings.Contains(again.stdout.String(), "setup?token=") {
		t.Error("a restarted server printed a setup link")
	}
	resp, body = again.call(t, "GET", "/api/v1/users/me", k.Key, nil)
	if resp.StatusCode != 200 {
		t.Errorf("after a restart the key gets %d %s", resp.StatusCode, body)
	}
}

// TestServeDrainsInFlight checks a graceful shutdown: a request under way
// when the stop comes is answered, not cut. The request's body is sent in
// two halves around the stop, so it is certainly in flight.
func TestServeDrainsInFlight(t *testing.T) {
	dir := t.TempDir()
	srv := startServe(t, dir)
	m := setupLink.FindStringSubmatch(srv.stdout.String())
	if m == nil {
		t.Fatal("no setup link")
	}
	body, _ := json.Marshal(map[string]string{"token": m[2], "org": "acme", "email": "a@acme.test", "password": "drain me please"})
	conn, err := net.Dial("tcp", strings.TrimPrefix(srv.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	half := len(body) / 2
	fmt.Fprintf(conn, "POST /api/v1/setup HTTP/1.1\r\nHost: keybridge\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(body), body[:half])
	time.Sleep(100 * time.Millisecond) // the server reads the headers: the connection is active

	stopped := make(chan error, 1)
	go func() { stopped <- srv.stop() }()
	select {
	case err := <-stopped:
		t.Fatalf("serve stopped (%v) with a request in flight", err)
	case <-time.After(200 * time.Millisecond):
	}
	if _, err := conn.Write(body[half:]); err != nil {
		t.Fatalf("the in-flight request was cut: %v", err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("the in-flight request got no answer: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Errorf("the in-flight setup got %d, want 201", resp.StatusCode)
	}
	if err := <-stopped; err != nil {
		t.Errorf("serve: %v", err)
	}
}

type cookieClient struct{ cookies []*http.Cookie }

func (c *cookieClient) do(t *testing.T, base, method, path, csrf string, body any) (*http.Response, []byte) {
	t.Helper()
	b, _ := json.Marshal(body)
	req, _ := http.NewRequest(method, base+path, bytes.NewReader(b))
	req.Header.Set("Content-Type", "application/json")
	for _, ck := range c.cookies {
		req.AddCookie(ck)
	}
	if csrf != "" {
		req.Header.Set("X-CSRF-Token", csrf)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	c.cookies = append(c.cookies, resp.Cookies()...)
	return resp, out
}

// TestServeFromEnvironment configures serve only through KEYBRIDGE_*
// variables, as a container would.
func TestServeFromEnvironment(t *testing.T) {
	dir := t.TempDir()
	key := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32))
	srv := startServeEnv(t, envOf(map[string]string{
		"KEYBRIDGE_LISTEN":          "127.0.0.1:0",
		"KEYBRIDGE_DATA_DIR":        dir,
		"KEYBRIDGE_PUBLIC_URL":      "https://keybridge.example.test/",
		"KEYBRIDGE_MASTER_KEY":      key,
		"KEYBRIDGE_LOG_LEVEL":       "debug",
		"KEYBRIDGE_EGRESS_DENY":     "10.0.0.0/8, 192.168.0.0/16",
		"KEYBRIDGE_USAGE_RETENTION": "720h",
	}))
	if !strings.Contains(srv.stdout.String(), "https://keybridge.example.test/setup?token=") {
		t.Errorf("the setup link does not use KEYBRIDGE_PUBLIC_URL:\n%s", srv.stdout)
	}
	if _, err := os.Stat(filepath.Join(dir, "keybridge.db")); err != nil {
		t.Errorf("KEYBRIDGE_DATA_DIR was not used: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "master.key")); err == nil {
		t.Error("a master key file was generated although KEYBRIDGE_MASTER_KEY was set")
	}
	if strings.Contains(srv.stderr.String(), key) {
		t.Error("the master key is in the log")
	}

	var stdout, stderr bytes.Buffer
	err := cli.Run(context.Background(), []string{"keybridge", "serve"}, envOf(map[string]string{"KEYBRIDGE_AUDIT_RETENTION": "forever"}),
		strings.NewReader(""), &stdout, &stderr)
	if cli.ExitCode(err) != 2 {
		t.Errorf("a bad KEYBRIDGE_AUDIT_RETENTION = %v, want a usage error", err)
	}
}
