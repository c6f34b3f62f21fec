package cli_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"net/url"
	"os"
	"strings"
	"testing"

	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" database/sql driver, for the test schema

	"github.com/keybridge/keybridge/internal/apikey"
	"github.com/keybridge/keybridge/internal/cli"
)

// testRedisURL is KEYBRIDGE_TEST_REDIS_URL; without it the test is
// skipped.
func testRedisURL(t *testing.T) string {
	t.Helper()
	url := os.Getenv("KEYBRIDGE_TEST_REDIS_URL")
	if url == "" {
		t.Skip("KEYBRIDGE_TEST_REDIS_URL is not set")
	}
	return url
}

// postgresURL returns the URL of a fresh schema on the server named by
// KEYBRIDGE_TEST_POSTGRES_URL, dropped when t ends; it skips t without one.
func postgresURL(t *testing.T) string {
	t.Helper()
	base := os.Getenv("KEYBRIDGE_TEST_POSTGRES_URL")
	if base == "" {
		t.Skip("KEYBRIDGE_TEST_POSTGRES_URL is not set")
	}
	admin, err := sql.Open("pgx", base)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 8)
	rand.Read(b)
	schema := "kbcli_" + hex.EncodeToString(b)
	if _, err := admin.Exec("CREATE SCHEMA " + schema); err != nil {
		admin.Close()
		t.Fatalf("create schema: %v", err)
	}
	t.Cleanup(func() {
		defer admin.Close()
		if _, err := admin.Exec("DROP SCHEMA " + schema + " CASCADE"); err != nil {
			t.Errorf("drop schema: %v", err)
		}
	})
	u, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String()
}

// TestServePostgres runs migrate, setup and serve against PostgreSQL, as a
// replica would: no data directory, the master key from the environment.
func TestServePostgres(t *testing.T) {
	dbURL := postgresURL(t)
	master := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{9}, 32))
	env := envOf(map[string]string{"KEYBRIDGE_DATABASE_URL": dbURL, "KEYBRIDGE_MASTER_KEY": master})
	run := func(args ...string) (string, error) {
		var stdout, stderr bytes.Buffer
		err := cli.Run(context.Background(), append([]string{"keybridge"}, args...), env, strings.NewReader(""), &stdout, &stderr)
		return stdout.String(), err
	}
	if _, err := run("migrate"); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	out, err := run("setup", "--org", "acme", "--email", "admin@acme.test")
	if err != nil {
		t.Fatalf("setup: %v", err)
	}
	key := strings.TrimSpace(out)
	if !apikey.Valid(key, apikey.PlatformPrefix) {
		t.Fatalf("setup printed %q", out)
	}
	srv := startServeEnv(t, env, "--listen", "127.0.0.1:0", "--data-dir", t.TempDir())
	if strings.Contains(srv.stdout.String(), "setup?token=") {
		t.Error("serve printed a setup link although setup was done")
	}
	resp, body := srv.call(t, "GET", "/api/v1/users/me", key, nil)
	if resp.StatusCode != 200 {
		t.Errorf("GET /users/me = %d %s", resp.StatusCode, body)
	}
	resp, body = srv.call(t, "GET", "/readyz", "", nil)
	if resp.StatusCode != 200 {
		t.Errorf("GET /readyz = %d %s", resp.StatusCode, body)
	}
	// Without a master key, a shared database is refused: a generated
	// key file would not be shared by the replicas.
	var stderr bytes.Buffer
	err = cli.Run(context.Background(), []string{"keybridge", "serve", "--listen", "127.0.0.1:0"},
		envOf(map[string]string{"KEYBRIDGE_DATABASE_URL": dbURL}), strings.NewReader(""), &bytes.Buffer{}, &stderr)
	if err == nil || !strings.Contains(err.Error(), "master") {
		t.Errorf("serve on PostgreSQL without a master key = %v, want a refusal naming the master key", err)
	}
}
