package sqlstore

import "context"

// What the retention job needs from the store beyond each area's own
// delete: the list of audit chains to trim.

// AuditOrgs implements store.Audit. Every chain has a row in audit_heads
// from its first event on, and keeps it when retention removes every
// event, so the heads are the list.
func (s *Store) AuditOrgs(ctx context.Context) ([]string, error) {
	return s.queryStrings(ctx, `SELECT org_id FROM audit_heads ORDER BY org_id`)
}

// queryStrings runs a read of one text column and returns its values.
func (s *Store) queryStrings(ctx context.Context, query string, args ...any) ([]string, error) {
	rows, err := s.query(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var v string
		if err := rows.Scan(&v); err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}
