package gateway

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/upstream"
)

// aLongTimeAgo is a deadline in the past: setting it wakes a blocked read
// or write at once.
var aLongTimeAgo = time.Unix(1, 0)

// forward tries keys in order until one answers (SPEC §7.4), then relays
// that answer.
func (x *exchange) forward(keys []*upstreamKey) {
	g := x.g
	ctx := x.r.Context()
	var seen []string
	// rateLimited: some key was; soonest is the shortest wait one of them
	// asked for (a Retry-After of 0 included).
	rateLimited := false
	var soonest time.Duration
	limit := func(d time.Duration) {
		if !rateLimited || d < soonest {
			soonest = d
		}
		rateLimited = true
	}
	tried := 0
	for _, k := range keys {
		now := time.Now()
		if cd, resting := g.cool.check(k.id, now); resting && k.id != "" {
			if cd.limited {
				limit(cd.until.Sub(now))
			}
			continue
		}
		if tried > 0 {
			x.failovers++
			g.m.failovers.Inc()
		}
		tried++
		x.upstreamKey, x.credentialID = k.id, k.credential
		resp, cn, err := x.send(ctx, k, now)
		if err != nil {
			if ctx.Err() != nil {
				x.clientGone = true
				x.status = statusClientClosed
				return
			}
			var egress *upstream.EgressError
			var dial *dialError
			switch {
			case errors.As(err, &egress):
				x.fail(newError(keybridge.EBadGateway, fmt.Sprintf("provider %q cannot be reached: %s", x.rt.provider.Name, egress.Error())))
				return
			case errors.As(err, &dial):
				// Connection errors fail over, timeouts included.
			case isTimeout(err):
				x.fail(newError(codeGatewayTimeout, fmt.Sprintf("provider %q sent no response headers within %s", x.rt.provider.Name, g.opts.HeaderTimeout)))
				return
			}
			seen = append(seen, "connection error")
			continue
		}
		x.upstreamSeen = resp.StatusCode
		g.m.upstream(x.rt.provider.Type, resp.StatusCode)
		st := resp.StatusCode
		if x.googleKeyInvalid(resp, cn) {
			st = http.StatusUnauthorized
		}
		if failsOver(st) {
			d, rested := g.cool.fail(k.id, st, resp.Header, time.Now())
			if rested {
				g.m.cooldowns.Inc()
			}
			if resp.StatusCode == http.StatusTooManyRequests {
				limit(d)
			}
			x.discard(resp, cn)
			seen = append(seen, strconv.Itoa(resp.StatusCode))
			continue
		}
		g.cool.succeed(k.id)
		x.relay(resp, cn)
		return
	}
	x.upstreamKey = ""
	if rateLimited {
		e := newError(keybridge.ERateLimited, fmt.Sprintf("every upstream key of provider %q is rate limited", x.rt.provider.Name))
		e.retryAfter = max(1, int((soonest+time.Second-1)/time.Second))
		x.fail(e)
		return
	}
	what := "every upstream key is resting after being refused"
	if len(seen) > 0 {
		what = "every upstream key failed (" + strings.Join(seen, ", ") + ")"
	}
	x.fail(newError(keybridge.EBadGateway, fmt.Sprintf("provider %q: %s", x.rt.provider.Name, what)))
}

// statusClientClosed is what a request whose client went away is
// recorded with (nginx's 499): no status reached the client.
const statusClientClosed = 499

// failsOver reports whether an answer moves to the next key.
func failsOver(status int) bool {
	return status == http.StatusUnauthorized || status == http.StatusForbidden ||
		status == http.StatusTooManyRequests || status >= 500
}

// googleKeyInvalid reports whether a Google 400 refuses the key itself
// (reason API_KEY_INVALID): Google's answer to a revoked or mistyped key,
// where other providers answer 401, so it is one for failover and
// cooldown. Only this status of this provider has its body read; the
// bytes read are put back for relaying.
func (x *exchange) googleKeyInvalid(resp *http.Response, cn *conn) bool {
	if x.rt.provider.Type != keybridge.ProviderGoogle || resp.StatusCode != http.StatusBadRequest {
		return false
	}
	if setReadDeadline(x.r.Context(), cn, time.Now().Add(x.g.opts.IdleTimeout), timerSlack(x.g.opts.IdleTimeout)) != nil {
		return false
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxDiscard))
	resp.Body = struct {
		io.Reader
		io.Closer
	}{io.MultiReader(bytes.NewReader(b), resp.Body), resp.Body}
	return err == nil && bytes.Contains(b, []byte(`"API_KEY_INVALID"`))
}

