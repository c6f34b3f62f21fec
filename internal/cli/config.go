package cli

import (
	"context"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/keybridge/keybridge/internal/secrets"
	"github.com/keybridge/keybridge/internal/store"
	"github.com/keybridge/keybridge/internal/store/postgres"
	"github.com/keybridge/keybridge/internal/store/sqlite"
)

// storageConfig is what every command that touches state needs (SPEC §10).
type storageConfig struct {
	DataDir       string
	DatabaseURL   string
	MasterKeyFile string
	MasterKey     string // base64, from KEYBRIDGE_MASTER_KEY only
	RedisURL      string
	LogLevel      string
}

// register adds the storage flags to fs, with defaults from the environment.
func (c *storageConfig) register(fs *flag.FlagSet, getenv func(string) string) {
	fs.StringVar(&c.DataDir, "data-dir", envOr(getenv, "KEYBRIDGE_DATA_DIR", "./keybridge-data"), "directory for the embedded database and generated master key (KEYBRIDGE_DATA_DIR)")
	fs.StringVar(&c.DatabaseURL, "database-url", getenv("KEYBRIDGE_DATABASE_URL"), "postgres:// URL; empty means embedded SQLite in --data-dir (KEYBRIDGE_DATABASE_URL)")
	fs.StringVar(&c.MasterKeyFile, "master-key-file", getenv("KEYBRIDGE_MASTER_KEY_FILE"), "file holding the base64 master key (KEYBRIDGE_MASTER_KEY_FILE; or KEYBRIDGE_MASTER_KEY itself)")
	fs.StringVar(&c.RedisURL, "redis-url", getenv("KEYBRIDGE_REDIS_URL"), "redis:// URL through which replicas share rate limits, login counters and cooldowns (KEYBRIDGE_REDIS_URL)")
	fs.StringVar(&c.LogLevel, "log-level", envOr(getenv, "KEYBRIDGE_LOG_LEVEL", "info"), "debug, info, warn or error (KEYBRIDGE_LOG_LEVEL)")
	c.MasterKey = getenv("KEYBRIDGE_MASTER_KEY")
}

// storageFlags returns a flag set named name, writing its help to env's
// stderr, with the storage flags already registered.
func storageFlags(env *Env, name string) (*flag.FlagSet, *storageConfig) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	cfg := &storageConfig{}
	cfg.register(fs, env.Getenv)
	return fs, cfg
}

func envOr(getenv func(string) string, key, def string) string {
	if v := getenv(key); v != "" {
		return v
	}
	return def
}

// embedded reports whether the config uses the embedded SQLite store.
func (c *storageConfig) embedded() bool { return c.DatabaseURL == "" }

// logger returns a JSON slog logger at the configured level.
func (c *storageConfig) logger(w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.LogLevel)); err != nil {
		return nil, fmt.Errorf("%w: --log-level must be debug, info, warn or error", errUsage)
	}
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level})), nil
}

// openStore opens the configured database and applies migrations.
func (c *storageConfig) openStore(ctx context.Context) (store.Store, error) {
	if c.embedded() {
		return sqlite.Open(ctx, filepath.Join(c.DataDir, "keybridge.db"))
	}
	if err := c.checkDatabaseURL(); err != nil {
		return nil, err
	}
	return postgres.Open(ctx, c.DatabaseURL)
}

// checkDatabaseURL reports a --database-url that is not PostgreSQL's.
func (c *storageConfig) checkDatabaseURL() error {
	if !c.embedded() && !strings.HasPrefix(c.DatabaseURL, "postgres://") && !strings.HasPrefix(c.DatabaseURL, "postgresql://") {
		return fmt.Errorf("%w: --database-url must be a postgres:// URL", errUsage)
	}
	return nil
}

