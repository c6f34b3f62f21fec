package cli

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/keybridge/keybridge/internal/secrets"
)

// keyringCommands are the subcommands of "keybridge keyring" (SPEC §9).
var keyringCommands = []struct{ name, usage string }{
	{"status", "show the data key versions and how many secrets each still protects"},
	{"rotate", "add a new primary data key; new secrets are sealed under it"},
	{"rewrap", "re-encrypt every stored secret under the primary data key (online, resumable)"},
	{"change-master", "re-wrap the ring under a new master key (--new-master-key-file or KEYBRIDGE_NEW_MASTER_KEY)"},
}

func keyringUsage(w io.Writer) {
	fmt.Fprintln(w, "Usage: keybridge keyring <command> [flags]\n\nCommands:")
	for _, c := range keyringCommands {
		fmt.Fprintf(w, "  %-14s %s\n", c.name, c.usage)
	}
	fmt.Fprintln(w, "\nRun 'keybridge keyring <command> -h' for its flags.")
}

// keyring runs "keybridge keyring status|rotate|rewrap|change-master". It
// never creates a master key: these commands act on an existing ring.
func keyring(ctx context.Context, env *Env) error {
	if len(env.Args) == 0 {
		keyringUsage(env.Stderr)
		return fmt.Errorf("%w: keyring needs a command", errUsage)
	}
	sub := env.Args[0]
	switch sub {
	case "-h", "--help", "help":
		keyringUsage(env.Stderr)
		return nil
	case "status", "rotate", "rewrap", "change-master":
	default:
		keyringUsage(env.Stderr)
		return fmt.Errorf("%w: unknown keyring command %q", errUsage, sub)
	}

	fs, cfg := storageFlags(env, "keybridge keyring "+sub)
	asJSON := false
	newKeyFile := ""
	switch sub {
	case "status":
		fs.BoolVar(&asJSON, "json", false, "print the status as JSON")
	case "change-master":
		fs.StringVar(&newKeyFile, "new-master-key-file", "", "file holding the new base64 master key (or set KEYBRIDGE_NEW_MASTER_KEY)")
	}
	if help, err := parseFlags(fs, env.Args[1:]); help || err != nil {
		return err
	}
	var newKey []byte
	if sub == "change-master" {
		// Read the new key before touching the database, so a mistake
		// costs nothing.
		var err error
		if newKey, err = readNewMasterKey(newKeyFile, env.Getenv); err != nil {
			return err
		}
	}

	log, err := cfg.logger(env.Stderr)
	if err != nil {
		return err
	}
	// The master key comes before the database, so that a missing key
	// does not leave an empty database behind. create is false: a new key
	// would not open the secrets already stored.
	master, err := cfg.masterKey(false, env.Stderr)
	if errors.Is(err, os.ErrNotExist) && cfg.MasterKeyFile == "" {
		return fmt.Errorf("no master key in %s: set KEYBRIDGE_MASTER_KEY or --master-key-file to the key the server uses", cfg.DataDir)
	}
	if err != nil {
		return err
	}
	st, err := cfg.openStore(ctx)
	if err != nil {
		return err
	}
	defer st.Close()
	ring, err := secrets.OpenRing(ctx, st, master, secrets.Options{Logger: log})
	if err != nil {
		return err
	}

	switch sub {
	case "status":
		return keyringStatus(ctx, env.Stdout, ring, asJSON)
	case "rotate":
		v, err := ring.Rotate(ctx)
		if err != nil {
			return err
		}
		fmt.Fprintf(env.Stdout, "Data key version %d is now primary: new secrets are sealed under it.\n"+
			"Running servers pick it up within seconds. Run 'keybridge keyring rewrap' to re-encrypt stored secrets under it.\n", v)
		return nil
	case "rewrap":
		n, err := ring.Rewrap(ctx, func(done int) { fmt.Fprintf(env.Stderr, "rewrapped %d\n", done) })
		if err != nil {
			// Rewrap is resumable: say so, so the operator simply runs it again.
			return fmt.Errorf("%w (after %d secrets; run the command again to continue)", err, n)
		}
		fmt.Fprintf(env.Stdout, "Re-encrypted %d secrets; every stored secret is now under data key version %d.\n", n, ring.Primary())
		return nil
	default: // change-master
		return keyringChangeMaster(ctx, env, cfg, ring, newKey)
	}
}