func isTimeout(err error) bool {
	var t interface{ Timeout() bool }
	return errors.As(err, &t) && t.Timeout()
}

// send writes the request with k's credential and reads the answer's
// head. Upstream time runs from sent, when k was tried: taking a
// connection to the provider, a dial included, is its turn, and so is
// the wait of an attempt that fails (a timeout, a refused or broken
// connection).
//
// A reused connection may have been closed by the provider while idle:
// the request then fails at once, in its write or with the end of the
// connection read right after it, before any answer. Such a request is
// sent again on a fresh connection, not counted as a failover. One that
// failed later, or on a fresh connection, may have been processed (and
// billed): it is never sent again on the same key.
func (x *exchange) send(ctx context.Context, k *upstreamKey, sent time.Time) (*http.Response, *conn, error) {
	g := x.g
	failed := func(err error) (*http.Response, *conn, error) {
		x.upstreamDur += time.Since(sent)
		return nil, nil, err
	}
	for {
		cn, reused, err := g.client.get(ctx, x.rt.pool, sent)
		if err != nil {
			return failed(err)
		}
		watchClient(ctx, cn)
		if err = x.writeRequest(cn.bw, k); err == nil {
			err = cn.bw.Flush()
		}
		cn.head.limit(maxResponseHead)
		written := err == nil
		if written {
			if err = setReadDeadline(ctx, cn, sent.Add(g.opts.HeaderTimeout), timerSlack(g.opts.HeaderTimeout)); err == nil {
				_, err = cn.br.Peek(1)
			}
		}
		if err != nil {
			x.release(cn, false)
			if reused && ctx.Err() == nil && !isTimeout(err) && (!written || time.Since(sent) < idleCloseWindow) {
				continue
			}
			return failed(err)
		}
		resp, err := readResponse(cn.br, x.r.Method)
		cn.head.unlimit()
		if err != nil {
			x.release(cn, false)
			return failed(err)
		}
		x.headersAt = time.Now()
		x.upstreamDur += x.headersAt.Sub(sent)
		return resp, cn, nil
	}
}

// idleCloseWindow is how soon after a request went out on a reused
// connection a failure with no answer is taken for the provider having
// closed that connection while idle. The end of such a connection is
// usually read at once, having arrived before the request was written;
// when the two cross, it comes within a round trip. A provider does not
// process a request in that time and then drop it unanswered; one that
// drops it after longer may have done the work, and the request is not
// sent again.
const idleCloseWindow = 500 * time.Millisecond

// setReadDeadline makes cn's read deadline between t and t plus slack,
// unless the client is already gone. A deadline already in that span
// stays: moving a runtime timer costs, and connections that serve one
// request after another ask for nearly the same deadline each time (the
// header timeout's, from when the request was sent), so a deadline set
// with slack ahead serves the next requests too.
//
// The watch that send starts poisons the deadline when the client goes;
// a deadline set after that would undo it, so ctx is checked after the
// deadline is set (or found in its span): either the check sees the
// client gone, or the poisoning comes after.
func setReadDeadline(ctx context.Context, cn *conn, t time.Time, slack time.Duration) error {
	if d := cn.readBy.Sub(t); d < 0 || d > slack {
		cn.setReadBy(t.Add(slack))
	}
	return ctx.Err()
}

// timerSlack is how much later than asked a timeout of d may fire: a
// second, less for short timeouts.
func timerSlack(d time.Duration) time.Duration { return min(time.Second, d/4) }

// watchClient has the client going away (ctx ending) poison cn's
// deadline, which wakes whatever waits on the provider, until
// unwatchClient.
func watchClient(ctx context.Context, cn *conn) {
	if fc, ok := ctx.(*frontCtx); ok {
		fc.watchUpstream(cn)
		cn.front = fc
		return
	}
	cn.stop = context.AfterFunc(ctx, func() { cn.nc.SetDeadline(aLongTimeAgo) })
}

