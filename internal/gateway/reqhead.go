package gateway

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"net/textproto"
	"net/url"
	"strings"
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
// field (reqhead_internal_test.go checks it, and FuzzReadRequestHead keeps
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
	head, line, ok := bufferedHead(br)
	if !ok {
		return nil
	}
	// The request line: method SP origin-form target SP HTTP/1.1.
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

	var f fieldLines
	if !f.read(head, len(line)+2) || f.hosts > 1 || f.lengths > 1 || f.codings > 0 {
		return nil
	}
	// The method, target and values are cut from one string.
	method := f.s[:sp1]
	target := f.s[sp1+1 : sp1+1+sp2]
	u := plainRequestURI(target)
	if u == nil {
		var err error
		if u, err = url.ParseRequestURI(target); err != nil {
			return nil
		}
	}
	length := int64(0)
	if f.lengths == 1 {
		var ok bool
		if length, ok = parseLength(f.length); !ok {
			return nil
		}
	}

	if _, err := br.Discard(len(head) + 2); err != nil {
		return nil // cannot happen: the bytes are buffered
	}
	req := &http.Request{
		Method:     method,
		URL:        u,
		Proto:      "HTTP/1.1",
		ProtoMajor: 1,
		ProtoMinor: 1,
		Header:     f.header("Host", ""), // as net/http does: the Host field holds it
		Host:       f.host,
		RequestURI: target,
		Close:      f.close,
		Body:       http.NoBody,
	}
	if length > 0 {
		req.ContentLength = length
		req.Body = &lengthBody{r: br, n: length}
	}
	return req
}

// plainRequestURI is url.ParseRequestURI(target) for an origin-form
// target whose path needs no unescaping and would not be escaped again
// (so RawPath stays empty), or nil for any other.
func plainRequestURI(target string) *url.URL {
	path, query, hasQuery := strings.Cut(target, "?")
	for i := 0; i < len(path); i++ {
		if !pathSafe[path[i]] {
			return nil
		}
	}
	return &url.URL{Path: path, RawQuery: query, ForceQuery: hasQuery && query == ""}
}

// pathSafe marks the bytes url.URL keeps in a path as they are: unreserved
// and the reserved ones a path may hold unescaped.
var pathSafe = func() (t [256]bool) {
	for c := range 256 {
		t[c] = 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("-_.~$&+,/:;=@", byte(c)) >= 0
	}
	return t
}()

var crlfcrlf = []byte("\r\n\r\n")

// bufferedHead returns the message head br holds whole: from its first
// line to the last header line's CRLF, the blank line after it left out
// (what follows the head starts len(head)+2 on), and the first line
// without its CRLF. ok is false when br holds no whole head, or the first
// line does not end in CRLF.
func bufferedHead(br *bufio.Reader) (head, first []byte, ok bool) {
	b, _ := br.Peek(br.Buffered())
	end := bytes.Index(b, crlfcrlf)
	if end < 0 {
		return nil, nil, false
	}
	head = b[:end+2]
	nl := bytes.IndexByte(head, '\n')
	if nl < 1 || head[nl-1] != '\r' {
		return nil, nil, false
	}
	return head, head[:nl-1], true
}

// fieldLines are a plain head's header lines, read as textproto's
// ReadMIMEHeader reads them, before they become a map: what the readers
// judge (Host, Content-Length, Transfer-Encoding, Connection) is noted on
// the way, so that the map is hashed once per name.
type fieldLines struct {
	s     string // the whole head, which every name and value is cut from
	n     int
	names [maxPlainHeaders]string
	vals  [maxPlainHeaders]string

	hosts, lengths, codings int
	host, length, coding    string // the first of each
	close                   bool   // Connection holds the token close
}

// read reads the header lines of head (a message head up to its last
// line's CRLF, the blank line left out) from offset off. It reports
// false, for net/http to read the head, unless every line is plain: no
// folding, no bare LF, a token name, a valid value, at most
// maxPlainHeaders; Pragma and Trailer, which net/http's readers act on,
// are not plain either.
func (f *fieldLines) read(head []byte, off int) bool {
	for p := head[off:]; len(p) > 0; f.n++ {
		i := bytes.IndexByte(p, '\n')
		if f.n == maxPlainHeaders || i < 1 || p[i-1] != '\r' || !plainField(p[:i-1]) {
			return false
		}
		p = p[i+1:]
	}
	s := string(head)
	f.s = s
	for k := 0; off < len(s); k++ {
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
		v := s[vs:ve]
		f.names[k], f.vals[k] = name, v
		switch name {
		case "Host":
			if f.hosts == 0 {
				f.host = v
			}
			f.hosts++
		case "Content-Length":
			if f.lengths == 0 {
				f.length = v
			}
			f.lengths++
		case "Transfer-Encoding":
			if f.codings == 0 {
				f.coding = v
			}
			f.codings++
		case "Connection":
			f.close = f.close || hasToken(v, "close")
		case "Pragma", "Trailer":
			return false
		}
		off = i + 1
	}
	return true
}