// readNewMasterKey reads change-master's new key from the file or from
// KEYBRIDGE_NEW_MASTER_KEY.
func readNewMasterKey(file string, getenv func(string) string) ([]byte, error) {
	switch v := getenv("KEYBRIDGE_NEW_MASTER_KEY"); {
	case file != "" && v != "":
		return nil, fmt.Errorf("%w: give the new master key by --new-master-key-file or KEYBRIDGE_NEW_MASTER_KEY, not both", errUsage)
	case v != "":
		return decodeMasterKey(v, "KEYBRIDGE_NEW_MASTER_KEY")
	case file != "":
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("read new master key file: %w", err)
		}
		return decodeMasterKey(string(b), file)
	}
	return nil, fmt.Errorf("%w: change-master needs the new key in --new-master-key-file or KEYBRIDGE_NEW_MASTER_KEY (generate one with: openssl rand -base64 32)", errUsage)
}

// keyringChangeMaster re-wraps the ring. When the current key is the
// generated <data-dir>/master.key, that file is replaced by the new key
// once the database has committed, since the next start reads it from
// there; otherwise the operator updates KEYBRIDGE_MASTER_KEY or
// --master-key-file, as the message says.
func keyringChangeMaster(ctx context.Context, env *Env, cfg *storageConfig, ring *secrets.Ring, newKey []byte) error {
	if err := ring.ChangeMaster(ctx, newKey); err != nil {
		return err
	}
	if cfg.MasterKey == "" && cfg.MasterKeyFile == "" && cfg.embedded() {
		path := filepath.Join(cfg.DataDir, "master.key")
		if err := replaceFile(path, []byte(base64.StdEncoding.EncodeToString(newKey)+"\n")); err != nil {
			return fmt.Errorf("the ring is now wrapped by the new master key, but %s still holds the old one; put the new key there before the next start: %w", path, err)
		}
		fmt.Fprintf(env.Stdout, "The key ring is now wrapped by the new master key, written to %s.\n"+
			"Restart running servers so they use it.\n", path)
		return nil
	}
	fmt.Fprintln(env.Stdout, "The key ring is now wrapped by the new master key; the old one no longer opens it.\n"+
		"Set KEYBRIDGE_MASTER_KEY or --master-key-file to the new key, then restart running servers.")
	return nil
}

// replaceFile writes data to path through a temporary file and a rename,
// so the file always holds either the old or the new content.
func replaceFile(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".master.key-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	_, err = tmp.Write(data)
	if err = errors.Join(err, tmp.Sync(), tmp.Close()); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// keyringStatusJSON is the --json form of one data key version.
type keyringStatusJSON struct {
	Version   int        `json:"version"`
	Primary   bool       `json:"primary"`
	CreatedAt *time.Time `json:"created_at,omitempty"`
	Sealed    int        `json:"sealed"`
	Missing   bool       `json:"missing,omitempty"`
}

func keyringStatus(ctx context.Context, w io.Writer, ring *secrets.Ring, asJSON bool) error {
	status, err := ring.Status(ctx)
	if err != nil {
		return err
	}
	if asJSON {
		out := struct {
			Primary  int                 `json:"primary"`
			Versions []keyringStatusJSON `json:"versions"`
		}{Primary: ring.Primary(), Versions: make([]keyringStatusJSON, 0, len(status))}
		for _, k := range status {
			j := keyringStatusJSON{Version: k.Version, Primary: k.Primary, Sealed: k.Sealed, Missing: k.Missing}
			if !k.CreatedAt.IsZero() {
				t := k.CreatedAt.UTC()
				j.CreatedAt = &t
			}
			out.Versions = append(out.Versions, j)
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(out)
	}

	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "VERSION\tPRIMARY\tCREATED\tSECRETS")
	behind, missing := 0, 0
	for _, k := range status {
		primary, created := "", "-"
		if k.Primary {
			primary = "yes"
		}
		if !k.CreatedAt.IsZero() {
			created = k.CreatedAt.UTC().Format(time.RFC3339)
		}
		if k.Missing {
			created = "MISSING from the ring"
			missing += k.Sealed
		} else if !k.Primary {
			behind += k.Sealed
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%d\n", k.Version, primary, created, k.Sealed)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if missing > 0 {
		fmt.Fprintf(w, "\n%d secrets name data key versions the ring does not hold and cannot be opened.\n", missing)
	}
	if behind > 0 {
		fmt.Fprintf(w, "\n%d secrets are under older data keys; 'keybridge keyring rewrap' moves them to version %d.\n", behind, ring.Primary())
	}
	return nil
}
