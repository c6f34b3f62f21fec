//go:build linux

package cli_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keybridge/keybridge/internal/apikey"
	"github.com/keybridge/keybridge/internal/cli"
	"github.com/keybridge/keybridge/internal/testsupport"
	"golang.org/x/sys/unix"
)

// openPTY opens a pseudo-terminal: what the test types goes into master,
// and setup reads it from slave as from a terminal.
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Skipf("unlock pseudo-terminal: %v", err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Skipf("name pseudo-terminal: %v", err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("open pseudo-terminal: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return m, s
}

// TestSetupAsksForPasswordOnTerminal: with stdin a terminal and no
// --password-stdin, setup asks for the owner's password twice, without
// echo, and the owner can then sign in with it.
func TestSetupAsksForPasswordOnTerminal(t *testing.T) {
	dir := t.TempDir()
	master, slave := openPTY(t)
	var typed testsupport.SyncBuffer // what the terminal shows (echo)
	go func() {
		buf := make([]byte, 1024)
		for {
			n, err := master.Read(buf)
			typed.Write(buf[:n])
			if err != nil {
				return
			}
		}
	}()
	var stdout bytes.Buffer
	var stderr testsupport.SyncBuffer
	done := make(chan error, 1)
	go func() {
		done <- cli.Run(context.Background(), []string{"keybridge", "setup", "--data-dir", dir, "--org", "acme", "--email", "admin@acme.test"},
			noEnv, slave, &stdout, &stderr)
	}()
	// Type each answer only once its prompt is shown and echo is off, as
	// a person would; typed before that, the terminal would echo it.
	answer := func(prompt, line string) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			tio, err := unix.IoctlGetTermios(int(slave.Fd()), unix.TCGETS)
			if err == nil && strings.Count(stderr.String(), prompt) > 0 && tio.Lflag&unix.ECHO == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("no prompt %q with echo off; prompts so far: %q", prompt, stderr.String())
			}
			time.Sleep(5 * time.Millisecond)
		}
		if _, err := master.Write([]byte(line + "\n")); err != nil {
			t.Fatal(err)
		}
	}
	answer("Owner's password", "terminal password 1")
	answer("The same password again", "terminal password 1")
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("setup: %v\n%s", err, stderr.String())
		}
	case <-time.After(60 * time.Second):
		t.Fatal("setup did not finish")
	}
	if strings.Contains(typed.String(), "terminal password") || strings.Contains(stderr.String(), "terminal password") {
		t.Errorf("the password was echoed: terminal %q, stderr %q", typed.String(), stderr.String())
	}
	key := strings.TrimSpace(stdout.String())
	if !apikey.Valid(key, apikey.PlatformPrefix) {
		t.Fatalf("setup printed %q, want the key", stdout.String())
	}
	if strings.Contains(stderr.String(), "no password") {
		t.Errorf("setup says the owner has no password: %s", stderr.String())
	}
	srv := startServe(t, dir)
	resp, body := srv.call(t, "POST", "/api/v1/auth/login", "", map[string]string{"email": "admin@acme.test", "password": "terminal password 1"})
	if resp.StatusCode != 200 {
		t.Errorf("login with the password typed at setup = %d %s", resp.StatusCode, body)
	}
}
