package cli

import (
	"context"
)

// migrate runs "keybridge migrate": it applies the database migrations and
// exits, for deployments that migrate before starting replicas (serve
// migrates on start as well, under a lock).
func migrate(ctx context.Context, env *Env) error {
	fs, cfg := storageFlags(env, "keybridge migrate")
	if help, err := parseFlags(fs, env.Args); help || err != nil {
		return err
	}
	log, err := cfg.logger(env.Stderr)
	if err != nil {
		return err
	}
	// Opening the store applies every pending migration.
	st, err := cfg.openStore(ctx)
	if err != nil {
		return err
	}
	if err := st.Close(); err != nil {
		return err
	}
	log.Info("database is up to date")
	return nil
}
