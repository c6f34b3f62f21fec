package httpapi

import (
	"encoding"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/keybridge/keybridge/internal/keybridge"
)

// Request bodies are read by one strict decoder (docs/security.md, "Request
// bodies"). encoding/json alone lets through what a reviewer of a security
// service would not: a repeated key (the last one wins, so two parsers of
// the same body can disagree), a field name in another case ("ACCESS_KEY"
// fills access_key and so gets around the unknown-field check), invalid
// UTF-8 and unpaired surrogate escapes (silently turned into U+FFFD), and
// errors that name Go fields ("Limits.token_budget") or none at all (a bad
// time is "not valid JSON"). The decoder below walks the body once against
// the target type: objects that map to structs are matched field by field,
// exactly, by their json names; every other value is checked by the same
// scanner (duplicates at any depth, UTF-8, surrogates, NUL, nesting) and
// then handed to encoding/json on its own, so any failure names the field
// as the API spells it: "token_budget", "settings.access_key",
// "allowed_models[2]", "[0].token".

// maxDepth bounds how deeply a body may nest objects and arrays; no
// request of the API nests more than four levels.
const maxDepth = 32

// smallObject is how many keys of an object the scanner compares one by
// one before it keeps them in a set.
const smallObject = 16

// bodyContentType enforces the one Content-Type rule of the management API:
// a request that carries a body sends it as application/json (a charset
// parameter, if any, must be utf-8). A request without a body needs no
// Content-Type. The answer otherwise is 400 invalid_argument: SPEC §1's
// table of error codes is fixed and has no 415.
func bodyContentType(r *http.Request) error {
	if r.ContentLength == 0 || r.Body == nil || r.Body == http.NoBody {
		return nil
	}
	ct := r.Header.Get("Content-Type")
	mt, params, err := mime.ParseMediaType(ct)
	if ct == "" || err != nil || mt != "application/json" {
		return keybridge.Errorf(keybridge.EInvalid, "a request body must be sent with Content-Type: application/json")
	}
	if cs, ok := params["charset"]; ok && !strings.EqualFold(cs, "utf-8") {
		return keybridge.Errorf(keybridge.EInvalid, "a request body must be UTF-8: Content-Type's charset must be utf-8")
	}
	return nil
}

// readBody reads at most maxBody bytes of r's body.
func readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	if r.Body == nil {
		return nil, nil
	}
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		var mbe *http.MaxBytesError
		var ke *keybridge.Error
		switch {
		case errors.As(err, &mbe):
			return nil, keybridge.Errorf(keybridge.ETooLarge, "request body is larger than %d bytes", mbe.Limit)
		case errors.As(err, &ke):
			return nil, ke // a body reader of ours said why (a deadline)
		}
		return nil, keybridge.Errorf(keybridge.EInvalid, "the request body could not be read")
	}
	return b, nil
}

// decodeJSON decodes data, one JSON value, into the value v points to, by
// the rules above.
func decodeJSON(data []byte, v any) error {
	d := decoder{data: data}
	d.skipSpace()
	if d.pos == len(d.data) {
		return keybridge.Errorf(keybridge.EInvalid, "request body is empty")
	}
	if err := d.value(reflect.ValueOf(v).Elem()); err != nil {
		return err
	}
	d.skipSpace()
	if d.pos != len(d.data) {
		return keybridge.Errorf(keybridge.EInvalid, "request body must hold one JSON value")
	}
	return nil
}

// presence is implemented by *optional[T]: the decoder marks the field
// sent and decodes its value, with the same rules, into what value returns.
type presence interface {
	present(null bool) (value any)
}

func (o *optional[T]) present(null bool) any {
	o.Set, o.Null = true, null
	if null {
		return nil
	}
	return &o.V
}

type typeClass uint8

const (
	classLeaf     typeClass = iota // handed to encoding/json after the scan
	classPresence                  // optional[T]
	classPointer
	classStruct
	classSlice
)

