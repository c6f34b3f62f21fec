package store

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"io"
	"net"
	"strings"
	"syscall"

	"github.com/keybridge/keybridge/internal/keybridge"
)

// Unavailable reports whether err says that the database could not be
// reached (refused or dropped connections, a server shutting down or
// starting up) rather than that it refused the request: the caller may
// answer 503 and try again later, where other errors are a 500.
func Unavailable(err error) bool {
	if err == nil {
		return false
	}
	if keybridge.IsCode(err, keybridge.EUnavailable) {
		return true
	}
	if errors.Is(err, driver.ErrBadConn) || errors.Is(err, sql.ErrConnDone) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) {
		return true
	}
	var op *net.OpError
	if errors.As(err, &op) {
		return true
	}
	// An error that says the request never reached the server, read
	// through the method pgx's errors have (a connection found closed
	// once its socket went away, a write that sent nothing, a standby
	// where a primary was wanted), unless the caller gave up on it.
	var unsent interface{ SafeToRetry() bool }
	if errors.As(err, &unsent) && unsent.SafeToRetry() && !errors.Is(err, context.Canceled) {
		return true
	}
	// PostgreSQL's SQLSTATE, read through the method its driver's errors
	// have, so that this package needs no driver: class 08 is a
	// connection exception; 57P01-57P03 a server shutting down or not yet
	// accepting connections; 53300 too many connections.
	var state interface{ SQLState() string }
	if errors.As(err, &state) {
		code := state.SQLState()
		return strings.HasPrefix(code, "08") || code == "57P01" || code == "57P02" || code == "57P03" || code == "53300"
	}
	return false
}
