package store_test

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"net"
	"syscall"
	"testing"

	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store"
)

// sqlState is an error with a SQLSTATE, as PostgreSQL's driver gives.
type sqlState string

func (s sqlState) Error() string    { return "sqlstate " + string(s) }
func (s sqlState) SQLState() string { return string(s) }

// unsent is an error that says whether its request reached the server,
// as pgx's do.
type unsent struct {
	safe bool
	err  error
}

func (u unsent) Error() string     { return "conn closed" }
func (u unsent) SafeToRetry() bool { return u.safe }
func (u unsent) Unwrap() error     { return u.err }

func TestUnavailable(t *testing.T) {
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
	for _, c := range []struct {
		err  error
		want bool
	}{
		{nil, false},
		{errors.New("syntax error"), false},
		{keybridge.Errorf(keybridge.ENotFound, "no"), false},
		{keybridge.Errorf(keybridge.EUnavailable, "down"), true},
		{fmt.Errorf("look up API key: %w", refused), true},
		{fmt.Errorf("query: %w", driver.ErrBadConn), true},
		{sql.ErrConnDone, true},
		{fmt.Errorf("commit: %w", sqlState("57P01")), true}, // admin shutdown
		{sqlState("57P03"), true},                           // starting up
		{sqlState("08006"), true},                           // connection failure
		{sqlState("23505"), false},                          // unique violation
		{sqlState("42P01"), false},                          // undefined table
		{fmt.Errorf("begin: %w", unsent{safe: true}), true}, // connection found closed
		{unsent{safe: false}, false},
		{unsent{safe: true, err: context.Canceled}, false}, // the caller gave up
	} {
		if got := store.Unavailable(c.err); got != c.want {
			t.Errorf("Unavailable(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}