type typeInfo struct {
	class  typeClass
	fields map[string]structField // classStruct: by json name
	names  []string               // classStruct: the json names, for hints
	// what a leaf of this type must be, for errors.
	want string
}

type structField struct {
	index []int
	ord   int // position in names, for the duplicate check
}

var (
	typeInfos           sync.Map // reflect.Type → *typeInfo
	unmarshalerType     = reflect.TypeFor[json.Unmarshaler]()
	textUnmarshalerType = reflect.TypeFor[encoding.TextUnmarshaler]()
	presenceType        = reflect.TypeFor[presence]()
	timeType            = reflect.TypeFor[time.Time]()
)

func infoOf(t reflect.Type) *typeInfo {
	if ti, ok := typeInfos.Load(t); ok {
		return ti.(*typeInfo)
	}
	ti := &typeInfo{want: wantOf(t)}
	pt := reflect.PointerTo(t)
	switch {
	case pt.Implements(presenceType):
		ti.class = classPresence
	case pt.Implements(unmarshalerType) || pt.Implements(textUnmarshalerType):
		ti.class = classLeaf
	case t.Kind() == reflect.Pointer:
		ti.class = classPointer
	case t.Kind() == reflect.Struct:
		ti.class = classStruct
		ti.fields = map[string]structField{}
		collectFields(t, nil, ti)
	case t.Kind() == reflect.Slice && t.Elem().Kind() != reflect.Uint8:
		ti.class = classSlice
	}
	actual, _ := typeInfos.LoadOrStore(t, ti)
	return actual.(*typeInfo)
}

// collectFields lists t's fields by json name as encoding/json sees them:
// exported fields, tag names first, embedded structs' fields promoted
// unless a shallower field has the name. Request types use no ",string"
// option and no embedded pointers; a test decodes each of them.
func collectFields(t reflect.Type, index []int, ti *typeInfo) {
	type pending struct {
		t     reflect.Type
		index []int
	}
	level := []pending{{t, index}}
	for len(level) > 0 {
		var next []pending
		found := map[string]int{} // name → count at this depth
		var add []struct {
			name  string
			index []int
		}
		for _, p := range level {
			for i := range p.t.NumField() {
				f := p.t.Field(i)
				idx := append(append([]int(nil), p.index...), i)
				tag := f.Tag.Get("json")
				if tag == "-" {
					continue
				}
				name, opts, _ := strings.Cut(tag, ",")
				if strings.Contains(","+opts+",", ",string,") {
					panic(fmt.Sprintf("httpapi: %s.%s: the ,string option is not supported by decode", p.t, f.Name))
				}
				if f.Anonymous && name == "" {
					ft := f.Type
					if ft.Kind() == reflect.Pointer {
						panic(fmt.Sprintf("httpapi: %s embeds a pointer; decode does not allocate embedded structs", p.t))
					}
					if ft.Kind() == reflect.Struct && !reflect.PointerTo(ft).Implements(unmarshalerType) {
						next = append(next, pending{ft, idx})
						continue
					}
				}
				if !f.IsExported() {
					continue
				}
				if name == "" {
					name = f.Name
				}
				found[name]++
				add = append(add, struct {
					name  string
					index []int
				}{name, idx})
			}
		}
		for _, a := range add {
			if _, shadowed := ti.fields[a.name]; shadowed || found[a.name] > 1 {
				continue // a shallower field wins; two at one depth cancel out
			}
			ti.fields[a.name] = structField{index: a.index, ord: len(ti.names)}
			ti.names = append(ti.names, a.name)
		}
		level = next
	}
}