// masterKey returns the 32-byte master key from KEYBRIDGE_MASTER_KEY or
// --master-key-file. With neither, on the embedded store only, it reads
// <data-dir>/master.key, creating it (mode 0600) when create is set and
// saying so loudly on log.
func (c *storageConfig) masterKey(create bool, log io.Writer) ([]byte, error) {
	// A mistyped URL is the mistake to report, not the master key that
	// PostgreSQL would need.
	if err := c.checkDatabaseURL(); err != nil {
		return nil, err
	}
	switch {
	case c.MasterKey != "" && c.MasterKeyFile != "":
		return nil, fmt.Errorf("%w: give the master key by KEYBRIDGE_MASTER_KEY or --master-key-file, not both", errUsage)
	case c.MasterKey != "":
		return decodeMasterKey(c.MasterKey, "KEYBRIDGE_MASTER_KEY")
	case c.MasterKeyFile != "":
		b, err := os.ReadFile(c.MasterKeyFile)
		if err != nil {
			return nil, fmt.Errorf("read master key file: %w", err)
		}
		return decodeMasterKey(string(b), c.MasterKeyFile)
	case !c.embedded():
		return nil, fmt.Errorf("%w: with --database-url, set KEYBRIDGE_MASTER_KEY or --master-key-file (a generated key file would not be shared by replicas)", errUsage)
	}
	path := filepath.Join(c.DataDir, "master.key")
	b, err := os.ReadFile(path)
	if err == nil {
		return decodeMasterKey(string(b), path)
	}
	if !errors.Is(err, fs.ErrNotExist) || !create {
		return nil, fmt.Errorf("read master key: %w", err)
	}
	key, err := secrets.NewMasterKey()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(c.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("create data dir: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("create master key: %w", err)
	}
	_, err = f.WriteString(base64.StdEncoding.EncodeToString(key) + "\n")
	if err = errors.Join(err, f.Sync(), f.Close()); err != nil {
		return nil, fmt.Errorf("write master key: %w", err)
	}
	fmt.Fprintf(log, "\n"+
		"**********************************************************************\n"+
		"* Keybridge generated a master key at %s\n"+
		"* It encrypts every stored secret. Back it up and keep it apart from\n"+
		"* the database: without it the secrets cannot be read. For production\n"+
		"* set KEYBRIDGE_MASTER_KEY or --master-key-file instead.\n"+
		"**********************************************************************\n\n", path)
	return key, nil
}

func decodeMasterKey(s, from string) ([]byte, error) {
	key, err := base64.StdEncoding.DecodeString(strings.TrimSpace(s))
	if err != nil || len(key) != 32 {
		return nil, fmt.Errorf("master key from %s must be 32 bytes in base64 (generate one with: openssl rand -base64 32)", from)
	}
	return key, nil
}

// checkMasterKey reads the master key, when one is given or already
// generated, and reports what is wrong with it, so that a command can
// refuse before it opens (and so migrates) the database. A generated key
// that does not exist yet is not an error: openRing decides about it.
func (c *storageConfig) checkMasterKey() error {
	_, err := c.masterKey(false, io.Discard)
	if errors.Is(err, fs.ErrNotExist) && c.MasterKey == "" && c.MasterKeyFile == "" {
		return nil
	}
	return err
}

// openRing opens the key ring of st with the configured master key.
//
// A master key is generated only for a database with no key ring yet: a
// new key could not open an existing ring, and a file holding it would
// stand where the real key must be put back.
func (c *storageConfig) openRing(ctx context.Context, st store.Store, create bool, log *slog.Logger, notice io.Writer) (*secrets.Ring, error) {
	if create {
		keys, err := st.DataKeys(ctx)
		if err != nil {
			return nil, fmt.Errorf("read key ring: %w", err)
		}
		create = len(keys) == 0
	}
	key, err := c.masterKey(create, notice)
	if errors.Is(err, fs.ErrNotExist) && c.MasterKeyFile == "" {
		return nil, fmt.Errorf("no master key in %s, but the database holds a key ring sealed by one: put that key back there, or set KEYBRIDGE_MASTER_KEY or --master-key-file to it", c.DataDir)
	}
	if err != nil {
		return nil, err
	}
	return secrets.OpenRing(ctx, st, key, secrets.Options{Logger: log})
}
