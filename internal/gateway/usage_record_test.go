package gateway

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store"
	"github.com/keybridge/keybridge/internal/store/storetest"
)

// recStore is a real SQLite store that also notes the size of every
// InsertUsage and touch batch it is given.
type recStore struct {
	store.Store
	mu      sync.Mutex
	inserts []int
	touches []map[string]time.Time
}

func (s *recStore) InsertUsage(ctx context.Context, batch []keybridge.Usage) error {
	s.mu.Lock()
	s.inserts = append(s.inserts, len(batch))
	s.mu.Unlock()
	return s.Store.InsertUsage(ctx, batch)
}

func (s *recStore) TouchProviderKeys(ctx context.Context, m map[string]time.Time) error {
	s.mu.Lock()
	s.touches = append(s.touches, m)
	s.mu.Unlock()
	return s.Store.TouchProviderKeys(ctx, m)
}

func (s *recStore) insertSizes() []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.inserts)
}

func newRecStore(t *testing.T) *recStore { return &recStore{Store: storetest.SQLite(t)} }

var recStart = time.Date(2031, 4, 2, 10, 0, 0, 0, time.UTC)

// recRows makes n rows of org "org", one a second from recStart, with
// model m.
func recRows(n int, m string) []keybridge.Usage {
	rows := make([]keybridge.Usage, n)
	for i := range rows {
		rows[i] = keybridge.Usage{Time: recStart.Add(time.Duration(i) * time.Second), OrgID: "org", Model: m, Status: 200, InputTokens: 1, Failovers: i % 2}
	}
	return rows
}

// recRequests is how many requests of model m the store holds.
func recRequests(t *testing.T, st store.Store, m string) int64 {
	t.Helper()
	groups, err := st.QueryUsage(context.Background(), keybridge.UsageQuery{OrgID: "org", GroupBy: keybridge.GroupByModel,
		Since: recStart.Add(-time.Hour), Until: recStart.Add(48 * time.Hour)})
	if err != nil {
		t.Fatalf("QueryUsage = %v", err)
	}
	for _, g := range groups {
		if g.Key == m {
			return g.Requests
		}
	}
	return 0
}

// recMetric reads one of r's metrics by name, through a registry as
// /metrics would.
func recMetric(t *testing.T, r *recorder, name string) float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(r.collectors()...)
	families, err := reg.Gather()
	if err != nil {
		t.Fatalf("Gather = %v", err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		m := f.GetMetric()[0]
		if m.GetCounter() != nil {
			return m.GetCounter().GetValue()
		}
		return m.GetGauge().GetValue()
	}
	t.Fatalf("no metric %s among %v", name, families)
	return 0
}

func TestRecorderBatches(t *testing.T) {
	ctx := context.Background()
	st := newRecStore(t)
	r := newRecorder(st, nil, 5000)
	for _, u := range recRows(300, "small") {
		r.add(u)
	}
	if got := recMetric(t, r, "keybridge_usage_queue_depth"); got != 300 {
		t.Errorf("queue depth = %v, want 300", got)
	}
	if n, err := r.flush(ctx); n != 300 || err != nil {
		t.Fatalf("flush = %d, %v; want 300 rows", n, err)
	}
	if got, want := st.insertSizes(), []int{300}; !slices.Equal(got, want) {
		t.Errorf("InsertUsage batches = %v, want %v: one per flush", got, want)
	}
	if got := recRequests(t, st, "small"); got != 300 {
		t.Errorf("stored requests = %d, want 300", got)
	}
	if got := recMetric(t, r, "keybridge_usage_written_total"); got != 300 {
		t.Errorf("keybridge_usage_written_total = %v after a committed batch of 300, want 300", got)
	}

	// A backlog goes out in full batches, one InsertUsage each.
	for _, u := range recRows(1200, "big") {
		r.add(u)
	}
	r.flushAll(ctx)
	if got, want := st.insertSizes(), []int{300, 500, 500, 200}; !slices.Equal(got, want) {
		t.Errorf("InsertUsage batches = %v, want %v", got, want)
	}
	if got := recRequests(t, st, "big"); got != 1200 {
		t.Errorf("stored requests = %d, want 1200", got)
	}
	if got := recMetric(t, r, "keybridge_usage_queue_depth"); got != 0 {
		t.Errorf("queue depth after flushing = %v, want 0", got)
	}
	if n, err := r.flush(ctx); n != 0 || err != nil || len(st.insertSizes()) != 4 {
		t.Errorf("flush of an empty queue = %d, %v, %d InsertUsage calls; want nothing written", n, err, len(st.insertSizes()))
	}
}

func TestRecorderKicksAtAFullBatch(t *testing.T) {
	r := newRecorder(newRecStore(t), nil, 5000)
	for _, u := range recRows(recorderBatch-1, "m") {
		r.add(u)
	}
	if len(r.kick) != 0 {
		t.Fatalf("a flush was asked for with %d rows queued; want none before %d", recorderBatch-1, recorderBatch)
	}
	r.add(recRows(1, "m")[0])
	if len(r.kick) != 1 {
		t.Errorf("no flush asked for with %d rows queued", recorderBatch)
	}
}

