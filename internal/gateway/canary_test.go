package gateway_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keybridge/keybridge/internal/gateway"
	"github.com/keybridge/keybridge/internal/store/storetest"
)

// The gateway's own canary run, at debug level: a Keybridge key in each of
// the five places a caller may put it, with a cookie, a proxy credential,
// an AWS session token and two other gateways' credential headers beside
// it; an upstream 401 echoing its key; a stream cut by the provider; a
// stream the client abandons. No answer, log
// line, metric, usage figure or audit event holds any of the secrets, and
// the debug lines show each credential header as [redacted].
func TestCanaryThroughFailures(t *testing.T) {
	reg := prometheus.NewRegistry()
	e := newEnvWith(t, storetest.SQLite(t), envOptions{Gateway: gateway.Options{Registerer: reg}})
	up := newKeyedUpstream(t)
	good, bad := canary(t, "sk-good-"), canary(t, "sk-bad-")
	e.provider(map[string]any{"name": "oai", "type": "openai", "base_url": up.URL + "/v1"})
	e.addKey("oai", good, 0)
	e.provider(map[string]any{"name": "wrong", "type": "openai", "base_url": up.URL + "/v1"})
	e.addKey("wrong", bad, 0)
	up.on(bad, status(401)) // echoes the Authorization it got
	up.on(good, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"choices":[]}`)
	})
	aiKey := aiSecret(e, "OPENAI")
	cookie, proxyAuth, sessionToken := canary(t, "sess-"), canary(t, "proxy-"), canary(t, "FwoG")
	madeUp := canary(t, "kb_")
	// Credential headers of other gateways, which no list names: their
	// names give them away.
	apim, authToken := canary(t, "apim-"), canary(t, "xauth-")
	secrets := map[string]string{"the owner's key": e.OwnerKey, "the AI key's secret": aiKey, "the upstream key": good,
		"the refused upstream key": bad, "a cookie": cookie, "a proxy credential": proxyAuth, "an AWS session token": sessionToken,
		"a made-up Keybridge key": madeUp, "an APIM subscription key": apim, "an X-Auth-Token": authToken}

	var answers bytes.Buffer
	keep := func(resp *http.Response, body []byte) {
		resp.Header.Write(&answers)
		answers.Write(body)
	}
	withOthers := func(req *http.Request) *http.Request {
		req.Header.Set("Cookie", "session="+cookie)
		req.Header.Set("Proxy-Authorization", "Basic "+proxyAuth)
		req.Header.Set("X-Amz-Security-Token", sessionToken)
		req.Header.Set("Ocp-Apim-Subscription-Key", apim)
		req.Header.Set("X-Auth-Token", authToken)
		return req
	}
	send := func(req *http.Request, want int) {
		t.Helper()
		resp, body := e.do(withOthers(req))
		keep(resp, body)
		if resp.StatusCode != want {
			t.Errorf("%s %s = %d %s, want %d", req.Method, req.URL.Path, resp.StatusCode, body, want)
		}
	}
	chat := `{"model":"gpt-4o","messages":[]}`
	lines := 0
	for _, place := range []string{"Authorization", "X-Api-Key", "Api-Key", "X-Goog-Api-Key", "key"} {
		for _, key := range []string{e.OwnerKey, aiKey} {
			path := "/gateway/oai/chat/completions"
			if place == "key" {
				path += "?key=" + url.QueryEscape(key)
			}
			req := e.post(path, "", chat)
			switch place {
			case "key":
			case "Authorization":
				req.Header.Set(place, "Bearer "+key)
			default:
				req.Header.Set(place, key)
			}
			send(req, 200)
			lines++
		}
	}
	send(e.post("/gateway/oai/chat/completions", madeUp, chat), 401)
	send(e.post("/gateway/wrong/chat/completions", e.OwnerKey, chat), 502)
	lines += 2

	// A stream the provider cuts after its first event.
	up.on(good, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n")
		w.(http.Flusher).Flush()
		reset(w, r)
	})
	send(e.post("/gateway/oai/chat/completions", e.OwnerKey, `{"model":"gpt-4o","stream":true}`), 200)
	lines++

	// A stream the client abandons after its first event.
	up.on(good, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n")
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	})
	ctx, cancel := context.WithCancel(context.Background())
	req := e.post("/gateway/oai/chat/completions", aiKey, `{"model":"gpt-4o","stream":true}`).WithContext(ctx)
	resp, err := http.DefaultClient.Do(withOthers(req))
	if err != nil {
		t.Fatal(err)
	}
	first, _ := bufio.NewReader(resp.Body).ReadString('\n')
	resp.Header.Write(&answers)
	answers.WriteString(first)
	cancel()
	resp.Body.Close()
	lines++

	logs := e.waitLog(lines)
	if !strings.Contains(logs, `"status":499`) || !strings.Contains(logs, `"error":"bad_gateway"`) {
		t.Errorf("the log has no 499 or cut stream line:\n%s", logs)
	}
	debugLines := 0
	for line := range strings.SplitSeq(logs, "\n") {
		if !strings.Contains(line, `"msg":"gateway request"`) {
			continue
		}
		debugLines++
		for _, h := range []string{"Cookie", "Proxy-Authorization", "X-Amz-Security-Token", "Ocp-Apim-Subscription-Key", "X-Auth-Token"} {
			if !strings.Contains(line, `"`+h+`":"[redacted]"`) {
				t.Errorf("debug line without %s redacted: %s", h, line)
			}
		}
	}
	if debugLines != lines {
		t.Errorf("%d gateway log lines, want %d", debugLines, lines)
	}
	for _, h := range []string{"Authorization", "X-Api-Key", "Api-Key", "X-Goog-Api-Key"} {
		if !strings.Contains(logs, `"`+h+`":"[redacted]"`) {
			t.Errorf("no debug line shows %s redacted", h)
		}
	}

	var metrics bytes.Buffer
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		metrics.WriteString(f.String() + "\n")
	}
	usage := e.api("GET", "/api/v1/orgs/acme/usage?group_by=api_key", e.OwnerKey, nil, 200)
	audit := e.api("GET", "/api/v1/orgs/acme/audit-events?limit=500", e.OwnerKey, nil, 200)
	places := map[string]string{"the answers": answers.String(), "the logs": logs, "the metrics": metrics.String(),
		"the usage": fmt.Sprint(usage), "the audit events": fmt.Sprint(audit)}
	for what, secret := range secrets {
		for where, text := range places {
			// The upstream's 401 echoes "Bearer <key>": a fragment is
			// as bad as the whole.
			for _, s := range []string{secret, secret[len(secret)-12:]} {
				if strings.Contains(text, s) {
					t.Errorf("%s holds %s", where, what)
				}
			}
		}
	}
	if !strings.Contains(metrics.String(), "keybridge_gateway_requests_total") {
		t.Error("the metrics were not gathered")
	}
}
