package gateway

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"net/textproto"
	"net/url"
)

// readRequest reads the next request from br as http.ReadRequest does.
//
// http.ReadRequest costs more than a microsecond and a dozen allocations
// for a plain request head, most of it in building the header map one
// string at a time. The common case, a whole HTTP/1.1 head already
// buffered, of well-formed lines and nothing that needs net/http's
// judgement, is read here instead: one string holds every value, the
// usual names are interned, and one array backs the value slices. The
// result is what http.ReadRequest returns for the same bytes, field for
// field (reqhead_test.go checks it, and FuzzReadRequestHead keeps
// checking it). Anything else — another version, a folded or bare-LF
// line, Transfer-Encoding, a duplicate Host or Content-Length, Pragma,
// Trailer, a target not in origin form, a head not yet all buffered —
// is left to http.ReadRequest, which gets the same bytes: nothing was
// consumed.
func readRequest(br *bufio.Reader) (*http.Request, error) {
	if req := readPlainRequest(br); req != nil {
		return req, nil
	}
	return http.ReadRequest(br)
}

// maxPlainHeaders bounds the header lines of a head read here; more are
// left to net/http.
const maxPlainHeaders = 64

// readPlainRequest reads a plain request head from what br has buffered,
// or returns nil having consumed nothing.
func readPlainRequest(br *bufio.Reader) *http.Request {
	b, _ := br.Peek(br.Buffered())
	end := bytes.Index(b, crlfcrlf)
	if end < 0 {
		return nil
	}
	head := b[:end+2] // the request line and the header lines, each with its CRLF

	// The request line: method SP origin-form target SP HTTP/1.1.
	nl := bytes.IndexByte(head, '\n')
	if nl < 1 || head[nl-1] != '\r' {
		return nil
	}
	line := head[:nl-1]
	sp1 := bytes.IndexByte(line, ' ')
	if sp1 < 1 || !isToken(line[:sp1]) {
		return nil
	}
	rest := line[sp1+1:]
	sp2 := bytes.IndexByte(rest, ' ')
	if sp2 < 1 || rest[0] != '/' || string(rest[sp2+1:]) != "HTTP/1.1" {
		return nil
	}
	for _, c := range rest[:sp2] {
		if c <= ' ' || c >= 0x7f {
			return nil
		}
	}

	// One string holds the whole head: the method, target and values
	// are cut from it.
	str, h, ok := plainHeader(head, nl+1)
	if !ok {
		return nil
	}
	method := str[:sp1]
	target := str[sp1+1 : sp1+1+sp2]
	u, err := url.ParseRequestURI(target)
	if err != nil {
		return nil
	}
	if len(h["Host"]) > 1 || h["Transfer-Encoding"] != nil {
		return nil
	}
	length := int64(0)
	if cl := h["Content-Length"]; cl != nil {
		var ok bool
		if length, ok = parseLength(cl[0]); !ok {
			return nil
		}
	}

	if _, err := br.Discard(len(head) + 2); err != nil {
		return nil // cannot happen: the bytes are buffered
	}
	host := header(h, "Host")
	delete(h, "Host") // as net/http does: the Host field holds it
	req := &http.Request{
		Method:     method,
		URL:        u,
		Proto:      "HTTP/1.1",
		ProtoMajor: 1,
		ProtoMinor: 1,
		Header:     h,
		Host:       host,
		RequestURI: target,
		Close:      hasToken(h["Connection"], "close"),
		Body:       http.NoBody,
	}
	if length > 0 {
		req.ContentLength = length
		req.Body = &lengthBody{r: br, n: length}
	}
	return req
}

var crlfcrlf = []byte("\r\n\r\n")

// plainHeader reads the header lines of head (a message head up to its
// last line's CRLF, the blank line left out) from offset off, as
// textproto's ReadMIMEHeader does, if every line is plain: no folding, no
// bare LF, token names, valid values, at most maxPlainHeaders. The whole
// head is made one string, from which every value is cut; it is returned
// too. Pragma, Trailer and a second Content-Length, which net/http's
// readers judge, are not plain.
func plainHeader(head []byte, off int) (string, http.Header, bool) {
	n := 0
	for p := head[off:]; len(p) > 0; n++ {
		i := bytes.IndexByte(p, '\n')
		if n == maxPlainHeaders || i < 1 || p[i-1] != '\r' || !plainField(p[:i-1]) {
			return "", nil, false
		}
		p = p[i+1:]
	}
	s := string(head)
	h := make(http.Header, n)
	strs := make([]string, n)
	for off < len(s) {
		i := off + bytes.IndexByte(head[off:], '\n')
		ln := head[off : i-1]
		colon := bytes.IndexByte(ln, ':')
		name := canonicalName(ln[:colon])
		vs, ve := off+colon+1, i-1
		for vs < ve && (s[vs] == ' ' || s[vs] == '\t') {
			vs++
		}
		for ve > vs && (s[ve-1] == ' ' || s[ve-1] == '\t') {
			ve--
		}
		if vv := h[name]; vv != nil {
			if name == "Content-Length" {
				return "", nil, false
			}
			h[name] = append(vv, s[vs:ve])
		} else {
			vv, strs = strs[:1:1], strs[1:]
			vv[0] = s[vs:ve]
			h[name] = vv
		}
		off = i + 1
	}
	for _, name := range [...]string{"Pragma", "Trailer"} {
		if _, ok := h[name]; ok {
			return "", nil, false
		}
	}
	return s, h, true
}

