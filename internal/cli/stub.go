package cli

import (
	"context"
	"errors"
)

// TODO: stubs, replaced by serve.go, setup.go, migrate.go and keyring.go.
var errStub = errors.New("not implemented")

func serve(ctx context.Context, env *Env) error   { return errStub }
func setup(ctx context.Context, env *Env) error   { return errStub }
func migrate(ctx context.Context, env *Env) error { return errStub }
