package keybridge

import (
	"crypto/sha256"
	"encoding/json"
	"time"
)

// Actor is who made a change.
type Actor struct {
	Type  ActorType `json:"type"`
	ID    string    `json:"id"`
	Email string    `json:"email,omitempty"`
}

// Resource is what a change was made to.
type Resource struct {
	Type string `json:"type"`
	ID   string `json:"id"`
	Name string `json:"name,omitempty"`
}

// Change is one field's old and new value in an audit event. Secret fields
// carry Redacted on both sides.
type Change struct {
	Old any `json:"old"`
	New any `json:"new"`
}

// AuditEvent records one change (SPEC §8). Events of an org form a hash
// chain: Hash covers PrevHash and the canonical form of the event, so an
// altered, removed or reordered event breaks the chain.
type AuditEvent struct {
	ID        string            `json:"id"`
	Time      time.Time         `json:"time"`
	OrgID     string            `json:"org_id"`
	Actor     Actor             `json:"actor"`
	Action    string            `json:"action"`
	Resource  Resource          `json:"resource"`
	IP        string            `json:"ip"`
	UserAgent string            `json:"user_agent"`
	RequestID string            `json:"request_id"`
	Changes   map[string]Change `json:"changes,omitempty"`
	// Seq is the event's position in its org's chain, from 1.
	Seq      int64  `json:"-"`
	PrevHash []byte `json:"-"`
	Hash     []byte `json:"-"`
}

// ComputeHash returns the chain hash of e given the previous event's hash:
// SHA-256 over the previous hash and the canonical JSON of every recorded
// field. encoding/json sorts map keys, so the encoding is canonical.
func (e *AuditEvent) ComputeHash(prev []byte) []byte {
	canon, err := json.Marshal(struct {
		ID        string            `json:"id"`
		Seq       int64             `json:"seq"`
		Time      string            `json:"time"`
		OrgID     string            `json:"org_id"`
		Actor     Actor             `json:"actor"`
		Action    string            `json:"action"`
		Resource  Resource          `json:"resource"`
		IP        string            `json:"ip"`
		UserAgent string            `json:"user_agent"`
		RequestID string            `json:"request_id"`
		Changes   map[string]Change `json:"changes"`
	}{e.ID, e.Seq, e.Time.UTC().Format(time.RFC3339Nano), e.OrgID, e.Actor, e.Action, e.Resource, e.IP, e.UserAgent, e.RequestID, e.Changes})
	if err != nil {
		// Changes hold only JSON-decoded or plain values; a value that
		// cannot be encoded is a programming error.
		panic("audit event not encodable: " + err.Error())
	}
	h := sha256.New()
	h.Write(prev)
	h.Write(canon)
	return h.Sum(nil)
}
