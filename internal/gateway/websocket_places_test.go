package gateway_test

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// A WebSocket upgrade takes the caller's key from any place a request
// does, reaches the provider with the upstream credential and none of the
// caller's, with its other headers as sent; then text and binary
// messages, long and fragmented ones too, pass both ways unchanged.
func TestWebSocketKeyPlacesAndFrames(t *testing.T) {
	e := newEnv(t)
	upKey := canary(t, "sk-")
	var mu sync.Mutex
	var upgrade *http.Request
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		upgrade = r.Clone(context.Background())
		mu.Unlock()
		c, err := websocket.Accept(w, r, &websocket.AcceptOptions{Subprotocols: []string{"realtime"}})
		if err != nil {
			return
		}
		defer c.CloseNow()
		c.SetReadLimit(-1)
		ctx := context.Background()
		// The provider speaks first, then echoes each message back.
		if err := c.Write(ctx, websocket.MessageBinary, []byte{0, 1, 2, 0xff}); err != nil {
			return
		}
		for {
			typ, msg, err := c.Read(ctx)
			if err != nil {
				return
			}
			if err := c.Write(ctx, typ, msg); err != nil {
				return
			}
		}
	}))
	t.Cleanup(up.Close)
	e.provider(map[string]any{"name": "compat", "type": "openai-compatible", "base_url": up.URL + "/v1"})
	e.addKey("compat", upKey, 0)

	long := bytes.Repeat([]byte("0123456789abcdef"), 70000) // over a MiB
	for _, place := range []string{"Authorization", "X-Api-Key", "Api-Key", "X-Goog-Api-Key", "key"} {
		t.Run(place, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			h := http.Header{}
			h.Set("OpenAI-Beta", "responses_websockets=2026-02-06")
			h.Set("X-Custom", "kept")
			query := "?model=m"
			switch place {
			case "Authorization":
				h.Set(place, "Bearer "+e.OwnerKey)
			case "key":
				query += "&key=" + e.OwnerKey
			default:
				h.Set(place, e.OwnerKey)
			}
			conn, resp, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(e.URL, "http")+"/gateway/compat/responses"+query,
				&websocket.DialOptions{HTTPHeader: h, Subprotocols: []string{"realtime"}})
			if err != nil {
				t.Fatalf("upgrade: %v", err)
			}
			defer conn.CloseNow()
			conn.SetReadLimit(-1)
			if resp.Header.Get("Sec-Websocket-Protocol") != "realtime" {
				t.Errorf("subprotocol = %q, want realtime", resp.Header.Get("Sec-Websocket-Protocol"))
			}
			mu.Lock()
			r := upgrade
			mu.Unlock()
			if r.RequestURI != "/v1/responses?model=m" {
				t.Errorf("the provider's upgrade went to %q", r.RequestURI)
			}
			if a := r.Header.Values("Authorization"); len(a) != 1 || a[0] != "Bearer "+upKey {
				t.Errorf("the provider's upgrade has Authorization %q, want the upstream key", a)
			}
			for name, vv := range r.Header {
				if strings.Contains(strings.Join(vv, ","), e.OwnerKey) {
					t.Errorf("the provider's upgrade has the caller's key in %s", name)
				}
			}
			for name, want := range map[string]string{"Openai-Beta": "responses_websockets=2026-02-06", "X-Custom": "kept",
				"Sec-Websocket-Protocol": "realtime", "Upgrade": "websocket"} {
				if got := r.Header.Get(name); got != want {
					t.Errorf("the provider's upgrade has %s %q, want %q", name, got, want)
				}
			}

			if typ, msg, err := conn.Read(ctx); err != nil || typ != websocket.MessageBinary || !bytes.Equal(msg, []byte{0, 1, 2, 0xff}) {
				t.Fatalf("the provider's first message = %v %x %v", typ, msg, err)
			}
			for _, m := range []struct {
				typ websocket.MessageType
				msg []byte
			}{
				{websocket.MessageText, []byte(`{"type":"response.create","model":"m"}`)},
				{websocket.MessageBinary, []byte{0, 0xff, 0x80, '\r', '\n'}},
				{websocket.MessageText, []byte("")},
				{websocket.MessageText, long},
			} {
				w, err := conn.Writer(ctx, m.typ)
				if err != nil {
					t.Fatal(err)
				}
				// Written in pieces: a fragmented message.
				for p := m.msg; len(p) > 0; {
					n := min(len(p), 100000)
					if _, err := w.Write(p[:n]); err != nil {
						t.Fatal(err)
					}
					p = p[n:]
				}
				if err := w.Close(); err != nil {
					t.Fatal(err)
				}
				typ, got, err := conn.Read(ctx)
				if err != nil || typ != m.typ || !bytes.Equal(got, m.msg) {
					t.Fatalf("echo of a %v message of %d bytes = %v, %d bytes, %v", m.typ, len(m.msg), typ, len(got), err)
				}
			}
			conn.Close(websocket.StatusNormalClosure, "")
		})
	}
	noCanary(t, upKey, e.logs())
}
