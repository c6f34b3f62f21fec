package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"
)

// keybridgeRun is a started and provisioned "keybridge serve".
type keybridgeRun struct {
	proc    *proc
	token   string // the owner's kb_ key
	logPath string
}

// startKeybridge builds the keybridge binary from repo, creates the org
// with "keybridge setup" on a fresh data dir, starts "keybridge serve" on a
// free loopback port and registers the mock as provider "mock" with one
// upstream key, all through the real CLI and API.
// kbOptions are how Keybridge is run: its log level, whether the caller's
// key has limits, and Redis for the limit counters.
type kbOptions struct {
	logLevel string
	limits   bool
	redis    string
}

func startKeybridge(ctx context.Context, repo, tmp, mockAddr, upstreamKey string, o kbOptions) (*keybridgeRun, error) {
	logLevel := o.logLevel
	bin := filepath.Join(tmp, "keybridge")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/keybridge")
	build.Dir = repo
	if out, err := build.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("go build ./cmd/keybridge in %s: %v\n%s", repo, err, out)
	}
	dataDir := filepath.Join(tmp, "kb-data")
	mk := make([]byte, 32)
	rand.Read(mk)
	env := append(os.Environ(), "KEYBRIDGE_MASTER_KEY="+base64.StdEncoding.EncodeToString(mk),
		"KEYBRIDGE_DATA_DIR="+dataDir, "KEYBRIDGE_LOG_LEVEL="+logLevel)

	setup := exec.CommandContext(ctx, bin, "setup", "--data-dir", dataDir, "--org", "bench", "--email", "bench@bench.test")
	setup.Env = env
	var setupErr bytes.Buffer
	setup.Stderr = &setupErr
	out, err := setup.Output() // stdout is a pipe, so it holds the key alone
	if err != nil {
		return nil, fmt.Errorf("keybridge setup: %v\n%s", err, setupErr.Bytes())
	}
	token := strings.TrimSpace(string(out))
	if !strings.HasPrefix(token, "kb_") {
		return nil, fmt.Errorf("keybridge setup printed no kb_ key (got %d bytes)", len(out))
	}

	// The log goes to a file, not a pipe the harness would have to drain
	// while it measures: the per-request log line is part of what
	// Keybridge costs, reading it back is not.
	logPath := filepath.Join(tmp, "keybridge.log")
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	args := []string{"serve", "--data-dir", dataDir, "--listen", "127.0.0.1:0", "--log-level", logLevel}
	if o.redis != "" {
		args = append(args, "--redis-url", o.redis)
	}
	serve := exec.Command(bin, args...)
	serve.Env = env
	serve.Stdout, serve.Stderr = logf, logf
	serve.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := serve.Start(); err != nil {
		return nil, fmt.Errorf("start keybridge serve: %w", err)
	}
	p := &proc{name: "keybridge", cmd: serve, pid: serve.Process.Pid, done: make(chan struct{})}
	go func() { serve.Wait(); close(p.done) }()
	kb := &keybridgeRun{proc: p, token: token, logPath: logPath}
	if p.addr, err = waitListening(logPath, p.done, 30*time.Second); err != nil {
		p.stop()
		return nil, fmt.Errorf("keybridge serve: %v\n%s", err, tailFile(logPath, 2000))
	}
	if err := waitHTTP(ctx, "http://"+p.addr+"/readyz", 10*time.Second); err != nil {
		p.stop()
		return nil, err
	}
	base := "http://" + p.addr + "/api/v1/orgs/bench/providers"
	if err := kb.post(ctx, base, map[string]any{"name": "mock", "type": "openai", "base_url": "http://" + mockAddr + "/v1"}); err != nil {
		p.stop()
		return nil, fmt.Errorf("create provider: %w", err)
	}
	if err := kb.post(ctx, base+"/mock/keys", map[string]any{"api_key": upstreamKey, "name": "bench"}); err != nil {
		p.stop()
		return nil, fmt.Errorf("add provider key: %w", err)
	}
	if o.limits {
		var key struct {
			Key string `json:"key"`
		}
		err := kb.postInto(ctx, "http://"+p.addr+"/api/v1/api-keys", map[string]any{
			"name": "bench-limited", "permissions": []string{"gateway:invoke"},
			"rate_limit_rpm": 1_000_000_000, "rate_limit_tpm": 1_000_000_000_000,
			"token_budget": 1_000_000_000_000_000, "budget_period": "month",
		}, &key)
		if err != nil || !strings.HasPrefix(key.Key, "kb_") {
			p.stop()
			return nil, fmt.Errorf("create a key with limits: %v", err)
		}
		kb.token = key.Key
	}
	return kb, nil
}

var listeningRE = regexp.MustCompile(`"msg":"listening".*?"addr":"([^"]+)"`)

// waitListening reads serve's log until it says where it listens.
func waitListening(path string, exited <-chan struct{}, d time.Duration) (string, error) {
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		b, _ := os.ReadFile(path)
		if m := listeningRE.FindSubmatch(b); m != nil {
			return string(m[1]), nil
		}
		select {
		case <-exited:
			return "", fmt.Errorf("exited before listening")
		case <-time.After(50 * time.Millisecond):
		}
	}
	return "", fmt.Errorf("no \"listening\" log line within %s", d)
}

func (kb *keybridgeRun) post(ctx context.Context, url string, body any) error {
	return kb.postInto(ctx, url, body, nil)
}

// postInto is post, decoding the answer into out when out is not nil.
func (kb *keybridgeRun) postInto(ctx context.Context, url string, body any, out any) error {
	b, _ := json.Marshal(body)
	req, _ := http.NewRequestWithContext(ctx, "POST", url, bytes.NewReader(b))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+kb.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	rb, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusCreated {
		return fmt.Errorf("POST %s: status %d: %s", url, resp.StatusCode, bytes.TrimSpace(rb))
	}
	if out != nil {
		return json.Unmarshal(rb, out)
	}
	return nil
}

func tailFile(path string, n int) string {
	b, _ := os.ReadFile(path)
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}