// unwatchClient ends watchClient; it reports false if the deadline was
// poisoned meanwhile.
func unwatchClient(cn *conn) bool {
	ok := true
	if cn.front != nil {
		ok = cn.front.unwatchUpstream(cn)
	} else if cn.stop != nil {
		ok = cn.stop()
	}
	cn.front, cn.stop = nil, nil
	return ok
}

// release gives a connection back: to the pool when its answer was read
// whole and nothing poisoned its deadline, else closed.
func (x *exchange) release(cn *conn, reuse bool) {
	if !unwatchClient(cn) {
		reuse = false // the client went away: the deadline is spent
	}
	if reuse {
		at := x.readAt
		if at.IsZero() {
			at = time.Now()
		}
		x.g.client.put(cn, at)
		return
	}
	cn.nc.Close()
}

// maxDiscard is how much of a failed answer is read to keep its
// connection; a longer one closes the connection instead.
const maxDiscard = 64 << 10

// discard drops an answer that is not passed on (a 401's body may echo
// the key; a failed-over answer is replaced).
func (x *exchange) discard(resp *http.Response, cn *conn) {
	reuse := false
	if !resp.Close && resp.ContentLength >= 0 && resp.ContentLength <= maxDiscard {
		cn.setReadBy(time.Now().Add(time.Second))
		_, err := io.Copy(io.Discard, resp.Body)
		reuse = err == nil
	}
	x.release(cn, reuse)
}

// writeRequest writes the forwarded request: the provider's base path and
// the caller's path bytes, the query without key, every header but the
// caller's credentials and hop-by-hop ones, the upstream credential, and
// the body as it came.
func (x *exchange) writeRequest(bw *bufio.Writer, k *upstreamKey) error {
	r, rt := x.r, x.rt
	body := *x.body
	query := x.query
	if rt.provider.Type == keybridge.ProviderAzureOpenAI {
		if v, sent := x.azureAPIVersion(); !sent {
			if query != "" {
				query += "&"
			}
			query += "api-version=" + url.QueryEscape(v)
		}
	}
	upgrade := isUpgrade(r)
	if rt.provider.Type == keybridge.ProviderBedrock {
		path := rt.basePath + x.rest
		if path == "" {
			path = "/"
		}
		req, err := x.signBedrock(path, query, body)
		if err != nil {
			return err
		}
		// The signer put the query in canonical order: send it so.
		writeHead(bw, r.Method, req.URL.RawPath, "", req.URL.RawQuery, rt.hostHdr)
		for name, vv := range req.Header {
			if name == "Host" || name == "Content-Length" {
				continue
			}
			for _, v := range vv {
				writeHeader(bw, name, v)
			}
		}
	} else {
		writeHead(bw, r.Method, rt.basePath, x.rest, query, rt.hostHdr)
		connHdr := r.Header["Connection"]
		for name, vv := range r.Header {
			if !x.forwarded(name, connHdr) {
				continue
			}
			for _, v := range vv {
				if name == "Sec-Websocket-Protocol" {
					if v = withoutKeyProtocols(v); v == "" {
						continue
					}
				}
				writeHeader(bw, name, v)
			}
		}
		if name, prefix, key := (upstream.Credential{Type: rt.provider.Type, Key: k.secret}).HeaderParts(); name != "" {
			bw.WriteString(name)
			bw.WriteString(": ")
			bw.WriteString(prefix)
			writeHeaderValue(bw, key)
		}
	}
	if upgrade {
		bw.WriteString("Connection: Upgrade\r\nUpgrade: websocket\r\n")
	}
	if len(body) > 0 || methodHasBody(r.Method) {
		bw.WriteString("Content-Length: ")
		writeInt(bw, int64(len(body)), 10)
		bw.WriteString("\r\n")
	}
	bw.WriteString("\r\n")
	_, err := bw.Write(body)
	return err
}

// writeHead writes the request line, its path in two parts (base and
// rest; "/" when both are empty), and the Host header.
func writeHead(bw *bufio.Writer, method, base, rest, query, host string) {
	bw.WriteString(method)
	bw.WriteByte(' ')
	if base == "" && rest == "" {
		bw.WriteByte('/')
	}
	bw.WriteString(base)
	bw.WriteString(rest)
	if query != "" {
		bw.WriteByte('?')
		bw.WriteString(query)
	}
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	bw.WriteString(host)
	bw.WriteString("\r\n")
}