// wantOf says, for errors, what a value of type t must be.
func wantOf(t reflect.Type) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == timeType {
		return "must be an RFC 3339 time such as 2026-01-02T15:04:05Z"
	}
	switch t.Kind() {
	case reflect.String:
		return "must be a string"
	case reflect.Bool:
		return "must be a boolean"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "must be a whole number in range"
	case reflect.Float32, reflect.Float64:
		return "must be a number"
	case reflect.Slice, reflect.Array:
		return "must be an array"
	case reflect.Struct, reflect.Map:
		return "must be an object"
	}
	return "is not a valid value"
}

// decoder walks one body. path is the API's name of the value being
// decoded ("" for the body itself).
type decoder struct {
	data  []byte
	pos   int
	depth int
	path  []byte
	keys  []string // scratch for scanned objects' keys
}

// appendKey appends an object key to a path: .name for the names the API
// uses, ["..."] (quoted) for any other key, so that every path names one
// value and no path is empty.
func appendKey(path []byte, key string) []byte {
	plain := key != ""
	for i := 0; i < len(key) && plain; i++ {
		c := key[i]
		plain = c == '_' || c == '-' || (c >= '0' && c <= '9') || (c|0x20 >= 'a' && c|0x20 <= 'z')
	}
	if plain {
		return append(append(path, '.'), key...)
	}
	return append(strconv.AppendQuote(append(path, '['), key), ']')
}

func (d *decoder) pathString() string { return strings.TrimPrefix(string(d.path), ".") }

// fieldError is a 400 naming the value being decoded, or the body itself.
func (d *decoder) fieldError(why string) error {
	p := d.pathString()
	if p == "" {
		if rest, ok := strings.CutPrefix(why, "must be an "); ok {
			why = "must be a JSON " + rest
		} else if rest, ok := strings.CutPrefix(why, "must be a "); ok {
			why = "must be a JSON " + rest
		}
		return keybridge.Errorf(keybridge.EInvalid, "request body %s", why)
	}
	return keybridge.FieldError(p, why)
}

func (d *decoder) syntaxError() error {
	if d.pos >= len(d.data) {
		return keybridge.Errorf(keybridge.EInvalid, "request body is not valid JSON: unexpected end")
	}
	return keybridge.Errorf(keybridge.EInvalid, "request body is not valid JSON at byte %d", d.pos)
}

func (d *decoder) skipSpace() {
	for d.pos < len(d.data) {
		switch d.data[d.pos] {
		case ' ', '\t', '\n', '\r':
			d.pos++
		default:
			return
		}
	}
}

func (d *decoder) isNull() bool {
	return len(d.data)-d.pos >= 4 && string(d.data[d.pos:d.pos+4]) == "null"
}

// value decodes the value at d.pos into v (addressable).
func (d *decoder) value(v reflect.Value) error {
	d.skipSpace()
	if d.pos >= len(d.data) {
		return d.syntaxError()
	}
	ti := infoOf(v.Type())
	switch ti.class {
	case classPresence:
		null := d.isNull()
		dst := v.Addr().Interface().(presence).present(null)
		if null {
			d.pos += 4
			return nil
		}
		return d.value(reflect.ValueOf(dst).Elem())
	case classPointer:
		if d.isNull() {
			d.pos += 4
			v.SetZero()
			return nil
		}
		if v.IsNil() {
			v.Set(reflect.New(v.Type().Elem()))
		}
		return d.value(v.Elem())
	case classStruct:
		return d.object(v, ti)
	case classSlice:
		return d.array(v, ti)
	}
	start := d.pos
	if err := d.scan(); err != nil {
		return err
	}
	if err := json.Unmarshal(d.data[start:d.pos], v.Addr().Interface()); err != nil {
		return d.leafError(ti, err)
	}
	return nil
}

// leafError names the field whose value encoding/json (or the type's own
// UnmarshalJSON) refused.
func (d *decoder) leafError(ti *typeInfo, err error) error {
	var ke *keybridge.Error
	if errors.As(err, &ke) && ke.Code == keybridge.EInvalid && d.pathString() != "" {
		why := ke.Message
		if len(ke.Fields) == 1 {
			for _, w := range ke.Fields {
				why = w
			}
		}
		return keybridge.FieldError(d.pathString(), why)
	}
	return d.fieldError(ti.want)
}