func TestRecorderDropsWhenFull(t *testing.T) {
	ctx := context.Background()
	st := newRecStore(t)
	r := newRecorder(st, nil, 10)
	for _, u := range recRows(15, "m") {
		r.add(u) // never blocks: the test would hang
	}
	if got := recMetric(t, r, "keybridge_usage_dropped_total"); got != 5 {
		t.Errorf("dropped = %v, want 5", got)
	}
	if got := recMetric(t, r, "keybridge_usage_queue_depth"); got != 10 {
		t.Errorf("queue depth = %v, want 10", got)
	}
	r.flushAll(ctx)
	if got := recRequests(t, st, "m"); got != 10 {
		t.Errorf("stored requests = %d, want the 10 queued", got)
	}
}

func TestRecorderRetriesFailedBatches(t *testing.T) {
	ctx := context.Background()
	st := newRecStore(t)
	raw := storetest.RawOf(t, st.Store)
	refuse := func(on bool) {
		t.Helper()
		stmt := `DROP TRIGGER refuse_usage`
		if on {
			stmt = `CREATE TRIGGER refuse_usage BEFORE INSERT ON usage_batches BEGIN SELECT RAISE(ABORT, 'usage writes refused'); END`
		}
		if _, err := raw.DB.Exec(stmt); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}
	r := newRecorder(st, nil, 100)

	refuse(true)
	for _, u := range recRows(3, "retried") {
		r.add(u)
	}
	if _, err := r.flush(ctx); err == nil {
		t.Fatal("flush with usage writes refused = nil, want an error")
	}
	if got := recMetric(t, r, "keybridge_usage_queue_depth"); got != 3 {
		t.Errorf("queue depth after a failed flush = %v, want the 3 rows kept", got)
	}
	if got := recMetric(t, r, "keybridge_usage_written_total"); got != 0 {
		t.Errorf("keybridge_usage_written_total after a failed flush = %v, want 0", got)
	}
	r.add(recRows(1, "later")[0])
	refuse(false)
	if n, err := r.flush(ctx); n != 3 || err != nil {
		t.Fatalf("flush after the database recovered = %d, %v; want the 3 kept rows", n, err)
	}
	r.flushAll(ctx)
	if got := recRequests(t, st, "retried"); got != 3 {
		t.Errorf("stored requests = %d, want 3, written once", got)
	}
	if got := recRequests(t, st, "later"); got != 1 {
		t.Errorf("stored requests queued meanwhile = %d, want 1", got)
	}
	if got := recMetric(t, r, "keybridge_usage_written_total"); got != 4 {
		t.Errorf("keybridge_usage_written_total after the retry = %v, want 4", got)
	}

	// A batch the database keeps refusing is given up after a bounded
	// number of tries, counted, and the queue moves on.
	refuse(true)
	for _, u := range recRows(2, "lost") {
		r.add(u)
	}
	for i := 0; i < recorderAttempts; i++ {
		if _, err := r.flush(ctx); err == nil {
			t.Fatalf("flush %d with usage writes refused = nil, want an error", i)
		}
	}
	if got := recMetric(t, r, "keybridge_usage_dropped_total"); got != 2 {
		t.Errorf("dropped after %d failures = %v, want 2", recorderAttempts, got)
	}
	if got := recMetric(t, r, "keybridge_usage_queue_depth"); got != 0 {
		t.Errorf("queue depth after giving up = %v, want 0", got)
	}
	refuse(false)
	r.add(recRows(1, "after")[0])
	r.flushAll(ctx)
	if got := recRequests(t, st, "after"); got != 1 {
		t.Errorf("stored requests after giving up = %d, want 1", got)
	}
	if got := recRequests(t, st, "lost"); got != 0 {
		t.Errorf("stored requests given up = %d, want 0", got)
	}
}

// recFixtures makes an upstream key and a personal credential to touch.
func recFixtures(t *testing.T, st store.Store) (*keybridge.ProviderKey, *keybridge.Credential, string) {
	t.Helper()
	ctx := context.Background()
	sealed := func(body string) []byte { return append([]byte{1, 0, 0, 0, 1}, body...) }
	org := &keybridge.Org{Slug: "acme", Name: "Acme"}
	if err := st.CreateOrg(ctx, org); err != nil {
		t.Fatal(err)
	}
	u := &keybridge.User{Email: "ada@example.com", Name: "Ada"}
	if err := st.CreateUser(ctx, u); err != nil {
		t.Fatal(err)
	}
	p := &keybridge.Provider{OrgID: org.ID, Name: "openai", DisplayName: "OpenAI", Type: keybridge.ProviderOpenAI,
		BaseURL: "https://api.openai.com/v1", Enabled: true, KeySource: keybridge.KeySourceUserOrOrg, SettingsSealed: sealed("settings")}
	if err := st.CreateProvider(ctx, p); err != nil {
		t.Fatal(err)
	}
	k := &keybridge.ProviderKey{ProviderID: p.ID, Name: "main", Hint: "...abcd", Enabled: true, Sealed: sealed("key"), Fingerprint: []byte("fp-key")}
	if err := st.CreateProviderKey(ctx, k); err != nil {
		t.Fatal(err)
	}
	c := &keybridge.Credential{UserID: u.ID, OrgID: org.ID, ProviderID: p.ID, Hint: "...wxyz", Sealed: sealed("cred"), Fingerprint: []byte("fp-cred")}
	if err := st.CreateCredential(ctx, c); err != nil {
		t.Fatal(err)
	}
	return k, c, p.ID
}

