package sqlite_test

import (
	"testing"

	"github.com/keybridge/keybridge/internal/store/storetest"
)

func TestConformance(t *testing.T) { storetest.Run(t, storetest.SQLite) }