func (d *decoder) enter() error {
	d.depth++
	if d.depth > maxDepth {
		return keybridge.Errorf(keybridge.EInvalid, "request body nests deeper than %d levels", maxDepth)
	}
	d.pos++ // the '{' or '['
	d.skipSpace()
	return nil
}

// object decodes a JSON object into the struct v: every key names one of
// its fields, exactly, once.
func (d *decoder) object(v reflect.Value, ti *typeInfo) error {
	if d.isNull() {
		d.pos += 4 // as encoding/json: null leaves a struct as it is
		return nil
	}
	if d.data[d.pos] != '{' {
		if err := d.scan(); err != nil {
			return err
		}
		return d.fieldError("must be an object")
	}
	if err := d.enter(); err != nil {
		return err
	}
	var seenSmall [64]bool
	var seenBig []bool
	seen := seenSmall[:]
	if len(ti.names) > len(seenSmall) {
		seenBig = make([]bool, len(ti.names))
		seen = seenBig
	}
	if d.pos < len(d.data) && d.data[d.pos] == '}' {
		d.pos++
		d.depth--
		return nil
	}
	for {
		key, err := d.key()
		if err != nil {
			return err
		}
		f, ok := ti.fields[key]
		mark := len(d.path)
		d.path = appendKey(d.path, key)
		if !ok {
			return d.unknownField(ti, key)
		}
		if seen[f.ord] {
			return keybridge.FieldError(d.pathString(), "appears more than once")
		}
		seen[f.ord] = true
		if err := d.value(v.FieldByIndex(f.index)); err != nil {
			return err
		}
		d.path = d.path[:mark]
		if done, err := d.next('}'); done || err != nil {
			return err
		}
	}
}

func (d *decoder) unknownField(ti *typeInfo, key string) error {
	p := d.pathString()
	e := keybridge.FieldError(p, "unknown field")
	e.Message = fmt.Sprintf("unknown field %q", p)
	for _, n := range ti.names {
		if strings.EqualFold(n, key) {
			e.Fields[p] = fmt.Sprintf("unknown field (names are case-sensitive: %q)", n)
			e.Message += fmt.Sprintf("; field names are case-sensitive, did you mean %q?", n)
		}
	}
	return e
}

// array decodes a JSON array into the slice v.
func (d *decoder) array(v reflect.Value, ti *typeInfo) error {
	if d.isNull() {
		d.pos += 4
		v.SetZero()
		return nil
	}
	if d.data[d.pos] != '[' {
		if err := d.scan(); err != nil {
			return err
		}
		return d.fieldError(ti.want)
	}
	if err := d.enter(); err != nil {
		return err
	}
	s := reflect.MakeSlice(v.Type(), 0, 0)
	if d.pos < len(d.data) && d.data[d.pos] == ']' {
		d.pos++
		d.depth--
		v.Set(s)
		return nil
	}
	zero := reflect.Zero(v.Type().Elem())
	for i := 0; ; i++ {
		s = reflect.Append(s, zero)
		mark := len(d.path)
		d.path = fmt.Appendf(d.path, "[%d]", i)
		if err := d.value(s.Index(i)); err != nil {
			return err
		}
		d.path = d.path[:mark]
		done, err := d.next(']')
		if err != nil {
			return err
		}
		if done {
			v.Set(s)
			return nil
		}
	}
}

// next reads the ',' between members or elements, or the closing byte.
func (d *decoder) next(closing byte) (done bool, err error) {
	d.skipSpace()
	if d.pos >= len(d.data) {
		return false, d.syntaxError()
	}
	switch d.data[d.pos] {
	case ',':
		d.pos++
		d.skipSpace()
		return false, nil
	case closing:
		d.pos++
		d.depth--
		return true, nil
	}
	return false, d.syntaxError()
}

