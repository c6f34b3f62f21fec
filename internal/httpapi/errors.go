package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strconv"

	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store"
)

// errDatabaseUnavailable is the message of the 503 answered while the
// database cannot be reached.
const errDatabaseUnavailable = "the database cannot be reached; try again shortly"

// statuses maps each error code to its one HTTP status (SPEC §1).
var statuses = map[string]int{
	keybridge.EInvalid:         http.StatusBadRequest,
	keybridge.EUnauthenticated: http.StatusUnauthorized,
	keybridge.EForbidden:       http.StatusForbidden,
	keybridge.ENotFound:        http.StatusNotFound,
	keybridge.EConflict:        http.StatusConflict,
	keybridge.ETooLarge:        http.StatusRequestEntityTooLarge,
	keybridge.ETimeout:         http.StatusRequestTimeout,
	keybridge.ERateLimited:     http.StatusTooManyRequests,
	keybridge.EInternal:        http.StatusInternalServerError,
	keybridge.EBadGateway:      http.StatusBadGateway,
	keybridge.EUnavailable:     http.StatusServiceUnavailable,
}

// Status returns the HTTP status for an error code.
func Status(code string) int {
	if s, ok := statuses[code]; ok {
		return s
	}
	return http.StatusInternalServerError
}

type errorBody struct {
	Error errorDetail `json:"error"`
}

type errorDetail struct {
	Code    string            `json:"code"`
	Message string            `json:"message"`
	Fields  map[string]string `json:"fields,omitempty"`
}

// WriteError answers with err in the one error shape. Errors that are not
// a *keybridge.Error become 500 "internal error" and are logged with the
// request id; their text never reaches the client.
func WriteError(w http.ResponseWriter, r *http.Request, log *slog.Logger, err error) {
	code := keybridge.ErrorCode(err)
	body := errorBody{Error: errorDetail{Code: code, Message: keybridge.ErrorMessage(err)}}
	if code == keybridge.EInternal && store.Unavailable(err) {
		// The database is away (restarting, unreachable): a 503 the
		// client may retry, not a 500. Nothing was changed.
		log.WarnContext(r.Context(), "database unavailable", "err", err, "method", r.Method, "path", r.URL.Path,
			"request_id", keybridge.RequestInfoFromContext(r.Context()).RequestID)
		w.Header().Set("Retry-After", "1")
		writeJSON(w, http.StatusServiceUnavailable, errorBody{Error: errorDetail{Code: keybridge.EUnavailable, Message: errDatabaseUnavailable}})
		return
	}
	var e *keybridge.Error
	if errors.As(err, &e) {
		body.Error.Fields = e.Fields
		if e.RetryAfterSeconds > 0 {
			w.Header().Set("Retry-After", strconv.Itoa(e.RetryAfterSeconds))
		}
	}
	if code == keybridge.EInternal {
		log.ErrorContext(r.Context(), "internal error", "err", err, "method", r.Method, "path", r.URL.Path,
			"request_id", keybridge.RequestInfoFromContext(r.Context()).RequestID)
	}
	writeJSON(w, Status(code), body)
}

// writeJSON answers with v as JSON. v is encoded before the status is
// sent: a value that cannot be encoded (a bug) is answered 500 in the
// error shape, not with a success and a broken body.
func writeJSON(w http.ResponseWriter, status int, v any) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		status = http.StatusInternalServerError
		buf.Reset()
		enc.Encode(errorBody{Error: errorDetail{Code: keybridge.EInternal, Message: "internal error"}})
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(buf.Bytes())
}

// writeOneTime answers with v, which holds a secret shown this once (a key
// plaintext, an AI key secret, an invitation token): no browser or proxy
// may keep a copy of it.
func writeOneTime(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, status, v)
}

// taken turns the store's conflict on a unique column into the 409 that
// names the request's field; any other error passes through.
func taken(err error, field, message string) error {
	if keybridge.IsCode(err, keybridge.EConflict) {
		return &keybridge.Error{Code: keybridge.EConflict, Message: message, Fields: map[string]string{field: "already exists"}}
	}
	return err
}
