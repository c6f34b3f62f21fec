package sqlstore

import (
	"database/sql/driver"
	"fmt"
	"time"
)

// Times are stored as timestamptz in PostgreSQL and as integer Unix
// microseconds in SQLite, where integers compare and index well. ts and
// tsNull convert arguments; timeCol and nullTimeCol scan either form back.

// ts returns t as a query argument for the engine.
func (s *Store) ts(t time.Time) any {
	t = t.UTC().Truncate(time.Microsecond)
	if s.db.Dialect.Name == "sqlite" {
		return t.UnixMicro()
	}
	return t
}

// tsNull returns t as a query argument, NULL when t is nil.
func (s *Store) tsNull(t *time.Time) any {
	if t == nil {
		return nil
	}
	return s.ts(*t)
}

// timeCol scans a non-null time column.
type timeCol struct{ t *time.Time }

// Scan implements sql.Scanner.
func (c timeCol) Scan(src any) error {
	t, ok, err := scanTime(src)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("time column is NULL")
	}
	*c.t = t
	return nil
}

// nullTimeCol scans a nullable time column into a *time.Time.
type nullTimeCol struct{ t **time.Time }

// Scan implements sql.Scanner.
func (c nullTimeCol) Scan(src any) error {
	t, ok, err := scanTime(src)
	if err != nil {
		return err
	}
	if !ok {
		*c.t = nil
		return nil
	}
	*c.t = &t
	return nil
}

func scanTime(src any) (time.Time, bool, error) {
	switch v := src.(type) {
	case nil:
		return time.Time{}, false, nil
	case int64:
		return time.UnixMicro(v).UTC(), true, nil
	case time.Time:
		return v.UTC(), true, nil
	}
	return time.Time{}, false, fmt.Errorf("cannot scan %T into a time", src)
}

var (
	_ interface{ Scan(any) error } = timeCol{}
	_ driver.Value                 = int64(0)
)