// key reads an object's key and the ':' after it.
func (d *decoder) key() (string, error) {
	d.skipSpace()
	if d.pos >= len(d.data) || d.data[d.pos] != '"' {
		return "", d.syntaxError()
	}
	start := d.pos
	escaped, err := d.str()
	if err != nil {
		return "", err
	}
	var key string
	if escaped {
		if err := json.Unmarshal(d.data[start:d.pos], &key); err != nil {
			return "", d.syntaxError()
		}
	} else {
		key = string(d.data[start+1 : d.pos-1])
	}
	d.skipSpace()
	if d.pos >= len(d.data) || d.data[d.pos] != ':' {
		return "", d.syntaxError()
	}
	d.pos++
	return key, nil
}

// scan checks the value at d.pos and moves past it: JSON syntax, no key
// twice in any object, strings of valid UTF-8 without unpaired surrogates
// or NUL, at most maxDepth levels.
func (d *decoder) scan() error {
	d.skipSpace()
	if d.pos >= len(d.data) {
		return d.syntaxError()
	}
	switch c := d.data[d.pos]; {
	case c == '"':
		_, err := d.str()
		return err
	case c == '{':
		if err := d.enter(); err != nil {
			return err
		}
		base := len(d.keys)
		defer func() { d.keys = d.keys[:base] }()
		if d.pos < len(d.data) && d.data[d.pos] == '}' {
			d.pos++
			d.depth--
			return nil
		}
		// Small objects are checked against the keys so far; past
		// smallObject keys a set takes over, so a body of many keys costs
		// linear time, not quadratic.
		var set map[string]struct{}
		for {
			key, err := d.key()
			if err != nil {
				return err
			}
			dup := false
			if set != nil {
				_, dup = set[key]
				set[key] = struct{}{}
			} else {
				dup = slices.Contains(d.keys[base:], key)
				d.keys = append(d.keys, key)
				if len(d.keys)-base > smallObject {
					set = make(map[string]struct{}, 2*smallObject)
					for _, k := range d.keys[base:] {
						set[k] = struct{}{}
					}
				}
			}
			if dup {
				mark := len(d.path)
				d.path = appendKey(d.path, key)
				err := keybridge.FieldError(d.pathString(), "appears more than once")
				d.path = d.path[:mark]
				return err
			}
			mark := len(d.path)
			d.path = appendKey(d.path, key)
			if err := d.scan(); err != nil {
				return err
			}
			d.path = d.path[:mark]
			if done, err := d.next('}'); done || err != nil {
				return err
			}
		}
	case c == '[':
		if err := d.enter(); err != nil {
			return err
		}
		if d.pos < len(d.data) && d.data[d.pos] == ']' {
			d.pos++
			d.depth--
			return nil
		}
		for i := 0; ; i++ {
			mark := len(d.path)
			d.path = fmt.Appendf(d.path, "[%d]", i)
			if err := d.scan(); err != nil {
				return err
			}
			d.path = d.path[:mark]
			if done, err := d.next(']'); done || err != nil {
				return err
			}
		}
	case c == 't':
		return d.literal("true")
	case c == 'f':
		return d.literal("false")
	case c == 'n':
		return d.literal("null")
	case c == '-' || (c >= '0' && c <= '9'):
		return d.number()
	}
	return d.syntaxError()
}

func (d *decoder) literal(lit string) error {
	if len(d.data)-d.pos < len(lit) || string(d.data[d.pos:d.pos+len(lit)]) != lit {
		return d.syntaxError()
	}
	d.pos += len(lit)
	return nil
}

func (d *decoder) digits() int {
	n := 0
	for d.pos < len(d.data) && d.data[d.pos] >= '0' && d.data[d.pos] <= '9' {
		d.pos++
		n++
	}
	return n
}

