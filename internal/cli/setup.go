package cli

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/keybridge/keybridge/internal/httpapi"
	"github.com/keybridge/keybridge/internal/keybridge"
	"golang.org/x/term"
)

// setup runs "keybridge setup": it creates an org, its owner and one owner
// API key with every permission against the configured database, with no
// server running, and prints the key once.
func setup(ctx context.Context, env *Env) error {
	fs, cfg := storageFlags(env, "keybridge setup")
	org := fs.String("org", "", "the org's slug, e.g. acme (required)")
	email := fs.String("email", "", "the owner's email (required)")
	name := fs.String("name", "", "the owner's name (default: the part of the email before the @)")
	passwordStdin := fs.Bool("password-stdin", false, "read the owner's web UI password from the first line of stdin (else it is asked for when stdin is a terminal, and the owner has none when it is not)")
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
	} else if tty, ok := terminalInput(env.Stdin); ok {
		var err error
		if password, err = promptPassword(tty, env.Stderr); err != nil {
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
		// For scripts: the key alone, e.g. KEY=$(keybridge setup ...);
		// the hint goes to stderr.
		if password == "" {
			fmt.Fprint(env.Stderr, noPasswordHint)
		}
		_, err = fmt.Fprintln(env.Stdout, res.KeyToken)
		return err
	}
	_, err = fmt.Fprintf(env.Stdout, "Created org %s with owner %s.\n\nOwner API key, with every permission. It is shown only this once; store it now:\n\n    %s\n\n",
		res.Org.Slug, res.User.Email, res.KeyToken)
	if err == nil && password == "" {
		_, err = fmt.Fprint(env.Stdout, noPasswordHint)
	}
	return err
}

// noPasswordHint tells an owner made without a password how to get one.
const noPasswordHint = `The owner has no password, so cannot sign in to the web UI yet. To set one:

    curl -X POST -H "Authorization: Bearer $KEY" -H "Content-Type: application/json" \
      -d '{"new_password":"..."}' http://HOST:PORT/api/v1/users/me/password

`

// terminalInput returns r as a terminal, when it is one.
func terminalInput(r io.Reader) (*os.File, bool) {
	f, ok := r.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return nil, false
	}
	return f, true
}

// promptPassword asks on the terminal for the owner's password, twice and
// without echo. An empty answer means no password (the owner works with
// the printed key until they set one); a password the rules refuse, or two
// that differ, are asked for again, three times at most.
func promptPassword(tty *os.File, prompts io.Writer) (string, error) {
	for range 3 {
		fmt.Fprint(prompts, "Owner's password for the web UI (at least 8 characters; empty for none): ")
		first, err := term.ReadPassword(int(tty.Fd()))
		fmt.Fprintln(prompts)
		if err != nil {
			return "", fmt.Errorf("read password: %w", err)
		}
		if len(first) == 0 {
			return "", nil
		}
		if why := httpapi.PasswordProblem(string(first)); why != "" {
			fmt.Fprintf(prompts, "The password %s.\n", why)
			continue
		}
		fmt.Fprint(prompts, "The same password again: ")
		again, err := term.ReadPassword(int(tty.Fd()))
		fmt.Fprintln(prompts)
		if err != nil {
			return "", fmt.Errorf("read password: %w", err)
		}
		if string(again) == string(first) {
			return string(first), nil
		}
		fmt.Fprintln(prompts, "The two passwords differ.")
	}
	return "", fmt.Errorf("%w: no password set after three tries", errUsage)
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
