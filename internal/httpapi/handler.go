package httpapi

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store"
)

// handlerFunc is a handler that returns its failure instead of writing it,
// so every error takes one path (WriteError).
type handlerFunc func(w http.ResponseWriter, r *http.Request) error

// h adapts a handlerFunc to http.Handler.
func (s *Server) h(fn handlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := checkText(r); err != nil {
			WriteError(w, r, s.log, err)
			return
		}
		if err := bodyContentType(r); err != nil {
			WriteError(w, r, s.log, err)
			return
		}
		if err := noBody(w, r); err != nil {
			WriteError(w, r, s.log, err)
			return
		}
		if err := fn(w, r); err != nil {
			WriteError(w, r, s.log, err)
		}
	})
}

// checkText refuses a path or query holding a NUL byte or invalid UTF-8
// before any handler passes it to the database: PostgreSQL rejects both in
// text values, which would surface as a 500. No ID, slug or name of ours
// holds either, so a path with them names nothing (404). The query is
// checked by checkQuery.
func checkText(r *http.Request) error {
	if !cleanText(r.URL.Path) {
		return keybridge.Errorf(keybridge.ENotFound, "no such path")
	}
	return checkQuery(r.URL.RawQuery)
}

// checkQuery refuses, before any handler reads it, a query string that
// url.Query would read differently from what was sent: url.Query drops
// each pair it cannot decode (a bad % escape, a ';' separator), so
// ?since=%ZZ would be answered as if since had not been sent, and keeps
// every value of a repeated parameter while handlers read the first. Each
// is a 400 naming the parameter, like a body's field (docs/security.md,
// "Query strings"). Unknown parameters are left to the handlers, which
// ignore them; an empty value is the parameter left out.
func checkQuery(raw string) error {
	var seen map[string]bool
	for raw != "" {
		var pair string
		pair, raw, _ = strings.Cut(raw, "&")
		if pair == "" {
			continue
		}
		if strings.Contains(pair, ";") {
			return keybridge.Errorf(keybridge.EInvalid, "the query string is malformed: parameters are separated by &, not ; (send a literal ; as %%3B)")
		}
		k, v, _ := strings.Cut(pair, "=")
		name, err := url.QueryUnescape(k)
		if err != nil || !cleanText(name) {
			return keybridge.Errorf(keybridge.EInvalid, "the query string is malformed: a parameter name is not valid URL encoding of UTF-8 text")
		}
		value, err := url.QueryUnescape(v)
		switch {
		case err != nil:
			return queryParamError(name, "is not valid URL encoding: a % is followed by two hex digits (send a literal % as %25)")
		case !cleanText(value):
			return queryParamError(name, "must be UTF-8 text without NUL")
		case seen[name]:
			return queryParamError(name, "appears more than once")
		}
		if seen == nil {
			seen = map[string]bool{}
		}
		seen[name] = true
	}
	return nil
}

// queryParamError is a 400 naming a query parameter.
func queryParamError(name, why string) error {
	return &keybridge.Error{Code: keybridge.EInvalid, Message: fmt.Sprintf("query parameter %q %s", name, why), Fields: map[string]string{name: why}}
}

// noBody refuses a body with content on an operation that takes none
// (bodylessRoutes): POST .../suspend {"reason":"leaked"} would otherwise
// succeed with the reason silently dropped, where SPEC §1 refuses unknown
// fields. An empty body, {} and null are taken, as clients that always
// send a JSON body send them; anything else is the 400 decode answers for
// a body of the wrong kind or an unknown field.
func noBody(w http.ResponseWriter, r *http.Request) error {
	if r.ContentLength == 0 || r.Body == nil || r.Body == http.NoBody || !bodylessRoutes()[r.Pattern] {
		return nil
	}
	b, err := readBody(w, r)
	if err != nil || len(bytes.TrimSpace(b)) == 0 {
		return err
	}
	return decodeJSON(b, &struct{}{})
}

func cleanText(s string) bool { return utf8.ValidString(s) && strings.IndexByte(s, 0) < 0 }

// maxBody caps management API request bodies (SPEC §1).
const maxBody = 1 << 20

// Validator is a request body that can check itself.
type Validator interface{ Validate() error }

// decode reads r's JSON body into a T: at most maxBody bytes, strictly
// (decode.go: exact field names, no key twice, valid UTF-8, errors naming
// the field as the API spells it), exactly one JSON value, then T's own
// validation. Every failure is a 4xx. It is the only way a management
// handler reads a body.
func decode[T any](w http.ResponseWriter, r *http.Request) (T, error) {
	var v T
	if err := decodeInto(w, r, &v); err != nil {
		return v, err
	}
	if val, ok := any(&v).(Validator); ok {
		if err := val.Validate(); err != nil {
			return v, err
		}
	}
	return v, nil
}

// decodeInto is decode without the validation, for bodies that are not
// one object (the array of leak reports).
func decodeInto(w http.ResponseWriter, r *http.Request, v any) error {
	b, err := readBody(w, r) // s.h checked its Content-Type
	if err != nil {
		return err
	}
	return decodeJSON(b, v)
}

// list is the envelope of every list response (SPEC §1).
type list[T any] struct {
	Items      []T    `json:"items"`
	NextCursor string `json:"next_cursor,omitempty"`
}

// page reads ?limit= and ?cursor=.
func page(r *http.Request) (store.Page, error) {
	p := store.Page{Limit: store.DefaultLimit, Cursor: r.URL.Query().Get("cursor")}
	if l := r.URL.Query().Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 1 || n > store.MaxLimit {
			return p, keybridge.FieldError("limit", fmt.Sprintf("must be a whole number from 1 to %d", store.MaxLimit))
		}
		p.Limit = n
	}
	return p, nil
}

// newList builds a list response, never with a null items array.
func newList[T any](items []T, next string) list[T] {
	if items == nil {
		items = []T{}
	}
	return list[T]{Items: items, NextCursor: next}
}

// optional is a PATCH field that tells "omitted" (Set false) from "sent",
// and "sent as null" (Null true) from a value.
type optional[T any] struct {
	Set  bool
	Null bool
	V    T
}

// UnmarshalJSON implements json.Unmarshaler; it runs only for fields
// present in the body.
func (o *optional[T]) UnmarshalJSON(b []byte) error {
	o.Set = true
	if string(b) == "null" {
		o.Null = true
		return nil
	}
	return json.Unmarshal(b, &o.V)
}

// diff records a field's change for the audit log when it changed.
func diff[T comparable](changes map[string]keybridge.Change, field string, old, new T) {
	if old != new {
		changes[field] = keybridge.Change{Old: old, New: new}
	}
}
