package providertest

import (
	"context"
	"encoding/json"
	"net/http"

	"github.com/coder/websocket"
)

// openaiResponsesSocket serves the Responses API over a WebSocket, as
// OpenAI does on GET /v1/responses: each response.create text message (the
// HTTP body's fields at top level, plus "type") gets the events a streamed
// response has, one JSON text message each, and the socket stays open for
// the next one. Each response.create is recorded as a Request of its own,
// with the upgrade's method, URI, header and key and the message as Body;
// the fault that met the upgrade applies to every response on the socket.
func openaiResponsesSocket(s *Server, c *call) {
	conn, err := websocket.Accept(c.w, c.r, &websocket.AcceptOptions{CompressionMode: websocket.CompressionDisabled})
	if err != nil {
		return // Accept has answered the failed handshake
	}
	// The upgrade itself is complete: a client leaving the socket cancels
	// only the response it was receiving.
	c.finish()
	defer func() { _ = conn.CloseNow() }()
	conn.SetReadLimit(64 << 20)

	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	msgs := make(chan []byte)
	go func() {
		defer cancel()
		for {
			_, b, err := conn.Read(ctx)
			if err != nil {
				return
			}
			select {
			case msgs <- b:
			case <-ctx.Done():
				return
			}
		}
	}()

	for {
		var msg []byte
		select {
		case <-ctx.Done():
			return
		case msg = <-msgs:
		}
		fr := &call{s: s, w: c.w, r: c.r.WithContext(ctx), body: msg, key: c.key, fault: c.fault}
		fr.rec = s.record(Request{Method: c.r.Method, URI: c.r.RequestURI, Header: c.r.Header.Clone(), Body: msg, Key: c.key})
		if !openaiSocketResponse(ctx, s, fr, conn) {
			if !fr.finished() {
				s.markCanceled(fr.rec)
			}
			return
		}
		fr.finish()
	}
}

// openaiSocketResponse answers one client message on the socket, and
// reports false when the socket ended before the answer did.
func openaiSocketResponse(ctx context.Context, s *Server, fr *call, conn *websocket.Conn) bool {
	var b struct {
		Type     string `json:"type"`
		Model    string `json:"model"`
		StreamID string `json:"stream_id"`
	}
	send := func(ev map[string]any) bool {
		if b.StreamID != "" {
			ev["stream_id"] = b.StreamID
		}
		j, err := json.Marshal(ev)
		if err != nil {
			panic(err)
		}
		return conn.Write(ctx, websocket.MessageText, j) == nil
	}

	fail := func(code, msg string) bool {
		return send(map[string]any{"type": "error", "status": http.StatusBadRequest, "error": map[string]any{
			"type": "invalid_request_error", "code": code, "message": msg, "param": nil,
		}})
	}
	if err := json.Unmarshal(fr.body, &b); err != nil {
		return fail("invalid_json", "The message could not be parsed as JSON.")
	}
	if b.Type != "response.create" {
		return fail("unknown_event_type", "Invalid 'type': '"+b.Type+"'. Supported values are: 'response.create'.")
	}
	if b.Model == "" {
		return fail("missing_required_parameter", "Missing required parameter: 'model'.")
	}
	st := &stream{
		c: fr,
		write: func(j []byte) error {
			return conn.Write(ctx, websocket.MessageText, j)
		},
		// A cut socket ends without a close frame, as a dropped
		// connection does.
		cut: func() { _ = conn.CloseNow() },
	}
	return openaiResponseEvents(s, b.Model, func(_ string, ev map[string]any) bool {
		if b.StreamID != "" {
			ev["stream_id"] = b.StreamID
		}
		j, err := json.Marshal(ev)
		if err != nil {
			panic(err)
		}
		return st.event(j)
	})
}