// recLastUsed reads the last_used_at of k and c back from the store.
func recLastUsed(t *testing.T, st store.Store, providerID string, k *keybridge.ProviderKey, c *keybridge.Credential) (key, cred *time.Time) {
	t.Helper()
	keys, err := st.ProviderKeys(context.Background(), providerID)
	if err != nil || len(keys) != 1 || keys[0].ID != k.ID {
		t.Fatalf("ProviderKeys = %v, %v; want %s", keys, err, k.ID)
	}
	creds, err := st.ListCredentials(context.Background(), c.UserID)
	if err != nil || len(creds) != 1 || creds[0].ID != c.ID {
		t.Fatalf("ListCredentials = %v, %v; want %s", creds, err, c.ID)
	}
	return keys[0].LastUsedAt, creds[0].LastUsedAt
}

func TestRecorderTouches(t *testing.T) {
	ctx := context.Background()
	st := newRecStore(t)
	k, c, provider := recFixtures(t, st)
	r := newRecorder(st, nil, 100)
	t1, t2, t3 := recStart, recStart.Add(time.Minute), recStart.Add(2*time.Minute)
	r.touchProviderKey(k.ID, t1)
	r.touchProviderKey(k.ID, t3)
	r.touchProviderKey(k.ID, t2) // late and older: t3 stays
	r.touchProviderKey("", t3)   // personal keys have no upstream key id
	r.touchCredential(c.ID, t2)
	r.flushTouches(ctx)

	st.mu.Lock()
	touches := slices.Clone(st.touches)
	st.mu.Unlock()
	if len(touches) != 1 || len(touches[0]) != 1 || !touches[0][k.ID].Equal(t3) {
		t.Errorf("TouchProviderKeys calls = %v, want one with %s at %v", touches, k.ID, t3)
	}
	key, cred := recLastUsed(t, st, provider, k, c)
	if key == nil || !key.Equal(t3) {
		t.Errorf("upstream key last_used_at = %v, want %v", key, t3)
	}
	if cred == nil || !cred.Equal(t2) {
		t.Errorf("credential last_used_at = %v, want %v", cred, t2)
	}
	r.flushTouches(ctx)
	if st.mu.Lock(); len(st.touches) != 1 {
		t.Errorf("TouchProviderKeys calls after an idle flush = %d, want still 1", len(st.touches))
	}
	st.mu.Unlock()
}

func TestRecorderShutdownFlush(t *testing.T) {
	st := newRecStore(t)
	k, c, provider := recFixtures(t, st)
	r := newRecorder(st, nil, 5000)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.run(ctx) }()
	for _, u := range recRows(1234, "m") {
		r.add(u)
	}
	r.touchProviderKey(k.ID, recStart)
	r.touchCredential(c.ID, recStart)
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run = %v, want nil: everything written", err)
	}
	if got := recRequests(t, st, "m"); got != 1234 {
		t.Errorf("stored requests after shutdown = %d, want 1234", got)
	}
	for _, n := range st.insertSizes() {
		if n > recorderBatch {
			t.Errorf("InsertUsage of %d rows, want at most %d", n, recorderBatch)
		}
	}
	key, cred := recLastUsed(t, st, provider, k, c)
	if key == nil || !key.Equal(recStart) || cred == nil || !cred.Equal(recStart) {
		t.Errorf("last_used_at after shutdown = %v, %v; want %v", key, cred, recStart)
	}
}

func TestRecorderShutdownReportsLoss(t *testing.T) {
	st := newRecStore(t)
	raw := storetest.RawOf(t, st.Store)
	if _, err := raw.DB.Exec(`CREATE TRIGGER refuse_usage BEFORE INSERT ON usage_batches BEGIN SELECT RAISE(ABORT, 'usage writes refused'); END`); err != nil {
		t.Fatal(err)
	}
	r := newRecorder(st, nil, 5000)
	for _, u := range recRows(700, "m") {
		r.add(u)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := r.run(ctx)
	if err == nil {
		t.Fatal("run with usage writes refused = nil, want the loss reported")
	}
	if got := recMetric(t, r, "keybridge_usage_dropped_total"); got != 700 {
		t.Errorf("dropped = %v, want 700 (%v)", got, err)
	}
}