// plainField reports whether a header line (without its CRLF) is one
// net/http reads as it stands: a name of token bytes, a colon, and a value
// of valid bytes; no folding (a line starting with a space or tab).
func plainField(ln []byte) bool {
	colon := bytes.IndexByte(ln, ':')
	if colon < 1 || !isToken(ln[:colon]) {
		return false
	}
	for _, c := range ln[colon+1:] {
		if c < ' ' && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

// isToken reports whether b is all token characters (RFC 9110 tchar).
func isToken(b []byte) bool {
	for _, c := range b {
		if c >= 0x80 || tchar[c] == 0 {
			return false
		}
	}
	return true
}

var tchar = func() (t [128]byte) {
	for _, c := range []byte("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ") {
		t[c] = 1
	}
	return t
}()

// canonicalName is textproto's canonical form of a valid header name:
// interned for the names clients usually send, a new string otherwise.
func canonicalName(name []byte) string {
	var buf [48]byte
	if len(name) > len(buf) {
		return textproto.CanonicalMIMEHeaderKey(string(name))
	}
	c := buf[:len(name)]
	upper := true
	for i, ch := range name {
		switch {
		case upper && 'a' <= ch && ch <= 'z':
			ch -= 'a' - 'A'
		case !upper && 'A' <= ch && ch <= 'Z':
			ch += 'a' - 'A'
		}
		c[i] = ch
		upper = ch == '-'
	}
	if s, ok := commonNames[string(c)]; ok {
		return s
	}
	return string(c)
}

// commonNames interns the header names of the gateway's usual requests.
var commonNames = func() map[string]string {
	m := map[string]string{}
	for _, n := range []string{
		"Accept", "Accept-Encoding", "Accept-Language", "Anthropic-Beta", "Anthropic-Version",
		"Api-Key", "Authorization", "Cache-Control", "Connection", "Content-Length", "Content-Type",
		"Expect", "Host", "Openai-Beta", "Openai-Organization", "Openai-Project", "User-Agent",
		"X-Amz-Content-Sha256", "X-Amz-Date", "X-Amz-Security-Token", "X-Api-Key", "X-Goog-Api-Key",
		"X-Goog-Api-Client", "X-Request-Id", "X-Stainless-Arch", "X-Stainless-Async", "X-Stainless-Lang",
		"X-Stainless-Os", "X-Stainless-Package-Version", "X-Stainless-Retry-Count", "X-Stainless-Runtime",
		"X-Stainless-Runtime-Version", "X-Stainless-Timeout", "Idempotency-Key", "Traceparent", "Tracestate",
	} {
		m[n] = n
	}
	return m
}()

// parseLength reads a Content-Length value as net/http does (digits
// only, leading zeros allowed), refusing what it would refuse or what
// does not fit 18 digits.
func parseLength(v string) (int64, bool) {
	if v == "" || len(v) > 18 {
		return 0, false
	}
	var n int64
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// hasToken reports whether a comma-separated header holds token, in
// ASCII case-insensitive comparison, as net/http's shouldClose reads
// Connection.
func hasToken(values []string, token string) bool {
	for _, v := range values {
		for len(v) > 0 {
			var f string
			if i := indexComma(v); i >= 0 {
				f, v = v[:i], v[i+1:]
			} else {
				f, v = v, ""
			}
			for len(f) > 0 && (f[0] == ' ' || f[0] == '\t') {
				f = f[1:]
			}
			for len(f) > 0 && (f[len(f)-1] == ' ' || f[len(f)-1] == '\t') {
				f = f[:len(f)-1]
			}
			if asciiEqualFold(f, token) {
				return true
			}
		}
	}
	return false
}

func indexComma(s string) int {
	for i := 0; i < len(s); i++ {
		if s[i] == ',' {
			return i
		}
	}
	return -1
}

// asciiEqualFold is strings.EqualFold for ASCII only: "cloſe" is not
// "close" here, as it is not to net/http.
func asciiEqualFold(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// lengthBody is a request body of a known length read from the
// connection, as net/http's: io.ErrUnexpectedEOF when the connection ends
// before it. Close leaves what is unread to Front, which drains it or
// closes the connection.
type lengthBody struct {
	r *bufio.Reader
	n int64
}

func (b *lengthBody) Read(p []byte) (int, error) {
	if b.n <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > b.n {
		p = p[:b.n]
	}
	n, err := b.r.Read(p)
	b.n -= int64(n)
	if err == io.EOF {
		if b.n > 0 {
			return n, io.ErrUnexpectedEOF
		}
		err = nil
	}
	if b.n <= 0 && err == nil {
		err = io.EOF
	}
	return n, err
}

func (b *lengthBody) Close() error { return nil }
