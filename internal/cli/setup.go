package cli

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/keybridge/keybridge/internal/httpapi"
	"github.com/keybridge/keybridge/internal/keybridge"
)

// setup runs "keybridge setup": it creates an org, its owner and one owner
// API key with every permission against the configured database, with no
// server running, and prints the key once.
func setup(ctx context.Context, env *Env) error {
	fs, cfg := storageFlags(env, "keybridge setup")
	org := fs.String("org", "", "the org's slug, e.g. acme (required)")
	email := fs.String("email", "", "the owner's email (required)")
	name := fs.String("name", "", "the owner's name (default: the part of the email before the @)")
	passwordStdin := fs.Bool("password-stdin", false, "read the owner's web UI password from the first line of stdin (else the owner has none until set)")
	if help, err := parseFlags(fs, env.Args); help || err != nil {
		return err
	}
	if *org == "" || *email == "" {
		return fmt.Errorf("%w: setup needs --org and --email", errUsage)
	}
	var password string
	if *passwordStdin {
		var err error
		if password, err = readPassword(env.Stdin); err != nil {
			return err
		}
	}
	log, err := cfg.logger(env.Stderr)
	if err != nil {
		return err
	}
	st, err := cfg.openStore(ctx)
	if err != nil {
		return err
	}
	defer st.Close()
	res, err := httpapi.Setup(ctx, st, httpapi.SetupInput{Org: *org, Email: *email, Name: *name, Password: password, WithKey: true})
	if err != nil {
		return fmt.Errorf("setup: %s", describe(err))
	}
	log.Info("setup done", "org", res.Org.Slug, "owner", res.User.Email, "api_key_id", res.Key.ID)
	if !isTerminal(env.Stdout) {
		// For scripts: the key alone, e.g. KEY=$(keybridge setup ...).
		_, err = fmt.Fprintln(env.Stdout, res.KeyToken)
		return err
	}
	_, err = fmt.Fprintf(env.Stdout, "Created org %s with owner %s.\n\nOwner API key, with every permission. It is shown only this once; store it now:\n\n    %s\n\n",
		res.Org.Slug, res.User.Email, res.KeyToken)
	return err
}

// readPassword reads the first line of r, without its line ending.
func readPassword(r io.Reader) (string, error) {
	line, err := bufio.NewReader(io.LimitReader(r, 4096)).ReadString('\n')
	if err != nil && err != io.EOF {
		return "", fmt.Errorf("read password from stdin: %w", err)
	}
	line = strings.TrimRight(line, "\r\n")
	if line == "" {
		return "", fmt.Errorf("%w: --password-stdin: stdin held no password", errUsage)
	}
	return line, nil
}

// describe words err for the terminal: a user error by its message, an
// internal one in full.
func describe(err error) string {
	if keybridge.ErrorCode(err) != keybridge.EInternal {
		return keybridge.ErrorMessage(err)
	}
	return err.Error()
}