// header makes the lines a header map, leaving out the names drop holds
// ("" drops nothing). Values of one name keep their order; each name is
// hashed once.
func (f *fieldLines) header(drop1, drop2 string) http.Header {
	h := make(http.Header, f.n)
	strs := make([]string, f.n)
next:
	for i := 0; i < f.n; i++ {
		name := f.names[i]
		if name == drop1 || name == drop2 {
			continue
		}
		count := 1
		for j := 0; j < f.n; j++ {
			if j != i && f.names[j] == name {
				if j < i {
					continue next // made with its first line
				}
				count++
			}
		}
		vv := strs[i : i+1 : i+1]
		vv[0] = f.vals[i]
		if count > 1 {
			vv = make([]string, 0, count)
			for j := i; j < f.n; j++ {
				if f.names[j] == name {
					vv = append(vv, f.vals[j])
				}
			}
		}
		h[name] = vv
	}
	return h
}

// plainField reports whether a header line (without its CRLF) is one
// net/http reads as it stands: a name of token bytes, a colon, and a value
// of valid bytes; no folding (a line starting with a space or tab).
func plainField(ln []byte) bool {
	colon := bytes.IndexByte(ln, ':')
	return colon > 0 && isToken(ln[:colon]) && validText(ln[colon+1:])
}

// validText reports whether b holds no control byte but horizontal tab:
// what net/http takes in a field value or a reason phrase.
func validText(b []byte) bool {
	for _, c := range b {
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
// interned for the names clients and providers usually send, a new
// string otherwise.
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
	// A switch on string(c) compares without converting c.
	switch string(c) {
	case "Accept":
		return "Accept"
	case "Accept-Encoding":
		return "Accept-Encoding"
	case "Accept-Language":
		return "Accept-Language"
	case "Alt-Svc":
		return "Alt-Svc"
	case "Anthropic-Beta":
		return "Anthropic-Beta"
	case "Anthropic-Version":
		return "Anthropic-Version"
	case "Api-Key":
		return "Api-Key"
	case "Authorization":
		return "Authorization"
	case "Cache-Control":
		return "Cache-Control"
	case "Cf-Ray":
		return "Cf-Ray"
	case "Connection":
		return "Connection"
	case "Content-Length":
		return "Content-Length"
	case "Content-Type":
		return "Content-Type"
	case "Date":
		return "Date"
	case "Expect":
		return "Expect"
	case "Host":
		return "Host"
	case "Idempotency-Key":
		return "Idempotency-Key"
	case "Openai-Beta":
		return "Openai-Beta"
	case "Openai-Organization":
		return "Openai-Organization"
	case "Openai-Processing-Ms":
		return "Openai-Processing-Ms"
	case "Openai-Project":
		return "Openai-Project"
	case "Openai-Version":
		return "Openai-Version"
	case "Request-Id":
		return "Request-Id"
	case "Server":
		return "Server"
	case "Set-Cookie":
		return "Set-Cookie"
	case "Strict-Transport-Security":
		return "Strict-Transport-Security"
	case "Traceparent":
		return "Traceparent"
	case "Tracestate":
		return "Tracestate"
	case "Transfer-Encoding":
		return "Transfer-Encoding"
	case "User-Agent":
		return "User-Agent"
	case "Vary":
		return "Vary"
	case "X-Amz-Content-Sha256":
		return "X-Amz-Content-Sha256"
	case "X-Amz-Date":
		return "X-Amz-Date"
	case "X-Amz-Security-Token":
		return "X-Amz-Security-Token"
	case "X-Amzn-Requestid":
		return "X-Amzn-Requestid"
	case "X-Api-Key":
		return "X-Api-Key"
	case "X-Goog-Api-Client":
		return "X-Goog-Api-Client"
	case "X-Goog-Api-Key":
		return "X-Goog-Api-Key"
	case "X-Ratelimit-Limit-Requests":
		return "X-Ratelimit-Limit-Requests"
	case "X-Ratelimit-Limit-Tokens":
		return "X-Ratelimit-Limit-Tokens"
	case "X-Ratelimit-Remaining-Requests":
		return "X-Ratelimit-Remaining-Requests"
	case "X-Ratelimit-Remaining-Tokens":
		return "X-Ratelimit-Remaining-Tokens"
	case "X-Ratelimit-Reset-Requests":
		return "X-Ratelimit-Reset-Requests"
	case "X-Ratelimit-Reset-Tokens":
		return "X-Ratelimit-Reset-Tokens"
	case "X-Request-Id":
		return "X-Request-Id"
	case "X-Stainless-Arch":
		return "X-Stainless-Arch"
	case "X-Stainless-Async":
		return "X-Stainless-Async"
	case "X-Stainless-Lang":
		return "X-Stainless-Lang"
	case "X-Stainless-Os":
		return "X-Stainless-Os"
	case "X-Stainless-Package-Version":
		return "X-Stainless-Package-Version"
	case "X-Stainless-Retry-Count":
		return "X-Stainless-Retry-Count"
	case "X-Stainless-Runtime":
		return "X-Stainless-Runtime"
	case "X-Stainless-Runtime-Version":
		return "X-Stainless-Runtime-Version"
	case "X-Stainless-Timeout":
		return "X-Stainless-Timeout"
	}
	return string(c)
}

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

// hasToken reports whether a comma-separated header value holds token,
// compared in ASCII case-insensitively, as net/http's shouldClose reads
// Connection.
func hasToken(v, token string) bool {
	for len(v) > 0 {
		var f string
		if i := strings.IndexByte(v, ','); i >= 0 {
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
		if equalFold(f, token) { // ASCII only: "cloſe" is not "close", as to net/http
			return true
		}
	}
	return false
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