func writeHeader(bw *bufio.Writer, name, value string) {
	bw.WriteString(name)
	bw.WriteString(": ")
	writeHeaderValue(bw, value)
}

// writeHeaderValue writes a header's value and ends its line.
func writeHeaderValue(bw *bufio.Writer, value string) {
	bw.WriteString(value)
	bw.WriteString("\r\n")
}

// writeInt writes n in base without allocating.
func writeInt(bw *bufio.Writer, n int64, base int) {
	if bw.Available() < 20 {
		bw.Flush() // an error stays in bw, for the caller's next write
	}
	bw.Write(strconv.AppendInt(bw.AvailableBuffer(), n, base))
}

func methodHasBody(m string) bool { return m == "POST" || m == "PUT" || m == "PATCH" }

// forwarded reports whether a request header (canonical name) goes
// upstream. What stays behind: the caller's credentials, hop-by-hop
// headers (SPEC §7.2) and those the Connection header names, those the
// gateway writes itself, on metered paths those that would make the
// answer unreadable as it passes, and for Bedrock the caller's own
// signing headers.
func (x *exchange) forwarded(name string, connection []string) bool {
	switch name {
	case hdrAuthorization, hdrXAPIKey, hdrAPIKey, hdrGoogAPIKey,
		"Connection", "Keep-Alive", "Te", "Trailer", "Transfer-Encoding",
		"Host", "Content-Length", "Expect",
		"Upgrade": // written again for a WebSocket
		return false
	case "X-Amz-Date", "X-Amz-Security-Token", "X-Amz-Content-Sha256":
		if x.rt.provider.Type == keybridge.ProviderBedrock {
			return false
		}
	}
	if x.meter && unmeterable(name) {
		return false
	}
	return !strings.HasPrefix(name, "Proxy-") && !namedIn(connection, name)
}

// keyProtocol starts the WebSocket subprotocol in which OpenAI's browser
// clients pass an API key (the Realtime API's
// "openai-insecure-api-key.<key>"): a caller's Keybridge key put there
// would reach the provider.
const keyProtocol = "openai-insecure-api-key."

// isKeyProtocol reports whether a WebSocket subprotocol carries a key:
// keyProtocol's, its prefix in any letter case, or a Keybridge key sent
// as a subprotocol of its own.
func isKeyProtocol(p string) bool {
	return hasPrefixFold(p, keyProtocol) || strings.HasPrefix(p, "kb_") || strings.HasPrefix(p, "kbs_")
}

// withoutKeyProtocols is a Sec-WebSocket-Protocol value without the
// subprotocols that carry a key. The gateway's own credential goes in
// its header; a caller's key never passes.
func withoutKeyProtocols(v string) string {
	var kept []string
	for p := range strings.SplitSeq(v, ",") {
		if p = strings.TrimSpace(p); p != "" && !isKeyProtocol(p) {
			kept = append(kept, p)
		}
	}
	return strings.Join(kept, ", ")
}

// namedIn reports whether a Connection header names name, each of its
// lines read as hasToken reads one.
func namedIn(connection []string, name string) bool {
	for _, v := range connection {
		if hasToken(v, name) {
			return true
		}
	}
	return false
}

// azureAPIVersion is the api-version an azure-openai request is sent
// with: the caller's, else the provider's settings.api_version, else
// Keybridge's default. sent reports whether the caller's query names the
// parameter, with a value or without.
func (x *exchange) azureAPIVersion() (v string, sent bool) {
	for part := range strings.SplitSeq(x.query, "&") {
		name, val, withValue := strings.Cut(part, "=")
		switch {
		case name != "api-version":
		case !withValue:
			sent = true // forwarded as it came; its version is unknown
		default:
			if u, err := url.QueryUnescape(val); err == nil {
				return u, true
			}
			return val, true
		}
	}
	if v := x.rt.settings.APIVersion; v != "" {
		return v, sent
	}
	return keybridge.DefaultAzureAPIVersion, sent
}

