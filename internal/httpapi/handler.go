package httpapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"reflect"
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
		if err := fn(w, r); err != nil {
			WriteError(w, r, s.log, err)
		}
	})
}

// checkText refuses a path or query holding a NUL byte or invalid UTF-8
// before any handler passes it to the database: PostgreSQL rejects both in
// text values, which would surface as a 500. No ID, slug or name of ours
// holds either, so a path with them names nothing (404).
func checkText(r *http.Request) error {
	if !cleanText(r.URL.Path) {
		return keybridge.Errorf(keybridge.ENotFound, "no such path")
	}
	if !cleanText(r.URL.RawQuery) {
		return keybridge.Errorf(keybridge.EInvalid, "the query string holds a NUL byte or invalid UTF-8")
	}
	if q := r.URL.RawQuery; q != "" && strings.Contains(q, "%") {
		for k, vs := range r.URL.Query() {
			for _, v := range append(vs, k) {
				if !cleanText(v) {
					return keybridge.Errorf(keybridge.EInvalid, "the query string holds a NUL byte or invalid UTF-8")
				}
			}
		}
	}
	return nil
}

func cleanText(s string) bool { return utf8.ValidString(s) && strings.IndexByte(s, 0) < 0 }

// maxBody caps management API request bodies (SPEC §1).
const maxBody = 1 << 20

// Validator is a request body that can check itself.
type Validator interface{ Validate() error }

// decode reads r's JSON body into a T: at most maxBody bytes, unknown
// fields rejected, exactly one JSON value, then T's own validation. Every
// failure is a 4xx.
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

func decodeInto(w http.ResponseWriter, r *http.Request, v any) error {
	if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(ct, "application/json") {
		return keybridge.Errorf(keybridge.EInvalid, "Content-Type must be application/json")
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return decodeError(err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return decodeError(err)
		}
		return keybridge.Errorf(keybridge.EInvalid, "request body must hold one JSON value")
	}
	if holdsNUL(reflect.ValueOf(v), 0) {
		// PostgreSQL refuses NUL in text; no name or secret of ours has one.
		return keybridge.Errorf(keybridge.EInvalid, "strings in the request body must not hold NUL characters")
	}
	return nil
}

// holdsNUL reports whether any string reachable from v holds a NUL byte.
func holdsNUL(v reflect.Value, depth int) bool {
	if depth > 32 {
		return false
	}
	switch v.Kind() {
	case reflect.String:
		return strings.IndexByte(v.String(), 0) >= 0
	case reflect.Pointer, reflect.Interface:
		return !v.IsNil() && holdsNUL(v.Elem(), depth+1)
	case reflect.Struct:
		for i := range v.NumField() {
			if holdsNUL(v.Field(i), depth+1) {
				return true
			}
		}
	case reflect.Slice, reflect.Array:
		for i := range v.Len() {
			if holdsNUL(v.Index(i), depth+1) {
				return true
			}
		}
	case reflect.Map:
		iter := v.MapRange()
		for iter.Next() {
			if holdsNUL(iter.Key(), depth+1) || holdsNUL(iter.Value(), depth+1) {
				return true
			}
		}
	}
	return false
}

// decodeError turns a JSON decoding failure into a client error.
func decodeError(err error) error {
	var mbe *http.MaxBytesError
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	var ke *keybridge.Error
	switch {
	case errors.As(err, &mbe):
		return keybridge.Errorf(keybridge.ETooLarge, "request body is larger than %d bytes", mbe.Limit)
	case errors.As(err, &ke):
		return ke
	case errors.Is(err, io.EOF):
		return keybridge.Errorf(keybridge.EInvalid, "request body is empty")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return keybridge.Errorf(keybridge.EInvalid, "request body is not valid JSON: unexpected end")
	case errors.As(err, &syn):
		return keybridge.Errorf(keybridge.EInvalid, "request body is not valid JSON at byte %d", syn.Offset)
	case errors.As(err, &typ):
		field := typ.Field
		if field == "" {
			return keybridge.Errorf(keybridge.EInvalid, "request body must be a JSON %s", typ.Type.Kind())
		}
		return &keybridge.Error{Code: keybridge.EInvalid, Message: fmt.Sprintf("%s: must be %s", field, jsonKind(typ.Type.Kind().String())),
			Fields: map[string]string{field: "must be " + jsonKind(typ.Type.Kind().String())}}
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		name := strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`)
		return &keybridge.Error{Code: keybridge.EInvalid, Message: fmt.Sprintf("unknown field %q", name),
			Fields: map[string]string{name: "unknown field"}}
	}
	return keybridge.Errorf(keybridge.EInvalid, "request body is not valid JSON")
}

func jsonKind(goKind string) string {
	switch goKind {
	case "string":
		return "a string"
	case "bool":
		return "a boolean"
	case "slice", "array":
		return "an array"
	case "map", "struct", "ptr":
		return "an object"
	}
	return "a number"
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
