package httpapi

import (
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/keybridge/keybridge/internal/audit"
	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/retention"
	"github.com/keybridge/keybridge/internal/store"
)

// The audit log (SPEC §8) and usage (SPEC §7): both read-only, for admins.

// auditEventResponse is an event with its place in the org's chain, so a
// verify answer's first_bad_event can be found in the list.
type auditEventResponse struct {
	keybridge.AuditEvent
	Seq int64 `json:"seq"`
}

// rfc3339Param reads an optional RFC 3339 query parameter.
func rfc3339Param(r *http.Request, name string) (time.Time, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return time.Time{}, nil
	}
	// RFC 3339 allows a lower-case t and z (its section 5.6); Go's
	// parser takes only capitals, and upper-casing changes nothing else
	// of a valid time.
	t, err := time.Parse(time.RFC3339Nano, strings.ToUpper(v))
	if err != nil {
		msg := "must be an RFC 3339 time such as 2026-01-02T15:04:05Z"
		if strings.Contains(v, " ") {
			// A + of an offset sent unescaped arrives as a space.
			msg += " (send the + of an offset as %2B)"
		}
		return time.Time{}, keybridge.FieldError(name, msg)
	}
	// In UTC a time of the year 9999 in a zone west of it may be of the
	// year 10000, which no RFC 3339 answer can hold.
	if t = t.UTC(); t.Year() < 0 || t.Year() > 9999 {
		return time.Time{}, keybridge.FieldError(name, "must be within the years 0000 to 9999 in UTC")
	}
	return t, nil
}

// sinceUntilParams reads ?since= and ?until=; when both are set since must come first.
func sinceUntilParams(r *http.Request) (since, until time.Time, err error) {
	if since, err = rfc3339Param(r, "since"); err != nil {
		return
	}
	if until, err = rfc3339Param(r, "until"); err != nil {
		return
	}
	if !since.IsZero() && !until.IsZero() && !since.Before(until) {
		err = keybridge.FieldError("until", "must be after since")
	}
	return
}

func (s *Server) listAuditEvents(w http.ResponseWriter, r *http.Request) error {
	org, _, err := s.org(r, keybridge.PermAuditRead)
	if err != nil {
		return err
	}
	since, until, err := sinceUntilParams(r)
	if err != nil {
		return err
	}
	pg, err := page(r)
	if err != nil {
		return err
	}
	q := r.URL.Query()
	events, next, err := s.store.ListAuditEvents(r.Context(), store.AuditFilter{
		OrgID:        org.ID,
		Action:       q.Get("action"),
		Actor:        q.Get("actor"),
		ResourceType: q.Get("resource_type"),
		ResourceID:   q.Get("resource_id"),
		Since:        since,
		Until:        until,
	}, pg)
	if err != nil {
		return err
	}
	items := make([]auditEventResponse, len(events))
	for i, e := range events {
		items[i] = auditEventResponse{AuditEvent: e, Seq: e.Seq}
	}
	writeJSON(w, http.StatusOK, newList(items, next))
	return nil
}

func (s *Server) verifyAuditEvents(w http.ResponseWriter, r *http.Request) error {
	org, _, err := s.org(r, keybridge.PermAuditRead)
	if err != nil {
		return err
	}
	res, err := audit.Verify(r.Context(), s.store, org.ID)
	if err != nil {
		return err
	}
	if !res.OK {
		// Someone changed the log behind Keybridge's back: worth a line in
		// the server's own log, not only in the answer.
		s.log.WarnContext(r.Context(), "audit chain verification failed", "org_id", org.ID,
			"seq", res.FirstBadEvent.Seq, "event_id", res.FirstBadEvent.ID, "reason", res.Reason,
			"request_id", keybridge.RequestInfoFromContext(r.Context()).RequestID)
	}
	writeJSON(w, http.StatusOK, res)
	return nil
}

// usageWindow is the default span of a usage query.
const usageWindow = 30 * 24 * time.Hour

// usageResponse is the answer of GET .../usage: the groups, and the window,
// dimension and bucket they were computed over (defaults filled in).
type usageResponse struct {
	GroupBy keybridge.UsageGroupBy `json:"group_by"`
	Bucket  keybridge.UsageBucket  `json:"bucket,omitempty"`
	Since   time.Time              `json:"since"`
	Until   time.Time              `json:"until"`
	Items   []keybridge.UsageGroup `json:"items"`
}

func (s *Server) usage(w http.ResponseWriter, r *http.Request) error {
	org, _, err := s.org(r, keybridge.PermUsageRead)
	if err != nil {
		return err
	}
	by := keybridge.UsageGroupBy(r.URL.Query().Get("group_by"))
	switch by {
	case "":
		by = keybridge.GroupByProvider
	case keybridge.GroupByProvider, keybridge.GroupByModel, keybridge.GroupByUser, keybridge.GroupByProject, keybridge.GroupByAPIKey:
	default:
		return keybridge.FieldError("group_by", "must be provider, model, user, project or api_key")
	}
	bucket := keybridge.UsageBucket(r.URL.Query().Get("bucket"))
	switch bucket {
	case keybridge.BucketNone, keybridge.BucketHour, keybridge.BucketDay:
	default:
		return keybridge.FieldError("bucket", "must be hour or day")
	}
	since, until, err := sinceUntilParams(r)
	if err != nil {
		return err
	}
	now := time.Now().UTC().Truncate(time.Microsecond)
	if until.IsZero() {
		until = now
	}
	// Rows older than the retention window are gone: a window that starts
	// before it would answer smaller totals than the traffic had, as if
	// they were whole. The default start moves up to what is kept (the
	// answer's since says so); one asked for is refused.
	kept := retention.UsageKeptSince(now, s.cfg.UsageRetention)
	switch {
	case since.IsZero() && !kept.IsZero() && !until.After(kept):
		return keybridge.FieldError("until", fmt.Sprintf("must be after %s: older usage is no longer kept (usage retention)", kept.Format(time.RFC3339)))
	case since.IsZero():
		since = until.Add(-usageWindow)
		if since.Before(kept) {
			since = kept
		}
	case !kept.IsZero() && since.Before(kept):
		return keybridge.FieldError("since", fmt.Sprintf("must not be before %s: older usage is no longer kept (usage retention)", kept.Format(time.RFC3339)))
	}
	if !since.Before(until) {
		return keybridge.FieldError("since", "must be before until")
	}
	groups, err := s.store.QueryUsage(r.Context(), keybridge.UsageQuery{OrgID: org.ID, GroupBy: by, Since: since, Until: until, Bucket: bucket})
	if err != nil {
		return err
	}
	if groups == nil {
		groups = []keybridge.UsageGroup{}
	}
	writeJSON(w, http.StatusOK, usageResponse{GroupBy: by, Bucket: bucket, Since: since, Until: until, Items: groups})
	return nil
}
