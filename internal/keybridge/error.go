// Package keybridge holds Keybridge's domain: its types, their validation,
// permissions and the error codes every layer speaks. It imports nothing of
// the project; everything else imports it.
package keybridge

import (
	"errors"
	"fmt"
)

// Error codes, each mapped to one HTTP status by the API layer (SPEC §1).
const (
	EInvalid         = "invalid_argument"
	EUnauthenticated = "unauthenticated"
	EForbidden       = "permission_denied"
	ENotFound        = "not_found"
	EConflict        = "conflict"
	ETooLarge        = "payload_too_large"
	ETimeout         = "request_timeout"
	ERateLimited     = "rate_limited"
	EInternal        = "internal"
	EBadGateway      = "bad_gateway"
	EUnavailable     = "unavailable"
)

// Error is an error meant for the user: its Code picks the HTTP status and
// its Message is safe to show. Anything that is not an *Error is internal.
type Error struct {
	Code    string
	Message string
	// Fields names the request fields that were wrong and why.
	Fields map[string]string
	// RetryAfterSeconds is set on rate_limited errors.
	RetryAfterSeconds int
}

// Error implements the error interface.
func (e *Error) Error() string {
	return fmt.Sprintf("keybridge error: code=%s message=%s", e.Code, e.Message)
}

// Errorf returns an *Error with the given code and a formatted message.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// FieldError returns an invalid_argument error naming one field.
func FieldError(field, why string) *Error {
	return &Error{Code: EInvalid, Message: field + ": " + why, Fields: map[string]string{field: why}}
}

// ErrorCode returns the code of err if it is, or wraps, an *Error, and
// EInternal otherwise (or "" for a nil error).
func ErrorCode(err error) string {
	if err == nil {
		return ""
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return EInternal
}

// ErrorMessage returns the user-facing message of err, or "internal error"
// for errors that are not an *Error.
func ErrorMessage(err error) string {
	if err == nil {
		return ""
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Message
	}
	return "internal error"
}

// IsCode reports whether err is an *Error with the given code.
func IsCode(err error, code string) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == code
}

// Validation collects per-field problems and turns them into one error.
type Validation map[string]string

// Add records why field is invalid; the first reason for a field wins.
func (v Validation) Add(field, why string) {
	if _, ok := v[field]; !ok {
		v[field] = why
	}
}

// Err returns nil when nothing was recorded, or one invalid_argument error
// naming every field.
func (v Validation) Err() error {
	if len(v) == 0 {
		return nil
	}
	msg := "invalid request"
	if len(v) == 1 {
		for f, why := range v {
			msg = f + ": " + why
		}
	}
	return &Error{Code: EInvalid, Message: msg, Fields: map[string]string(v)}
}