// signBedrock returns a Bedrock request signed afresh with the provider's
// access key: the caller's own signature, and any session token of
// theirs, stay behind. Its URL's RawPath and RawQuery and its headers are
// what to send.
func (x *exchange) signBedrock(path, query string, body []byte) (*http.Request, error) {
	r, rt := x.r, x.rt
	h := make(http.Header, len(r.Header)+2)
	connHdr := r.Header["Connection"]
	for name, vv := range r.Header {
		if x.forwarded(name, connHdr) {
			h[name] = vv
		}
	}
	scheme := "http"
	if rt.pool.tls {
		scheme = "https"
	}
	req := &http.Request{
		Method: r.Method,
		URL:    &url.URL{Scheme: scheme, Host: rt.hostHdr, RawPath: path, RawQuery: query},
		Host:   rt.hostHdr,
		Header: h,
	}
	sum := sha256.Sum256(body)
	err := upstream.Credential{Type: keybridge.ProviderBedrock, Settings: rt.settings}.
		SignBedrock(r.Context(), req, hex.EncodeToString(sum[:]), time.Now())
	if err != nil {
		return nil, err
	}
	return req, nil
}

// hopResponse lists response headers that never pass: the hop-by-hop
// ones (SPEC §7.2), and Keybridge's own X-Keybridge-* from a provider
// that is itself a Keybridge, which would otherwise stand for this one's
// request id or pass the provider's answer off as this gateway's error.
func hopResponse(name string) bool {
	switch name {
	case "Connection", "Keep-Alive", "Te", "Trailer", "Transfer-Encoding", "Upgrade", "Content-Length":
		return true
	}
	return strings.HasPrefix(name, "Proxy-") || keybridgeHeader(name)
}

// keybridgeHeader reports whether a header is one of Keybridge's own.
func keybridgeHeader(name string) bool { return strings.HasPrefix(name, "X-Keybridge-") }

