// Command keybridge keeps AI provider credentials and proxies LLM traffic.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/keybridge/keybridge/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// The first signal starts a graceful drain; restoring the default
	// handlers lets a second one end the process at once.
	go func() { <-ctx.Done(); stop() }()
	if err := cli.Run(ctx, os.Args, os.Getenv, os.Stdin, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "keybridge:", err)
		os.Exit(cli.ExitCode(err))
	}
}