// number checks a JSON number: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func (d *decoder) number() error {
	if d.data[d.pos] == '-' {
		d.pos++
	}
	if d.pos < len(d.data) && d.data[d.pos] == '0' {
		d.pos++
	} else if d.digits() == 0 {
		return d.syntaxError()
	}
	if d.pos < len(d.data) && d.data[d.pos] == '.' {
		d.pos++
		if d.digits() == 0 {
			return d.syntaxError()
		}
	}
	if d.pos < len(d.data) && (d.data[d.pos] == 'e' || d.data[d.pos] == 'E') {
		d.pos++
		if d.pos < len(d.data) && (d.data[d.pos] == '+' || d.data[d.pos] == '-') {
			d.pos++
		}
		if d.digits() == 0 {
			return d.syntaxError()
		}
	}
	return nil
}

// str checks the string at d.pos and moves past its closing quote. It
// reports whether the string holds escapes.
func (d *decoder) str() (escaped bool, err error) {
	d.pos++ // the opening quote
	for d.pos < len(d.data) {
		c := d.data[d.pos]
		switch {
		case c == '"':
			d.pos++
			return escaped, nil
		case c < 0x20:
			return escaped, d.syntaxError()
		case c == '\\':
			escaped = true
			if err := d.escape(); err != nil {
				return escaped, err
			}
		case c < utf8.RuneSelf:
			d.pos++
		default:
			r, size := utf8.DecodeRune(d.data[d.pos:])
			if r == utf8.RuneError && size == 1 {
				return escaped, d.textError("must be valid UTF-8", "is not valid UTF-8 at byte %d")
			}
			d.pos += size
		}
	}
	return escaped, d.syntaxError()
}

// textError is a 400 about a string's content: naming the field when the
// string is a value, the byte offset when it is the body or a key.
func (d *decoder) textError(why, bodyFormat string) error {
	if p := d.pathString(); p != "" {
		return keybridge.FieldError(p, why)
	}
	return keybridge.Errorf(keybridge.EInvalid, "request body "+bodyFormat, d.pos)
}

// escape checks the escape sequence at d.pos.
func (d *decoder) escape() error {
	if d.pos+1 >= len(d.data) {
		d.pos = len(d.data)
		return d.syntaxError()
	}
	switch d.data[d.pos+1] {
	case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
		d.pos += 2
		return nil
	case 'u':
	default:
		d.pos++
		return d.syntaxError()
	}
	r, ok := d.hex4(d.pos + 2)
	if !ok {
		return d.syntaxError()
	}
	switch {
	case r == 0:
		return d.textError("must not hold NUL characters", "holds a NUL character at byte %d")
	case r >= 0xDC00 && r <= 0xDFFF:
		return d.textError("must be valid Unicode: an unpaired surrogate escape", "holds an unpaired surrogate escape at byte %d")
	case r >= 0xD800 && r <= 0xDBFF:
		if d.pos+11 < len(d.data) && d.data[d.pos+6] == '\\' && d.data[d.pos+7] == 'u' {
			if lo, ok := d.hex4(d.pos + 8); ok && lo >= 0xDC00 && lo <= 0xDFFF {
				d.pos += 12
				return nil
			}
		}
		return d.textError("must be valid Unicode: an unpaired surrogate escape", "holds an unpaired surrogate escape at byte %d")
	}
	d.pos += 6
	return nil
}

func (d *decoder) hex4(at int) (rune, bool) {
	if at+4 > len(d.data) {
		return 0, false
	}
	var r rune
	for _, c := range d.data[at : at+4] {
		r <<= 4
		switch {
		case c >= '0' && c <= '9':
			r |= rune(c - '0')
		case c >= 'a' && c <= 'f':
			r |= rune(c - 'a' + 10)
		case c >= 'A' && c <= 'F':
			r |= rune(c - 'A' + 10)
		default:
			return 0, false
		}
	}
	return r, true
}
