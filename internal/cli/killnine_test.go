package cli_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/keybridge/keybridge/internal/cli"
)

// TestKillNineKeepsAcknowledgedKeys builds the binary, creates keys through
// it from a client loop, kills the process with SIGKILL mid-stream, starts it
// again on the same data directory, and checks that every key whose 201 the
// client received exists: an answered write is a durable write.
func TestKillNineKeepsAcknowledgedKeys(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and kills it; skipped with -short")
	}
	bin := filepath.Join(t.TempDir(), "keybridge")
	build := exec.Command("go", "build", "-o", bin, "github.com/keybridge/keybridge/cmd/keybridge")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	dir := t.TempDir()
	var stdout, stderr bytes.Buffer
	err := cli.Run(context.Background(), []string{"keybridge", "setup", "--data-dir", dir, "--org", "acme", "--email", "a@acme.test"},
		noEnv, strings.NewReader(""), &stdout, &stderr)
	if err != nil {
		t.Fatalf("setup: %v\n%s", err, stderr.String())
	}
	owner := strings.TrimSpace(stdout.String())

	start := func() (*exec.Cmd, string) {
		cmd := exec.Command(bin, "serve", "--listen", "127.0.0.1:0", "--data-dir", dir)
		logs := &syncBuffer{}
		cmd.Stderr = logs
		// No KEYBRIDGE_* from the test's environment: only the flags count.
		cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		deadline := time.Now().Add(20 * time.Second)
		for {
			if url := listeningURL(logs.String()); url != "" {
				waitHealthy(t, url)
				return cmd, url
			}
			if time.Now().After(deadline) {
				t.Fatalf("serve did not start:\n%s", logs)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	cmd, url := start()
	var mu sync.Mutex
	var acked []string
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		client := &http.Client{Timeout: 5 * time.Second}
		for i := 0; ; i++ {
			body := strings.NewReader(`{"name":"k","permissions":["gateway:invoke"]}`)
			req, _ := http.NewRequest("POST", url+"/api/v1/api-keys", body)
			req.Header.Set("Authorization", "Bearer "+owner)
			req.Header.Set("Content-Type", "application/json")
			resp, err := client.Do(req)
			if err != nil {
				return // the server is gone
			}
			var k struct{ ID string }
			json.NewDecoder(resp.Body).Decode(&k)
			resp.Body.Close()
			if resp.StatusCode == http.StatusCreated {
				mu.Lock()
				acked = append(acked, k.ID)
				mu.Unlock()
			}
		}
	}()
	// Let a stream of writes run, then kill in the middle of it.
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		n := len(acked)
		mu.Unlock()
		if n >= 40 || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	<-stopped
	mu.Lock()
	ids := append([]string(nil), acked...)
	mu.Unlock()
	if len(ids) < 10 {
		t.Fatalf("only %d keys were created before the kill; the test proves nothing", len(ids))
	}

	_, url = start()
	for _, id := range ids {
		resp, body := call(t, url, "GET", "/api/v1/api-keys/"+id, owner, nil)
		if resp.StatusCode != http.StatusOK {
			t.Errorf("key %s, acknowledged before the kill, is gone after it: %d %s", id, resp.StatusCode, body)
		}
	}
	t.Logf("%d acknowledged keys survived SIGKILL", len(ids))
}
