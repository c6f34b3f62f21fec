// Package cli is the keybridge command: one file per subcommand. Nothing
// here reads the process's environment directly; Run gets it as arguments,
// so tests call Run exactly as main does.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
)

// Version is the build's version, set with -ldflags "-X ...cli.Version=...".
var Version = "dev"

// Env is what a subcommand gets from the process.
type Env struct {
	Args   []string // after the subcommand name
	Getenv func(string) string
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
}

type command struct {
	name, usage string
	run         func(ctx context.Context, env *Env) error
}

var commands = []command{
	{"serve", "run the API, gateway and web UI", serve},
	{"setup", "create the first org, its owner and an owner API key", setup},
	{"migrate", "apply database migrations and exit", migrate},
	{"keyring", "show, rotate or rewrap the data key ring (status|rotate|rewrap|change-master)", keyring},
	{"version", "print the version", version},
}

// errUsage marks a mistake in how the command was called (exit code 2).
var errUsage = errors.New("usage")

// ExitCode returns the process exit code for an error from Run.
func ExitCode(err error) int {
	if errors.Is(err, errUsage) || errors.Is(err, flag.ErrHelp) {
		return 2
	}
	return 1
}

// Run runs the keybridge command named by args[1].
func Run(ctx context.Context, args []string, getenv func(string) string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) < 2 || args[1] == "-h" || args[1] == "--help" || args[1] == "help" {
		printUsage(stderr)
		if len(args) < 2 {
			return fmt.Errorf("%w: no command given", errUsage)
		}
		return nil
	}
	for _, c := range commands {
		if c.name == args[1] {
			return c.run(ctx, &Env{Args: args[2:], Getenv: getenv, Stdin: stdin, Stdout: stdout, Stderr: stderr})
		}
	}
	printUsage(stderr)
	return fmt.Errorf("%w: unknown command %q", errUsage, args[1])
}

func printUsage(w io.Writer) {
	fmt.Fprintln(w, "Usage: keybridge <command> [flags]\n\nCommands:")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-8s %s\n", c.name, c.usage)
	}
	fmt.Fprintln(w, "\nRun 'keybridge <command> -h' for a command's flags.")
}

func version(ctx context.Context, env *Env) error {
	_, err := fmt.Fprintln(env.Stdout, "keybridge", Version)
	return err
}

// isTerminal reports whether w is a character device (a terminal).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