// bufs are the buffers answers are copied through.
var bufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// relay passes an answer to the client as it arrives: headers, then the
// body, each read flushed at once when the answer flows (SPEC §7.5).
func (x *exchange) relay(resp *http.Response, cn *conn) {
	if resp.StatusCode == http.StatusSwitchingProtocols {
		x.tunnel(resp, cn)
		return
	}
	w := x.w
	h := w.Header()
	connHdr := resp.Header["Connection"]
	for name := range resp.Header {
		if hopResponse(name) || namedIn(connHdr, name) {
			delete(resp.Header, name)
		}
	}
	if fw, ok := w.(*frontWriter); ok {
		// The answer's header map, made for this answer alone, becomes
		// the writer's, with the few headers set so far moved into it:
		// cheaper than copying every header of the answer.
		maps.Copy(resp.Header, h)
		fw.header, h = resp.Header, resp.Header
	} else {
		maps.Copy(h, resp.Header)
	}
	x.setLimitHeaders(h)
	ct := header(resp.Header, "Content-Type")
	if x.meter && resp.StatusCode < 300 {
		x.scan = newUsageScanner(x.rt.provider.Type, x.path, ct, resp.Header)
	}
	sse := hasMediaType(ct, "text/event-stream")
	events := sse || hasMediaType(ct, "application/vnd.amazon.eventstream")
	// An answer of events, or of a length not known ahead (chunked),
	// flows: it passes as it arrives, each read flushed (SPEC §7.5), and
	// a proxy in front is asked to pass it so too. Whether it is a
	// stream, for the usage row, the log line and the gauge, is whether
	// the request asked for one: a provider may send any answer chunked.
	flows := events || resp.ContentLength < 0
	x.stream = events || x.streamingRequest()
	if flows {
		h.Set("X-Accel-Buffering", "no")
	} else {
		setLength(w, resp.ContentLength)
	}
	if x.stream {
		g := x.g
		g.m.streams.Inc()
		defer g.m.streams.Dec()
	}
	x.status = resp.StatusCode
	// The provider's own Server-Timing metrics (Google's gfet4t7, a CDN's)
	// pass too, after Keybridge's: the header is a list, and Keybridge's
	// entry is the first.
	provided := resp.Header["Server-Timing"]
	x.setTiming()
	if len(provided) > 0 {
		h["Server-Timing"] = append(h["Server-Timing"][:1:1], provided...)
	}
	w.WriteHeader(resp.StatusCode)
	flusher, _ := w.(http.Flusher)
	// Bytes are flushed as soon as nothing more is waiting to be read
	// from the provider: never held back, but what arrived together
	// (headers and a first event, or a burst of events) leaves in one
	// write.
	if flows && flusher != nil && !moreWaiting(cn) {
		flusher.Flush() // the client learns the stream has begun
	}

	bp := bufs.Get().(*[]byte)
	defer bufs.Put(bp)
	buf := *bp
	idle := x.g.opts.IdleTimeout
	// The idle deadline moves at most once per slack: moving a timer on
	// every read of a stream costs more than the slack. It is moved
	// before less than idle is left, and then to idle plus the slack: a
	// silence of idle always passes, and a longer one is cut within the
	// slack. A body that is all buffered already (a short JSON answer)
	// reads nothing from the connection: it needs no deadline, and the
	// header timeout's stays for the connection's next request.
	slack := timerSlack(idle)
	whole := resp.ContentLength >= 0 && int64(cn.br.Buffered()) >= resp.ContentLength
	ctx := x.r.Context()
	// The head was read at headersAt: the first read needs no clock.
	now := x.headersAt
	if now.IsZero() {
		now = time.Now()
	}
	// A stream's caller is checked again as its bytes flow, as an open
	// WebSocket's is (access.go): a revoked key's stream ends within
	// tunnelRecheck of the provider's next bytes, before they pass.
	checked := now
	for {
		var n int
		var err error
		if !whole {
			err = setReadDeadline(ctx, cn, now.Add(idle), slack)
		}
		if err == nil {
			n, err = resp.Body.Read(buf)
			if err == nil && !whole || flows {
				now = time.Now() // for the next deadline, or the check below
			}
		}
		if flows && n > 0 && now.Sub(checked) >= tunnelRecheck {
			// Before any of these bytes pass.
			checked = now
			if refused := x.stillAllowed(ctx); refused != nil {
				x.release(cn, false)
				x.endStream(ct, refused.code, refused.msg)
				x.g.log.InfoContext(ctx, "gateway: stream ended: its caller lost access", "request_id", x.id, "reason", refused.msg)
				return
			}
		}
		out := buf[:n]
		if x.scan != nil && n > 0 {
			x.scan.Write(out)
		}
		if x.hideUsage != nil && sse {
			out = x.hideUsage.filter(out)
			if err == io.EOF {
				out = append(out, x.hideUsage.flush()...)
			}
		}
		if len(out) > 0 {
			if _, werr := w.Write(out); werr != nil {
				x.clientGone = true
				x.status = statusClientClosed
				x.release(cn, false)
				return
			}
			x.respBytes += int64(len(out))
			if sse {
				x.midEvent = !endsEvent(out)
			}
			if flows && flusher != nil && !moreWaiting(cn) {
				flusher.Flush()
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			x.cut(resp, cn, ct, err)
			return
		}
	}
	x.readAt = now
	if x.scan != nil {
		if st := x.scan.Failure(); st != 0 {
			x.status = st // the provider failed the response in its body
		}
	}
	x.release(cn, !resp.Close)
	if flusher != nil {
		flusher.Flush() // before the log line, not after it
	}
}

// streamingRequest reports whether the request asks for a streamed
// answer: Gemini's :streamGenerateContent (a JSON array sent as it is
// made, without alt=sse), Bedrock's invoke-with-response-stream and
// converse-stream, or a JSON body's "stream": true. The body was scanned
// before the request went out: this reads what that found.
func (x *exchange) streamingRequest() bool {
	p := x.path
	return hasSuffixFold(p, ":streamGenerateContent") ||
		hasSuffixFold(p, "/invoke-with-response-stream") || hasSuffixFold(p, "/converse-stream") ||
		x.fields().stream
}

// endsEvent reports whether an SSE stream's bytes so far, ending in b,
// end at an event's end (a blank line).
func endsEvent(b []byte) bool {
	n := len(b)
	return n >= 2 && (b[n-1] == '\n' && (b[n-2] == '\n' || n >= 4 && b[n-2] == '\r' && b[n-3] == '\n' && b[n-4] == '\r') ||
		b[n-1] == '\r' && b[n-2] == '\r')
}

// endsSoon reports whether the provider's answer, given a moment, ends
// with nothing more: the watch for the client going away spent the
// connection's deadline, so it gets a short one of its own.
func (x *exchange) endsSoon(resp *http.Response, cn *conn) bool {
	if x.respBytes == 0 {
		return false
	}
	cn.nc.SetReadDeadline(time.Now().Add(endGrace))
	if len(resp.TransferEncoding) > 0 && resp.TransferEncoding[0] == "chunked" {
		// A chunked body's reader keeps the error of the read the watch
		// cut short, and would give it again: the end is read off the
		// connection instead.
		return chunkedEndNext(cn.br)
	}
	var b [1]byte
	n, err := resp.Body.Read(b[:])
	return n == 0 && err == io.EOF
}

// chunkedEndNext reports whether the next bytes br reads, waiting up to
// its connection's deadline, end a chunked body with nothing more: the
// last chunk and an empty trailer ("0\r\n\r\n"), after the CRLF that ends
// the chunk before it if that was not read yet. Anything else (a chunk
// extension, a trailer field, more data) is no end.
func chunkedEndNext(br *bufio.Reader) bool {
	const end = "0\r\n\r\n"
	skip := 0
	if b, err := br.Peek(1); err == nil && b[0] == '\r' {
		skip = 2
		if b, err := br.Peek(2); err != nil || string(b) != "\r\n" {
			return false
		}
	}
	b, err := br.Peek(skip + len(end))
	return err == nil && string(b[skip:]) == end
}

// endGrace is how long endsSoon waits for the end of an answer.
const endGrace = 50 * time.Millisecond

// moreWaiting reports whether the provider has sent more than the
// framing's leftovers (a chunk's trailing CRLF, part of the next chunk's
// size line): then the next read returns at once, and what it reads can
// leave in the same write. Less than that may be all there is for now.
func moreWaiting(cn *conn) bool { return cn.br.Buffered() >= 16 }

// cut ends an answer the provider broke off: a client still there gets an
// error event in the stream's format, then the response is aborted
// without its proper end, so no client takes it for a finished one.
func (x *exchange) cut(resp *http.Response, cn *conn, contentType string, err error) {
	if x.r.Context().Err() != nil {
		// A client may hang up as soon as it has the stream's last
		// event, before the provider's end of the body arrives: that
		// answer was whole, not abandoned.
		if !x.endsSoon(resp, cn) {
			x.clientGone = true
			x.status = statusClientClosed
		}
		x.release(cn, false)
		return
	}
	x.release(cn, false)
	code, why := keybridge.EBadGateway, "the provider's response was cut short"
	if isTimeout(err) {
		code, why = codeGatewayTimeout, fmt.Sprintf("the provider sent nothing for %s", x.g.opts.IdleTimeout)
	}
	x.endStream(contentType, code, why)
}

// endStream ends a stream before its end, the provider's connection
// already let go: an error event of code with why in the stream's
// format, then the answer aborted, so no client takes it for a finished
// one. The request is recorded with that error's status, not the one the
// stream began with: what the client got is an error.
func (x *exchange) endStream(contentType, code, why string) {
	e := newError(code, "Keybridge: "+why)
	if e.status == 0 {
		e.status = http.StatusBadGateway
	}
	x.status, x.errCode = e.status, code
	if ev := streamError(x.style, contentType, e); ev != nil {
		if x.midEvent {
			// The provider broke off inside an event: it is ended
			// first, or the error event would be read as the rest of
			// it and lost.
			end := "\n\n"
			if x.style == keybridge.ProviderGoogle {
				end = "\r\n\r\n"
			}
			x.w.Write([]byte(end))
		}
		x.w.Write(ev)
		if f, ok := x.w.(http.Flusher); ok {
			f.Flush()
		}
	}
	x.aborted = true
}

// setTiming sets Server-Timing (SPEC §7.8) just before the headers go.
func (x *exchange) setTiming() {
	total := x.headersAt.Sub(x.start)
	own := total - x.upstreamDur
	var buf [64]byte
	b := append(buf[:0], "keybridge;dur="...)
	b = appendMillis(b, own)
	b = append(b, ", upstream;dur="...)
	b = appendMillis(b, x.upstreamDur)
	setHeader(x.w, "Server-Timing", string(b))
}

// appendMillis appends d in milliseconds with three decimals, as
// strconv.AppendFloat(b, float64(d.Microseconds())/1000, 'f', 3, 64) does,
// with integer arithmetic.
func appendMillis(b []byte, d time.Duration) []byte {
	us := d.Microseconds()
	if us < 0 {
		b = append(b, '-')
		us = -us
	}
	b = strconv.AppendInt(b, us/1000, 10)
	f := us % 1000
	return append(b, '.', byte('0'+f/100), byte('0'+f/10%10), byte('0'+f%10))
}

// isUpgrade reports whether r asks for a WebSocket.
func isUpgrade(r *http.Request) bool {
	return r.ProtoMajor == 1 && strings.EqualFold(header(r.Header, "Upgrade"), "websocket") &&
		namedIn(r.Header["Connection"], "Upgrade")
}

// tunnel completes a WebSocket upgrade (SPEC §7.1): the provider's 101
// goes to the client, then bytes pass both ways unchanged until either
// side closes, or the caller loses access (access.go).
func (x *exchange) tunnel(resp *http.Response, cn *conn) {
	x.status = resp.StatusCode
	// Each response on the socket comes as a stream of events: its row
	// is a stream's.
	x.stream = true
	unwatchClient(cn) // the tunnel outlives nothing but its two connections
	cn.nc.SetDeadline(time.Time{})
	hj, ok := x.w.(http.Hijacker)
	if !ok {
		cn.nc.Close()
		x.fail(newError(keybridge.EInvalid, "this connection cannot be upgraded"))
		return
	}
	client, cbuf, err := hj.Hijack()
	if err != nil {
		cn.nc.Close()
		return
	}
	defer client.Close()
	defer cn.nc.Close()
	x.hijacked = true
	x.setTiming()
	for name := range resp.Header {
		if keybridgeHeader(name) {
			delete(resp.Header, name)
		}
	}
	resp.Header.Set("X-Keybridge-Request-Id", x.id)
	resp.Header["Server-Timing"] = append(x.w.Header()["Server-Timing"][:1:1], resp.Header["Server-Timing"]...)
	x.setLimitHeaders(resp.Header)
	bw := cbuf.Writer
	fmt.Fprintf(bw, "HTTP/1.1 101 %s\r\n", http.StatusText(http.StatusSwitchingProtocols))
	resp.Header.Write(bw)
	bw.WriteString("\r\n")
	if err := bw.Flush(); err != nil {
		return
	}
	x.g.m.streams.Inc()
	defer x.g.m.streams.Dec()
	// done says, for each side that ended, whether it was the client's.
	done := make(chan bool, 2)
	pipe := func(dst net.Conn, src io.Reader, fromClient bool) {
		io.Copy(dst, src)
		if tc, ok := dst.(interface{ CloseWrite() error }); ok {
			tc.CloseWrite()
		} else {
			dst.Close()
		}
		done <- fromClient
	}
	end := func() {
		client.SetDeadline(aLongTimeAgo)
		cn.nc.SetDeadline(aLongTimeAgo)
	}
	watchCtx, stopWatch := context.WithCancel(context.Background())
	refusal := make(chan *gwError, 1)
	go func() { refusal <- x.watchAccess(watchCtx, end) }()
	// Set by the provider-to-client pipe, read once it has ended.
	var overLimit *gwError
	usage, usageEnd := x.wsUsage(func(e *gwError) {
		overLimit = e
		// Nothing more reaches the provider; what was read from it
		// still passes, this response's end included.
		cn.nc.SetDeadline(aLongTimeAgo)
	})
	go pipe(cn.nc, cbuf.Reader, true)
	go pipe(client, io.TeeReader(cn.br, usage), false)
	clientLeft := <-done
	// One side closed: the other has nothing more to say to it.
	end()
	<-done
	stopWatch()
	why := "its caller lost access"
	refused := <-refusal
	if refused == nil && overLimit != nil {
		refused, why = overLimit, "its key is at a limit"
	}
	usageEnd(refused, clientLeft)
	if refused != nil {
		// Both connections are closed without a close frame: a frame of
		// the provider's may have been half passed on.
		x.errCode = refused.code
		x.g.log.Info("gateway: WebSocket ended: "+why, "request_id", x.id, "reason", refused.msg)
	}
}
