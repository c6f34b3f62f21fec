package postgres_test

import (
	"testing"

	"github.com/keybridge/keybridge/internal/store/storetest"
)

func TestConformance(t *testing.T) { storetest.Run(t, storetest.Postgres) }

func BenchmarkAPIKeyByHash(b *testing.B) { storetest.BenchmarkAPIKeyByHash(b, storetest.Postgres) }
