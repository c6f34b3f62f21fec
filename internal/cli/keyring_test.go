package cli_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keybridge/keybridge/internal/cli"
	"github.com/keybridge/keybridge/internal/secrets"
	"github.com/keybridge/keybridge/internal/store/sqlite"
)

// keyringDir makes a data dir holding a generated master key and a ring
// with one sealed value's worth of history: version 1 created, then
// rotated to version 2. It returns the dir and the master key.
func keyringDir(t *testing.T) (string, []byte) {
	t.Helper()
	dir := t.TempDir()
	key, err := secrets.NewMasterKey()
	if err != nil {
		t.Fatal(err)
	}
	writeKey(t, filepath.Join(dir, "master.key"), key)
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(dir, "keybridge.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	r, err := secrets.OpenRing(ctx, st, key, secrets.Options{})
	if err != nil {
		t.Fatalf("OpenRing: %v", err)
	}
	if _, err := r.Rotate(ctx); err != nil {
		t.Fatalf("Rotate: %v", err)
	}
	return dir, key
}

func writeKey(t *testing.T, path string, key []byte) {
	t.Helper()
	if err := os.WriteFile(path, []byte(base64.StdEncoding.EncodeToString(key)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
}

// runCLI runs keybridge with args and env, returning stdout and stderr.
func runCLI(t *testing.T, env map[string]string, args ...string) (string, string, error) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	err := cli.Run(context.Background(), append([]string{"keybridge"}, args...), func(k string) string { return env[k] },
		strings.NewReader(""), &stdout, &stderr)
	return stdout.String(), stderr.String(), err
}

func TestKeyringStatus(t *testing.T) {
	dir, _ := keyringDir(t)
	out, _, err := runCLI(t, nil, "keyring", "status", "--data-dir", dir)
	if err != nil {
		t.Fatalf("keyring status: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 {
		t.Fatalf("keyring status printed %d lines, want a header and two versions:\n%s", len(lines), out)
	}
	if got := strings.Fields(lines[0]); strings.Join(got, " ") != "VERSION PRIMARY CREATED SECRETS" {
		t.Errorf("status header = %q", lines[0])
	}
	for i, want := range []struct {
		version, secrets string
		primary          bool
	}{{"1", "0", false}, {"2", "0", true}} {
		fields := strings.Fields(lines[i+1])
		primary := len(fields) == 4 && fields[1] == "yes"
		if fields[0] != want.version || primary != want.primary || fields[len(fields)-1] != want.secrets {
			t.Errorf("status line %q, want version %s, primary %v, %s secrets", lines[i+1], want.version, want.primary, want.secrets)
		}
	}

	out, _, err = runCLI(t, map[string]string{"KEYBRIDGE_DATA_DIR": dir}, "keyring", "status", "--json")
	if err != nil {
		t.Fatalf("keyring status --json: %v", err)
	}
	var got struct {
		Primary  int `json:"primary"`
		Versions []struct {
			Version   int    `json:"version"`
			Primary   bool   `json:"primary"`
			CreatedAt string `json:"created_at"`
			Sealed    int    `json:"sealed"`
		} `json:"versions"`
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("status --json is not JSON: %v\n%s", err, out)
	}
	if got.Primary != 2 || len(got.Versions) != 2 || got.Versions[0].Version != 1 || got.Versions[0].Primary ||
		!got.Versions[1].Primary || got.Versions[1].CreatedAt == "" {
		t.Errorf("status --json = %+v, want versions 1 and 2, 2 primary, with creation times", got)
	}
}

func TestKeyringRotateRewrap(t *testing.T) {
	dir, key := keyringDir(t)
	out, _, err := runCLI(t, nil, "keyring", "rotate", "--data-dir", dir)
	if err != nil || !strings.Contains(out, "version 3 is now primary") {
		t.Fatalf("keyring rotate = %q, %v; want version 3 primary", out, err)
	}
	out, _, err = runCLI(t, nil, "keyring", "rewrap", "--data-dir", dir)
	if err != nil || !strings.Contains(out, "Re-encrypted 0 secrets") {
		t.Fatalf("keyring rewrap = %q, %v; want 0 re-encrypted", out, err)
	}
	// The commands act on the same database the ring lives in.
	st, err := sqlite.Open(context.Background(), filepath.Join(dir, "keybridge.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	r, err := secrets.OpenRing(context.Background(), st, key, secrets.Options{})
	if err != nil || r.Primary() != 3 {
		t.Fatalf("after keyring rotate: OpenRing primary %v, %v; want 3", r.Primary(), err)
	}
}

func TestKeyringChangeMaster(t *testing.T) {
	ctx := context.Background()
	for _, tt := range []struct {
		name string
		// how the current and the new key are given
		env  func(dir string, old, new []byte) map[string]string
		args func(dir string, new []byte) []string
		// whether <data-dir>/master.key must then hold the new key
		fileUpdated bool
	}{
		{
			name: "generated key file, new key from the environment",
			env: func(dir string, old, new []byte) map[string]string {
				return map[string]string{"KEYBRIDGE_NEW_MASTER_KEY": base64.StdEncoding.EncodeToString(new)}
			},
			args:        func(dir string, new []byte) []string { return nil },
			fileUpdated: true,
		},
		{
			name: "key from the environment, new key from a file",
			env: func(dir string, old, new []byte) map[string]string {
				return map[string]string{"KEYBRIDGE_MASTER_KEY": base64.StdEncoding.EncodeToString(old)}
			},
			args: func(dir string, new []byte) []string {
				path := filepath.Join(dir, "new.key")
				os.WriteFile(path, []byte(base64.StdEncoding.EncodeToString(new)), 0o600)
				return []string{"--new-master-key-file", path}
			},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir, old := keyringDir(t)
			newKey, _ := secrets.NewMasterKey()
			args := append([]string{"keyring", "change-master", "--data-dir", dir}, tt.args(dir, newKey)...)
			if _, stderr, err := runCLI(t, tt.env(dir, old, newKey), args...); err != nil {
				t.Fatalf("keyring change-master: %v\n%s", err, stderr)
			}
			b, _ := os.ReadFile(filepath.Join(dir, "master.key"))
			inFile, _ := base64.StdEncoding.DecodeString(strings.TrimSpace(string(b)))
			if want := map[bool][]byte{true: newKey, false: old}[tt.fileUpdated]; !bytes.Equal(inFile, want) {
				t.Errorf("master.key updated = %v, want %v", bytes.Equal(inFile, newKey), tt.fileUpdated)
			}

			st, err := sqlite.Open(ctx, filepath.Join(dir, "keybridge.db"))
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			if _, err := secrets.OpenRing(ctx, st, old, secrets.Options{}); !errors.Is(err, secrets.ErrWrongMasterKey) {
				t.Errorf("OpenRing(old key) = %v, want ErrWrongMasterKey", err)
			}
			if _, err := secrets.OpenRing(ctx, st, newKey, secrets.Options{}); err != nil {
				t.Errorf("OpenRing(new key) = %v, want nil", err)
			}
		})
	}
}

func TestKeyringWrongMasterKey(t *testing.T) {
	dir, _ := keyringDir(t)
	other, _ := secrets.NewMasterKey()
	env := map[string]string{"KEYBRIDGE_MASTER_KEY": base64.StdEncoding.EncodeToString(other)}
	_, _, err := runCLI(t, env, "keyring", "status", "--data-dir", dir)
	if !errors.Is(err, secrets.ErrWrongMasterKey) || cli.ExitCode(err) != 1 {
		t.Errorf("keyring status with another master key = %v (exit %d), want ErrWrongMasterKey, exit 1", err, cli.ExitCode(err))
	}
}

// TestKeyringNeverCreatesMasterKey: without a master key the commands fail
// rather than generate one, which would not open the existing secrets, and
// leave no empty database behind.
func TestKeyringNeverCreatesMasterKey(t *testing.T) {
	dir := t.TempDir()
	_, _, err := runCLI(t, nil, "keyring", "status", "--data-dir", dir)
	if err == nil {
		t.Fatal("keyring status without a master key = nil, want an error")
	}
	for _, name := range []string{"master.key", "keybridge.db"} {
		if _, statErr := os.Stat(filepath.Join(dir, name)); !errors.Is(statErr, os.ErrNotExist) {
			t.Errorf("keyring status created %s (stat: %v)", name, statErr)
		}
	}
}

func TestKeyringUsage(t *testing.T) {
	dir, _ := keyringDir(t)
	key := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32))
	for _, tt := range []struct {
		name string
		env  map[string]string
		args []string
	}{
		{"no command", nil, []string{"keyring"}},
		{"unknown command", nil, []string{"keyring", "spin"}},
		{"unknown flag", nil, []string{"keyring", "status", "--data-dir", dir, "--colour"}},
		{"json on rotate", nil, []string{"keyring", "rotate", "--data-dir", dir, "--json"}},
		{"extra argument", nil, []string{"keyring", "status", "--data-dir", dir, "now"}},
		{"change-master without a new key", nil, []string{"keyring", "change-master", "--data-dir", dir}},
		{"change-master with two new keys", map[string]string{"KEYBRIDGE_NEW_MASTER_KEY": key},
			[]string{"keyring", "change-master", "--data-dir", dir, "--new-master-key-file", filepath.Join(dir, "master.key")}},
		{"postgres URL that is not", nil, []string{"keyring", "status", "--database-url", "mysql://x", "--master-key-file", filepath.Join(dir, "master.key")}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := runCLI(t, tt.env, tt.args...)
			if code := cli.ExitCode(err); err == nil || code != 2 {
				t.Errorf("keybridge %s = %v (exit %d), want a usage error (exit 2)", strings.Join(tt.args, " "), err, code)
			}
		})
	}
	// A rejected change-master changed nothing.
	if out, _, err := runCLI(t, nil, "keyring", "status", "--data-dir", dir); err != nil || !strings.Contains(out, "yes") {
		t.Errorf("keyring status after usage errors = %q, %v", out, err)
	}
}

// TestKeyringOutputHasNoKey: nothing the commands print holds the master
// key or a data key's wrap.
func TestKeyringOutputHasNoKey(t *testing.T) {
	dir, key := keyringDir(t)
	newKey, _ := secrets.NewMasterKey()
	env := map[string]string{"KEYBRIDGE_NEW_MASTER_KEY": base64.StdEncoding.EncodeToString(newKey)}
	var all strings.Builder
	for _, args := range [][]string{
		{"keyring", "status", "--data-dir", dir},
		{"keyring", "status", "--json", "--data-dir", dir},
		{"keyring", "rotate", "--data-dir", dir, "--log-level", "debug"},
		{"keyring", "rewrap", "--data-dir", dir, "--log-level", "debug"},
		{"keyring", "change-master", "--data-dir", dir, "--log-level", "debug"},
	} {
		out, errOut, err := runCLI(t, env, args...)
		if err != nil {
			t.Fatalf("keybridge %s: %v", strings.Join(args, " "), err)
		}
		all.WriteString(out + errOut)
	}
	for _, k := range [][]byte{key, newKey} {
		for _, enc := range []string{base64.StdEncoding.EncodeToString(k), string(k)} {
			if strings.Contains(all.String(), enc) {
				t.Errorf("output holds a master key")
			}
		}
	}
}

// TestServeKeepsRingWithoutMasterKey: serve generates a master key only for
// a database with no key ring yet. When master.key is gone from a data dir
// whose database holds a ring, a new key could not open it: serve refuses
// to start and leaves the data dir as it was, so the real key can be put
// back.
func TestServeKeepsRingWithoutMasterKey(t *testing.T) {
	dir, _ := keyringDir(t)
	path := filepath.Join(dir, "master.key")
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	_, _, err := runCLI(t, nil, "serve", "--listen", "127.0.0.1:0", "--data-dir", dir)
	if err == nil {
		t.Fatal("serve without the master key of an existing ring = nil, want an error")
	}
	if !strings.Contains(err.Error(), "master") {
		t.Errorf("serve = %v, want an error that names the missing master key", err)
	}
	if _, statErr := os.Stat(path); !errors.Is(statErr, os.ErrNotExist) {
		t.Errorf("serve created %s for a database that already has a key ring (stat: %v)", path, statErr)
	}
}

// TestServeRefusesBadMasterKeyFirst: a master key that is given but cannot
// be used (malformed, a missing file, two of them) refuses serve before the
// database is opened, so nothing is created or migrated.
func TestServeRefusesBadMasterKeyFirst(t *testing.T) {
	key, _ := secrets.NewMasterKey()
	good := base64.StdEncoding.EncodeToString(key)
	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
		exit int
	}{
		{"malformed", map[string]string{"KEYBRIDGE_MASTER_KEY": "not a key"}, nil, 1},
		{"missing file", nil, []string{"--master-key-file", filepath.Join(t.TempDir(), "absent.key")}, 1},
		{"both sources", map[string]string{"KEYBRIDGE_MASTER_KEY": good}, []string{"--master-key-file", filepath.Join(t.TempDir(), "other.key")}, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			args := append([]string{"serve", "--listen", "127.0.0.1:0", "--data-dir", dir}, tc.args...)
			// A serve that wrongly starts is stopped rather than left running.
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			err := cli.Run(ctx, append([]string{"keybridge"}, args...), func(k string) string { return tc.env[k] },
				strings.NewReader(""), io.Discard, io.Discard)
			if err == nil || cli.ExitCode(err) != tc.exit {
				t.Fatalf("serve = %v (exit %d), want an error with exit %d", err, cli.ExitCode(err), tc.exit)
			}
			for _, name := range []string{"master.key", "keybridge.db"} {
				if _, statErr := os.Stat(filepath.Join(dir, name)); !errors.Is(statErr, os.ErrNotExist) {
					t.Errorf("serve created %s (stat: %v)", name, statErr)
				}
			}
		})
	}
}
