package postgres_test

import (
	"context"
	"sync"

	"github.com/keybridge/keybridge/internal/store/postgres"
	"testing"

	"github.com/keybridge/keybridge/internal/store/storetest"
)

func TestConformance(t *testing.T) { storetest.Run(t, storetest.Postgres) }

func BenchmarkAPIKeyByHash(b *testing.B) { storetest.BenchmarkAPIKeyByHash(b, storetest.Postgres) }

// TestConcurrentOpen starts replicas together on an empty schema: exactly
// one migrates, the others wait for it and find the work done.
func TestConcurrentOpen(t *testing.T) {
	url := storetest.PostgresURL(t)
	const replicas = 4
	errs := make(chan error, replicas)
	var wg sync.WaitGroup
	for range replicas {
		wg.Go(func() {
			st, err := postgres.Open(context.Background(), url)
			if err == nil {
				t.Cleanup(func() { st.Close() })
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("Open of a replica started with others = %v", err)
		}
	}
}
