package cli_test

// The canary sweep: one real "keybridge serve" (debug logging on), every
// field that takes a secret given a distinct canary, every endpoint and the
// gateway driven through their success and error paths, and then every
// place a secret could end up searched for each canary in its plain form
// and its common encodings. The one answer that issues a secret may hold
// it; nothing else may: no other answer, no header, no log line, no metric,
// no audit event, no usage row, no byte of the database.

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/coder/websocket"
	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" database/sql driver
	_ "modernc.org/sqlite"             // the "sqlite" database/sql driver, to read the raw tables

	"github.com/keybridge/keybridge/internal/auth"
	"github.com/keybridge/keybridge/internal/cli"
	"github.com/keybridge/keybridge/internal/providertest"
)

// TestCanarySweep runs the sweep on the embedded SQLite store: the raw
// database files are searched while serve runs (the WAL holds the newest
// pages) and again after it stopped and checkpointed, and every table is
// read back row by row, so a value split across overflow pages is found
// too.
func TestCanarySweep(t *testing.T) {
	cheapPasswords(t)
	dir := t.TempDir()
	sw := newSweep(t)
	env := envOf(map[string]string{"KEYBRIDGE_METRICS_TOKEN": sw.metricsToken})
	srv := startServeEnv(t, env, "--listen", "127.0.0.1:0", "--data-dir", dir, "--log-level", "debug")
	dbPath := filepath.Join(dir, "keybridge.db")
	storage := []string{"--data-dir", dir}
	mk, err := os.ReadFile(filepath.Join(dir, "master.key"))
	if err != nil {
		t.Fatal(err)
	}
	sw.masterKey = strings.TrimSpace(string(mk))
	sw.drive(srv, env, storage)
	// The ciphertexts under the first data key, before the rewrap
	// replaces them. The connection is closed before serve stops, so that
	// serve's is the last and checkpoints the WAL into the main file.
	openDB := func() *sql.DB {
		db, err := sql.Open("sqlite", "file:"+dbPath+"?mode=ro")
		if err != nil {
			t.Fatal(err)
		}
		return db
	}
	db := openDB()
	sw.readSealed(db)
	db.Close()
	sw.keyring(env, storage, "rotate", "rewrap", "status")
	sw.afterwards(srv)
	sw.readSQLiteFiles(dbPath, "while serving")
	sw.stopServe(srv)
	sw.changeMaster(env, storage)
	sw.readSQLiteFiles(dbPath, "after the checkpoint at close")
	db = openDB()
	defer db.Close()
	sw.readTables(db, sqliteTables)
	sw.readSealed(db)
	sw.check()
}

// TestCanarySweepPostgres runs the sweep on PostgreSQL, in a schema of its
// own, and searches a pg_dump of that schema: every table Keybridge made
// there, with all its rows. (A schema rather than a database of its own:
// dropping a database forces an immediate checkpoint of the whole shared
// server, seconds on a busy one, for every test using it.)
func TestCanarySweepPostgres(t *testing.T) {
	cheapPasswords(t)
	dbURL := postgresURL(t)
	if _, err := exec.LookPath("pg_dump"); err != nil {
		t.Skip("pg_dump is not installed")
	}
	// pg_dump speaks libpq, which has no search_path parameter: the base
	// URL and the schema named apart.
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	schema := q.Get("search_path")
	q.Del("search_path")
	u.RawQuery = q.Encode()
	master := base64.StdEncoding.EncodeToString(canaryBytes(t, 32))
	sw := newSweep(t)
	env := envOf(map[string]string{"KEYBRIDGE_DATABASE_URL": dbURL, "KEYBRIDGE_MASTER_KEY": master, "KEYBRIDGE_METRICS_TOKEN": sw.metricsToken})
	sw.masterKey = master
	srv := startServeEnv(t, env, "--listen", "127.0.0.1:0", "--data-dir", t.TempDir(), "--log-level", "debug")
	db, err := sql.Open("pgx", dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	sw.drive(srv, env, nil)
	sw.readSealed(db) // under the first data key, before the rewrap
	sw.keyring(env, nil, "rotate", "rewrap")
	sw.afterwards(srv)
	sw.stopServe(srv)
	sw.changeMaster(env, nil)
	out, err := exec.Command("pg_dump", "--no-owner", "--schema", schema, "--dbname", u.String()).Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("pg_dump: %v\n%s", err, stderr)
	}
	if !bytes.Contains(out, []byte("COPY "+schema+".usage ")) {
		t.Fatalf("the pg_dump holds no usage table:\n%.2000s", out)
	}
	sw.store("pg_dump", "database", out)
	sw.readSealed(db)
	sw.check()
}

// cheapPasswords lowers the cost of the password hashes made while t runs:
// a leak does not depend on it, and the sweep makes a dozen. Hashes keep
// the parameters written in them, so the change is safe mid-process.
func cheapPasswords(t *testing.T) {
	saved := auth.PasswordParams
	auth.PasswordParams = auth.Argon2Params{Memory: 64, Time: 1, Threads: 1, SaltLen: 16, KeyLen: 32}
	t.Cleanup(func() { auth.PasswordParams = saved })
}

func canaryBytes(t testing.TB, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// canaryValue is one planted secret and what it is.
type canaryValue struct {
	value, what string
	// upstream marks a credential the providers are meant to receive.
	upstream bool
	// issued marks a secret Keybridge generated, rather than one planted.
	issued bool
	// public marks an identifier that answers and the database may hold
	// (an AI key's kbk_ id): it is searched for only where no identifier
	// belongs (the logs, the metrics, the upstream's requests).
	public bool
}

// sweepPlace is one body of bytes searched, and the secrets it may hold.
type sweepPlace struct {
	name, kind string
	b          []byte
	allowed    map[string]bool
}

type sweep struct {
	t         *testing.T
	canaries  []canaryValue
	places    []*sweepPlace
	masterKey string
	// sealed are the ciphertexts and hashes read from the database after
	// the run: present there, and nowhere else.
	sealed [][]byte
	// upstreams are the mocks; what they received is theirs, not
	// Keybridge's output, and is not searched, except for Keybridge's own
	// secrets, which must never be forwarded.
	upstreams         []*providertest.Server
	ownerKey, betaKey string
	// metricsToken is the bearer token /metrics requires.
	metricsToken string
	// counts of what the run went through, so the sweep cannot silently
	// lose its reach.
	statuses map[string]int
}

func newSweep(t *testing.T) *sweep {
	sw := &sweep{t: t, statuses: map[string]int{}}
	sw.metricsToken = sw.plant("the metrics token", "")
	return sw
}

// plant returns a new canary: prefix, a marker and 12 random bytes in hex.
func (sw *sweep) plant(what, prefix string) string {
	v := prefix + "CNRY" + hex.EncodeToString(canaryBytes(sw.t, 12))
	sw.canaries = append(sw.canaries, canaryValue{value: v, what: what})
	return v
}

// plantUpstream is plant for a credential that is sent to a provider.
func (sw *sweep) plantUpstream(what, prefix string) string {
	v := sw.plant(what, prefix)
	sw.canaries[len(sw.canaries)-1].upstream = true
	return v
}

// plantPassword returns a canary password holding characters that JSON,
// HTML-safe JSON and URL encoding each change.
func (sw *sweep) plantPassword(what string) string {
	v := `pw"<&>\` + "CNRY" + hex.EncodeToString(canaryBytes(sw.t, 12)) + " +/="
	sw.canaries = append(sw.canaries, canaryValue{value: v, what: what})
	return v
}

// issued adds a secret Keybridge generated (a key, a token) as a canary.
func (sw *sweep) issued(what, v string) string {
	if v == "" {
		sw.t.Fatalf("no %s was issued", what)
	}
	sw.canaries = append(sw.canaries, canaryValue{value: v, what: what, issued: true})
	return v
}

func (sw *sweep) store(name, kind string, b []byte, allowed ...string) *sweepPlace {
	p := &sweepPlace{name: name, kind: kind, b: bytes.Clone(b), allowed: map[string]bool{}}
	for _, a := range allowed {
		p.allowed[a] = true
	}
	sw.places = append(sw.places, p)
	return p
}

// sweepClient is one HTTP caller: its own cookies and, for a session, its CSRF
// token.
type sweepClient struct {
	sw   *sweep
	base string
	hc   *http.Client
	csrf string
}

func (sw *sweep) client(base string) *sweepClient {
	jar, _ := cookiejar.New(nil)
	return &sweepClient{sw: sw, base: base, hc: &http.Client{Jar: jar, Timeout: 30 * time.Second}}
}

// sweepReq is one request: what to send and how to send it. The answer
// that issues a secret is allowed to hold it once recorded: the caller
// marks it in the last place stored.
type sweepReq struct {
	method, path string
	key          string // bearer token
	header       http.Header
	body         any // marshalled to JSON unless []byte or string
	want         int // 0: any status
}

// do sends r and records the answer, status line, headers and body, as a
// place to search.
func (c *sweepClient) do(r sweepReq) (*http.Response, []byte) {
	c.sw.t.Helper()
	var rd io.Reader
	switch b := r.body.(type) {
	case nil:
	case []byte:
		rd = bytes.NewReader(b)
	case string:
		rd = strings.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			c.sw.t.Fatal(err)
		}
		rd = bytes.NewReader(j)
	}
	hr, err := http.NewRequest(r.method, c.base+r.path, rd)
	if err != nil {
		c.sw.t.Fatal(err)
	}
	if rd != nil {
		hr.Header.Set("Content-Type", "application/json")
	}
	if r.key != "" {
		hr.Header.Set("Authorization", "Bearer "+r.key)
	}
	if c.csrf != "" && r.method != "GET" {
		hr.Header.Set("X-CSRF-Token", c.csrf)
	}
	for k, v := range r.header {
		hr.Header[k] = v
	}
	return c.send(hr, r)
}

func (c *sweepClient) send(hr *http.Request, r sweepReq) (*http.Response, []byte) {
	c.sw.t.Helper()
	resp, err := c.hc.Do(hr)
	if err != nil {
		c.sw.t.Fatalf("%s %s: %v", hr.Method, hr.URL.Path, err)
	}
	defer resp.Body.Close()
	// A cut stream ends in an error: what arrived before it counts.
	body, _ := io.ReadAll(resp.Body)
	var rec bytes.Buffer
	fmt.Fprintf(&rec, "%s %s\n", resp.Proto, resp.Status)
	resp.Header.Write(&rec)
	resp.Trailer.Write(&rec)
	rec.WriteString("\n")
	rec.Write(body)
	kind := "response"
	if strings.HasPrefix(hr.URL.Path, "/gateway/") {
		kind = "gateway response"
	}
	c.sw.store(fmt.Sprintf("%s %s -> %d", hr.Method, hr.URL.Path, resp.StatusCode), kind, rec.Bytes())
	c.sw.statuses[fmt.Sprintf("%s %d", kind, resp.StatusCode)]++
	if r.want != 0 && resp.StatusCode != r.want {
		c.sw.t.Fatalf("%s %s = %d %.500s, want %d", hr.Method, hr.URL.Path, resp.StatusCode, body, r.want)
	}
	return resp, body
}

// json sends r and decodes the answer.
func (c *sweepClient) json(r sweepReq) map[string]any {
	c.sw.t.Helper()
	_, body := c.do(r)
	var v map[string]any
	if err := json.Unmarshal(body, &v); err != nil {
		c.sw.t.Fatalf("%s %s: answer is not a JSON object: %v\n%.300s", r.method, r.path, err, body)
	}
	return v
}

func jsonStr(v map[string]any, k string) string {
	s, _ := v[k].(string)
	return s
}

// runCLI runs "keybridge sub" with storage flags and flags, stdin given,
// and records its stderr as log output. It returns stdout for the caller
// to record, since stdout is where setup prints the key it issues.
func (sw *sweep) runCLI(getenv func(string) string, storage []string, stdin, sub string, flags ...string) (string, error) {
	var stdout, stderr bytes.Buffer
	args := append(append([]string{"keybridge", sub}, storage...), flags...)
	err := cli.Run(context.Background(), args, getenv, strings.NewReader(stdin), &stdout, &stderr)
	sw.store("keybridge "+sub+" stderr", "log", stderr.Bytes())
	return stdout.String(), err
}

func (sw *sweep) stopServe(srv *server) {
	sw.t.Helper()
	if err := srv.stop(); err != nil {
		sw.t.Fatalf("serve: %v", err)
	}
	// stdout holds the one-time setup link, and must hold only that.
	out := srv.stdout.String()
	m := setupLink.FindStringSubmatch(out)
	if m == nil {
		sw.t.Fatalf("serve printed no setup link:\n%s", out)
	}
	want := "Keybridge has no org yet. Open this link once to create it and its owner:\n\n    " + m[0] + "\n\n"
	if out != want {
		sw.t.Errorf("serve's stdout = %q, want only the setup notice %q", out, want)
	}
	sw.store("serve stdout (the setup notice)", "log", []byte(out), m[2])
	sw.store("serve stderr", "log", []byte(srv.stderr.String()))
	if !strings.Contains(srv.stderr.String(), `"level":"DEBUG"`) {
		sw.t.Errorf("serve logged nothing at debug: the sweep did not have debug logging on")
	}
}

// readSQLiteFiles records the raw bytes of the database and its -wal and
// -shm files.
func (sw *sweep) readSQLiteFiles(dbPath, when string) {
	sw.t.Helper()
	found := 0
	for _, suffix := range []string{"", "-wal", "-shm"} {
		b, err := os.ReadFile(dbPath + suffix)
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			sw.t.Fatal(err)
		}
		found++
		sw.store(filepath.Base(dbPath+suffix)+" "+when, "database", b)
	}
	if found == 0 {
		sw.t.Fatalf("no database file at %s", dbPath)
	}
}

var sqliteTables = `SELECT name FROM sqlite_master WHERE type = 'table'`

// readTables records every row of every table as text: text columns as
// they are, blobs as their bytes.
func (sw *sweep) readTables(db *sql.DB, listQuery string) {
	sw.t.Helper()
	var tables []string
	rows, err := db.Query(listQuery)
	if err != nil {
		sw.t.Fatal(err)
	}
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			sw.t.Fatal(err)
		}
		tables = append(tables, n)
	}
	rows.Close()
	sort.Strings(tables)
	for _, table := range tables {
		var out bytes.Buffer
		rows, err := db.Query(`SELECT * FROM "` + table + `"`)
		if err != nil {
			sw.t.Fatal(err)
		}
		cols, _ := rows.Columns()
		n := 0
		for rows.Next() {
			vals := make([]any, len(cols))
			ptrs := make([]any, len(cols))
			for i := range vals {
				ptrs[i] = &vals[i]
			}
			if err := rows.Scan(ptrs...); err != nil {
				sw.t.Fatal(err)
			}
			for i, v := range vals {
				out.WriteString(cols[i] + "=")
				switch v := v.(type) {
				case []byte:
					out.Write(v)
				default:
					fmt.Fprint(&out, v)
				}
				out.WriteString("\t")
			}
			out.WriteString("\n")
			n++
		}
		if err := rows.Err(); err != nil {
			sw.t.Fatal(err)
		}
		rows.Close()
		sw.store(fmt.Sprintf("table %s (%d rows)", table, n), "table", out.Bytes())
		sw.statuses["rows "+table] = n
	}
	for _, want := range []string{"usage_batches", "audit_events", "provider_keys", "user_credentials", "ai_keys", "api_keys", "sessions", "member_invitations"} {
		if sw.statuses["rows "+want] == 0 {
			sw.t.Errorf("table %s has no rows: the sweep did not reach it", want)
		}
	}
}

// readSealed reads the ciphertexts and hashes the database keeps, which
// no answer, log line or metric may hold.
func (sw *sweep) readSealed(db *sql.DB) {
	sw.t.Helper()
	for _, q := range []string{
		`SELECT settings FROM providers`,
		`SELECT api_key FROM provider_keys`,
		`SELECT fingerprint FROM provider_keys`,
		`SELECT api_key FROM user_credentials`,
		`SELECT secret_sealed FROM ai_keys WHERE secret_sealed IS NOT NULL`,
		`SELECT secret_hash FROM ai_keys`,
		`SELECT hash FROM api_keys`,
		`SELECT token_hash FROM sessions`,
		`SELECT token_hash FROM member_invitations`,
		`SELECT wrapped FROM data_keys`,
	} {
		rows, err := db.Query(q)
		if err != nil {
			sw.t.Fatalf("%s: %v", q, err)
		}
		n := 0
		for rows.Next() {
			var b []byte
			if err := rows.Scan(&b); err != nil {
				sw.t.Fatal(err)
			}
			if len(b) >= 16 {
				sw.sealed = append(sw.sealed, b)
				n++
			}
		}
		rows.Close()
		if n == 0 {
			sw.t.Errorf("%s found nothing: the sweep did not store what it meant to", q)
		}
	}
}

// canaryForms are the encodings a secret could leak in: as it is, JSON-escaped
// (with and without HTML escaping), URL-escaped, hex in both cases, and
// base64 in both alphabets at each of the three alignments it could start
// at inside a longer encoded value (the middle of the encoding, whose
// characters do not depend on the bytes around it).
func canaryForms(v []byte) map[string][]byte {
	out := map[string][]byte{"plain": v}
	j, _ := json.Marshal(string(v))
	out["JSON"] = j[1 : len(j)-1]
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	enc.Encode(string(v))
	out["JSON without HTML escapes"] = bytes.TrimSuffix(bytes.TrimSuffix(b.Bytes(), []byte("\n")), []byte(`"`))[1:]
	out["query-escaped"] = []byte(url.QueryEscape(string(v)))
	out["path-escaped"] = []byte(url.PathEscape(string(v)))
	out["hex"] = []byte(hex.EncodeToString(v))
	out["HEX"] = []byte(strings.ToUpper(hex.EncodeToString(v)))
	for _, e := range []struct {
		name string
		enc  *base64.Encoding
	}{{"base64", base64.StdEncoding}, {"base64url", base64.URLEncoding}} {
		for pad := 0; pad < 3; pad++ {
			s := e.enc.EncodeToString(append(make([]byte, pad), v...))
			// Characters before index lead mix in the padding bytes; the
			// last group mixes in whatever follows.
			lead := (pad*8 + 5) / 6
			if pad == 0 {
				lead = 0
			}
			end := (pad + len(v)) / 3 * 4
			if end-lead < 16 {
				continue
			}
			out[fmt.Sprintf("%s+%d", e.name, pad)] = []byte(s[lead:end])
		}
	}
	return out
}

// encodedForm is one encoding of a value, and the names of the forms that
// encode it so.
type encodedForm struct {
	b     []byte
	names []string
}

// distinctForms is canaryForms with the forms that are the same bytes merged.
func distinctForms(v []byte) []encodedForm {
	var out []encodedForm
	f := canaryForms(v)
	names := make([]string, 0, len(f))
	for n := range f {
		names = append(names, n)
	}
	sort.Strings(names)
next:
	for _, n := range names {
		for i := range out {
			if bytes.Equal(out[i].b, f[n]) {
				out[i].names = append(out[i].names, n)
				continue next
			}
		}
		out = append(out, encodedForm{b: f[n], names: []string{n}})
	}
	return out
}

// formMatcher finds many patterns in one pass over a text, each indexed by
// its first 8 bytes: a search of every pattern in turn would read each
// place a thousand times.
type formMatcher struct {
	pats   []encodedForm
	owners []int
	idx    map[uint64][]int
}

// add adds p as one of owner's patterns.
func (m *formMatcher) add(t *testing.T, owner int, p encodedForm) {
	if len(p.b) < 8 {
		t.Fatalf("pattern %q (%v) is too short to search for", p.b, p.names)
	}
	k := binary.LittleEndian.Uint64(p.b)
	m.idx[k] = append(m.idx[k], len(m.pats))
	m.pats = append(m.pats, p)
	m.owners = append(m.owners, owner)
}

// found is what find found of one owner: the names of its forms, and where
// one of them is.
type foundForms struct {
	names []string
	at    int
}

// find returns what text holds of each owner's patterns.
func (m *formMatcher) find(text []byte) map[int]*foundForms {
	out := map[int]*foundForms{}
	seen := map[int]bool{}
	for i := 0; i+8 <= len(text); i++ {
		for _, pi := range m.idx[binary.LittleEndian.Uint64(text[i:])] {
			if seen[pi] || !bytes.HasPrefix(text[i:], m.pats[pi].b) {
				continue
			}
			seen[pi] = true
			f := out[m.owners[pi]]
			if f == nil {
				f = &foundForms{at: i}
				out[m.owners[pi]] = f
			}
			f.names = append(f.names, m.pats[pi].names...)
			sort.Strings(f.names)
		}
	}
	return out
}

// check searches every place for every canary in every form, and every
// place outside the database for the ciphertexts and hashes.
func (sw *sweep) check() {
	t := sw.t
	t.Helper()
	if sw.masterKey != "" {
		k, _ := base64.StdEncoding.DecodeString(sw.masterKey)
		sw.canaries = append(sw.canaries, canaryValue{value: string(k), what: "the master key"})
	}
	seen := map[string]bool{}
	for _, c := range sw.canaries {
		if seen[c.value] {
			t.Fatalf("canary %s planted twice", c.what)
		}
		seen[c.value] = true
	}
	// Each value's distinct encodings, worked out once (for a value of
	// letters and digits several forms are the same bytes) and found in
	// one pass over each place.
	m := &formMatcher{idx: map[uint64][]int{}}
	for i, c := range sw.canaries {
		for _, f := range distinctForms([]byte(c.value)) {
			m.add(t, i, f)
		}
	}
	textual := map[string]bool{"JSON": true, "JSON without HTML escapes": true, "query-escaped": true, "path-escaped": true}
	for i, s := range sw.sealed {
		// Binary: its text escapes are not how it would leak; the plain,
		// hex and base64 forms cover it.
		for _, f := range distinctForms(s) {
			if !textual[f.names[0]] || len(f.names) > 1 {
				m.add(t, len(sw.canaries)+i, f)
			}
		}
	}
	bytesBy := map[string]int{}
	placesBy := map[string]int{}
	hits := 0
	for _, p := range sw.places {
		bytesBy[p.kind] += len(p.b)
		placesBy[p.kind]++
		inDatabase := p.kind == "database" || p.kind == "table"
		for owner, f := range m.find(p.b) {
			if owner >= len(sw.canaries) {
				if !inDatabase {
					hits++
					t.Errorf("%s holds stored ciphertext or hash %d (%s)", p.name, owner-len(sw.canaries), strings.Join(f.names, ", "))
				}
				continue
			}
			c := sw.canaries[owner]
			if p.allowed[c.value] || c.public && p.kind != "log" && p.kind != "metrics" {
				continue
			}
			hits++
			lo, hi := max(0, f.at-60), min(len(p.b), f.at+len(c.value)+60)
			t.Errorf("%s holds %s (%s): ...%q...", p.name, c.what, strings.Join(f.names, ", "), p.b[lo:hi])
		}
	}
	// What the providers received is theirs, not Keybridge's output: the
	// provider keys belong there. Every other secret (Keybridge's keys,
	// passwords, tokens, the Bedrock secret, which only signs) never does.
	upBytes := 0
	for _, up := range sw.upstreams {
		for _, r := range up.Requests() {
			var all bytes.Buffer
			all.WriteString(r.Method + " " + r.URI + "\n")
			r.Header.Write(&all)
			all.Write(r.Body)
			upBytes += all.Len()
			for owner, f := range m.find(all.Bytes()) {
				if owner < len(sw.canaries) && !sw.canaries[owner].upstream {
					hits++
					t.Errorf("the provider received %s (%s) in %s %s", sw.canaries[owner].what, strings.Join(f.names, ", "), r.Method, r.URI)
				}
			}
		}
	}
	kinds := make([]string, 0, len(bytesBy))
	total := 0
	for k, n := range bytesBy {
		kinds = append(kinds, k)
		total += n
	}
	sort.Strings(kinds)
	var summary strings.Builder
	issued := 0
	for _, c := range sw.canaries {
		if c.issued {
			issued++
		}
	}
	fmt.Fprintf(&summary, "canary sweep: %d canaries (%d planted, %d issued by Keybridge; %d forms each), %d places, %d bytes searched, %d hits\n",
		len(sw.canaries), len(sw.canaries)-issued, issued, len(canaryForms([]byte("0123456789abcdef0123456789"))), len(sw.places), total, hits)
	for _, k := range kinds {
		fmt.Fprintf(&summary, "  %-17s %4d places %9d bytes\n", k, placesBy[k], bytesBy[k])
	}
	fmt.Fprintf(&summary, "  %-17s %4d ciphertexts and hashes looked for outside the database\n", "stored", len(sw.sealed))
	fmt.Fprintf(&summary, "  %-17s %9d bytes the providers received, searched for every secret that must not be forwarded\n", "upstream", upBytes)
	t.Log(summary.String())
}

const (
	brRegion = "us-east-1"
	// A Bedrock model id: the ':' escaped, as the AWS SDKs send it.
	brModelPath = "/model/anthropic.claude-3-5-sonnet-20241022-v2%3A0"
)

// drive plants the canaries through every field that takes a secret and
// drives every endpoint and the gateway, with the management API of srv,
// the CLI's setup against the same storage beside it.
func (sw *sweep) drive(srv *server, getenv func(string) string, storage []string) {
	t := sw.t
	t.Helper()
	anon := sw.client(srv.url)

	// --- Setup: the link serve printed, a wrong token first. ---
	m := setupLink.FindStringSubmatch(srv.stdout.String())
	if m == nil {
		t.Fatalf("serve printed no setup link:\n%s", srv.stdout)
	}
	setupToken := sw.issued("the setup token", m[2])
	setupPassword := sw.plantPassword("the setup password")
	anon.do(sweepReq{method: "GET", path: "/setup?token=" + url.QueryEscape(setupToken), want: 200})
	anon.do(sweepReq{method: "POST", path: "/api/v1/setup", want: 404, body: map[string]string{
		"token": sw.plant("a wrong setup token", ""), "org": "acme", "email": "owner@acme.test", "password": setupPassword}})
	anon.do(sweepReq{method: "POST", path: "/api/v1/setup", want: 400, body: map[string]string{
		"token": setupToken, "org": "Not A Slug!", "email": "owner@acme.test", "password": setupPassword}})
	owner := sw.client(srv.url)
	_, body := owner.do(sweepReq{method: "POST", path: "/api/v1/setup", want: 201, body: map[string]string{
		"token": setupToken, "org": "acme", "email": "owner@acme.test", "name": "Owner", "password": setupPassword}})
	sw.sessionIssued(owner, body, "the setup session")
	anon.do(sweepReq{method: "POST", path: "/api/v1/setup", want: 404, body: map[string]string{
		"token": setupToken, "org": "acme2", "email": "x@acme.test", "password": setupPassword}})

	// The CLI's setup, beside the running server: a second org whose
	// owner's password comes on stdin and whose key goes to stdout.
	cliPassword := sw.plantPassword("the CLI setup password")
	out, err := sw.runCLI(getenv, storage, cliPassword+"\n", "setup", "--org", "beta", "--email", "boss@beta.test", "--password-stdin")
	if err != nil {
		t.Fatalf("keybridge setup: %v", err)
	}
	betaKey := sw.issued("the CLI setup's owner key", strings.TrimSpace(out))
	sw.store("keybridge setup stdout (the key it issues)", "log", []byte(out), betaKey)

	// --- Logins: wrong passwords, an unknown user, then the right one. ---
	wrong := sw.plantPassword("a mistyped password")
	anon.do(sweepReq{method: "POST", path: "/api/v1/auth/login", want: 401, body: map[string]string{"email": "owner@acme.test", "password": wrong}})
	anon.do(sweepReq{method: "POST", path: "/api/v1/auth/login", want: 401, body: map[string]string{"email": "nobody@acme.test", "password": wrong}})
	anon.do(sweepReq{method: "POST", path: "/api/v1/auth/login", want: 400, body: `{"email":"owner@acme.test","password":"` + wrong[8:] + `",}`})
	login := sw.client(srv.url)
	_, body = login.do(sweepReq{method: "POST", path: "/api/v1/auth/login", want: 200, body: map[string]string{"email": "owner@acme.test", "password": setupPassword}})
	sw.sessionIssued(login, body, "the owner's login session")
	_, body = login.do(sweepReq{method: "POST", path: "/api/v1/auth/login", want: 200, body: map[string]string{"email": "boss@beta.test", "password": cliPassword}})
	sw.sessionIssued(login, body, "the CLI owner's login session")
	login.do(sweepReq{method: "GET", path: "/api/v1/users/me", want: 200})
	noCSRF := login.csrf
	login.csrf = ""
	login.do(sweepReq{method: "POST", path: "/api/v1/api-keys", want: 403, body: map[string]any{"name": "x", "permissions": []string{"gateway:invoke"}}})
	login.csrf = noCSRF

	// --- Platform keys: created, rotated, suspended, revoked, leaked. ---
	all := []string{"providers:read", "providers:write", "projects:read", "projects:write", "members:read", "members:write",
		"audit:read", "usage:read", "gateway:invoke", "api_keys:write"}
	ownerKey := sw.createKey(owner, "", map[string]any{"org": "acme", "name": "all", "permissions": all})
	gwKey := sw.createKey(owner, "", map[string]any{"name": "gateway", "permissions": []string{"gateway:invoke"}, "rate_limit_rpm": 1000})
	toRotate := sw.createKey(anon, ownerKey, map[string]any{"name": "ci", "permissions": []string{"gateway:invoke"}})
	rotID := sw.keyID(anon, ownerKey, toRotate)
	r := anon.json(sweepReq{method: "POST", path: "/api/v1/api-keys/" + rotID + "/rotate", key: ownerKey, want: 201, body: map[string]int{"grace_period_seconds": 0}})
	rotated := sw.issued("a rotated platform key", jsonStr(r, "key"))
	sw.places[len(sw.places)-1].allowed[rotated] = true
	suspended := sw.createKey(anon, ownerKey, map[string]any{"name": "to suspend", "permissions": []string{"gateway:invoke"}})
	susID := sw.keyID(anon, ownerKey, suspended)
	anon.do(sweepReq{method: "POST", path: "/api/v1/api-keys/" + susID + "/suspend", key: ownerKey, want: 200})
	anon.do(sweepReq{method: "POST", path: "/api/v1/api-keys/" + susID + "/reactivate", key: ownerKey, want: 200})
	anon.do(sweepReq{method: "POST", path: "/api/v1/api-keys/" + susID + "/suspend", key: ownerKey, want: 200})
	revoked := sw.createKey(anon, ownerKey, map[string]any{"name": "to revoke", "permissions": []string{"gateway:invoke"}})
	anon.do(sweepReq{method: "DELETE", path: "/api/v1/api-keys/" + sw.keyID(anon, ownerKey, revoked), key: ownerKey, want: 204})
	leaked := sw.createKey(anon, ownerKey, map[string]any{"name": "to leak", "permissions": []string{"gateway:invoke"}})
	anon.do(sweepReq{method: "POST", path: "/api/v1/leaked-keys", want: 200, body: []map[string]string{
		{"token": leaked, "type": "keybridge_api_key", "url": "https://example.test/leak", "source": "content"},
		{"token": sw.plant("an unknown token reported leaked", "kb_"), "type": "keybridge_api_key", "url": "https://example.test/x", "source": "content"}}})
	anon.do(sweepReq{method: "PATCH", path: "/api/v1/api-keys/" + rotID, key: ownerKey, want: 400, body: map[string]any{"permissions": []string{"nope"}}})
	anon.do(sweepReq{method: "POST", path: "/api/v1/api-keys/" + rotID + "/rotate", key: ownerKey, want: 400, body: map[string]int{"grace_period_seconds": -1}})
	for _, k := range []string{toRotate, suspended, revoked, leaked, sw.plant("a made-up platform key", "kb_")} {
		anon.do(sweepReq{method: "GET", path: "/api/v1/users/me", key: k, want: 401})
	}
	anon.do(sweepReq{method: "GET", path: "/api/v1/users/me", key: rotated, want: 200})
	anon.do(sweepReq{method: "GET", path: "/api/v1/api-keys", key: ownerKey, want: 200})
	anon.do(sweepReq{method: "GET", path: "/api/v1/orgs/acme/api-keys", key: ownerKey, want: 200})
	anon.do(sweepReq{method: "GET", path: "/api/v1/orgs", key: betaKey, want: 200})

	// --- Members: an invitation, a wrong token, then accepting it. ---
	inv := anon.json(sweepReq{method: "POST", path: "/api/v1/orgs/acme/members", key: ownerKey, want: 201,
		body: map[string]string{"email": "member@acme.test", "name": "Member", "role": "member"}})
	invToken := sw.issued("an invitation token", jsonStr(inv, "invite_token"))
	sw.places[len(sw.places)-1].allowed[invToken] = true
	memberID := jsonStr(inv, "user_id")
	anon.do(sweepReq{method: "GET", path: "/invite?token=" + url.QueryEscape(invToken), want: 200})
	memberPassword := sw.plantPassword("the invitee's password")
	anon.do(sweepReq{method: "POST", path: "/api/v1/auth/accept-invite", want: 404, body: map[string]string{"token": sw.plant("a wrong invitation token", ""), "password": memberPassword}})
	anon.do(sweepReq{method: "POST", path: "/api/v1/auth/accept-invite", want: 400, body: map[string]string{"token": invToken, "password": "short"}})
	member := sw.client(srv.url)
	_, body = member.do(sweepReq{method: "POST", path: "/api/v1/auth/accept-invite", want: 200, body: map[string]string{"token": invToken, "password": memberPassword, "name": "Member"}})
	sw.sessionIssued(member, body, "the invitee's session")
	anon.do(sweepReq{method: "POST", path: "/api/v1/auth/accept-invite", want: 404, body: map[string]string{"token": invToken, "password": memberPassword}})
	memberKey := sw.createKey(member, "", map[string]any{"org": "acme", "name": "mine", "permissions": []string{"gateway:invoke", "providers:read"}})
	anon.do(sweepReq{method: "GET", path: "/api/v1/orgs/acme/members", key: ownerKey, want: 200})
	anon.do(sweepReq{method: "PATCH", path: "/api/v1/orgs/acme/members/" + memberID, key: ownerKey, want: 200, body: map[string]string{"role": "member"}})
	member.do(sweepReq{method: "POST", path: "/api/v1/auth/logout", want: 204})
	member.do(sweepReq{method: "GET", path: "/api/v1/users/me", want: 401})

	// --- Providers of every type, in front of the mocks. ---
	oaMock := providertest.NewOpenAI(t)
	antMock := providertest.NewAnthropic(t)
	gemMock := providertest.NewGemini(t)
	brAK := sw.plantUpstream("the Bedrock access key id", "AKIA")
	brSK0 := sw.plant("the Bedrock secret, before its rotation", "br/secret+")
	brSK := sw.plant("the Bedrock secret", "br/secret+")
	brMock := providertest.NewBedrock(t, brRegion, brAK, brSK)
	sw.upstreams = append(sw.upstreams, oaMock, antMock, gemMock, brMock)
	prov := func(body map[string]any) {
		t.Helper()
		anon.do(sweepReq{method: "POST", path: "/api/v1/orgs/acme/providers", key: ownerKey, want: 201, body: body})
	}
	upKey := func(provider, what, prefix string, priority int) string {
		t.Helper()
		k := sw.plantUpstream(what, prefix)
		oaMock.AddKey(k)
		antMock.AddKey(k)
		gemMock.AddKey(k)
		anon.do(sweepReq{method: "POST", path: "/api/v1/orgs/acme/providers/" + provider + "/keys", key: ownerKey, want: 201,
			body: map[string]any{"api_key": k, "priority": priority}})
		return k
	}
	echoStatus := map[string]int{}
	echo := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
		w.Header().Set("X-Echo", got)
		w.Header().Set("Content-Type", "application/json")
		status := echoStatus[got]
		if status == 0 {
			status = 401
		}
		w.WriteHeader(status)
		fmt.Fprintf(w, `{"error":{"message":"Incorrect API key provided: %s","type":"%s","code":"%s"}}`, got, got, got)
	}))
	t.Cleanup(echo.Close)
	prov(map[string]any{"name": "echo", "type": "openai", "base_url": echo.URL + "/v1"})
	prov(map[string]any{"name": "oai", "type": "openai", "base_url": oaMock.URL + "/v1", "key_source": "user_or_org"})
	prov(map[string]any{"name": "ant", "type": "anthropic", "base_url": antMock.URL})
	prov(map[string]any{"name": "mine", "type": "anthropic", "base_url": antMock.URL, "key_source": "user"})
	prov(map[string]any{"name": "gem", "type": "google", "base_url": gemMock.URL})
	prov(map[string]any{"name": "az", "type": "azure-openai", "base_url": oaMock.URL, "settings": map[string]any{"api_version": "2024-10-21"}})
	prov(map[string]any{"name": "compat", "type": "openai-compatible", "base_url": oaMock.URL + "/v1"})
	prov(map[string]any{"name": "exhausted", "type": "openai", "base_url": oaMock.URL + "/v1"})
	prov(map[string]any{"name": "br", "type": "bedrock", "base_url": brMock.URL,
		"settings": map[string]any{"region": brRegion, "access_key": brAK, "access_key_secret": brSK0}})
	anon.do(sweepReq{method: "PATCH", path: "/api/v1/orgs/acme/providers/br", key: ownerKey, want: 200,
		body: map[string]any{"settings": map[string]any{"access_key_secret": brSK}}})
	anon.do(sweepReq{method: "PATCH", path: "/api/v1/orgs/acme/providers/br", key: ownerKey, want: 200,
		body: map[string]any{"settings": map[string]any{"access_key": "", "model": "anthropic.claude-3-5-sonnet-20241022-v2:0"}}})
	badSecret := sw.plant("a Bedrock secret refused for its region", "br/secret+")
	anon.do(sweepReq{method: "PATCH", path: "/api/v1/orgs/acme/providers/br", key: ownerKey, want: 400,
		body: map[string]any{"settings": map[string]any{"access_key_secret": badSecret, "region": "not a region!"}}})
	anon.do(sweepReq{method: "POST", path: "/api/v1/orgs/acme/providers", key: ownerKey, want: 400, body: map[string]any{"name": "half", "type": "bedrock",
		"settings": map[string]any{"region": brRegion, "access_key_secret": sw.plant("a Bedrock secret without its key id", "br/secret+")}}})
	anon.do(sweepReq{method: "POST", path: "/api/v1/orgs/acme/providers", key: ownerKey, want: 400, body: map[string]any{"name": "inline", "type": "openai",
		"api_key": sw.plant("a key sent in an unknown field", "sk-")}})
	anon.do(sweepReq{method: "POST", path: "/api/v1/orgs/acme/providers", key: ownerKey, want: 400, body: map[string]any{"name": "typo", "type": "azure-openai",
		"base_url": oaMock.URL, "settings": map[string]any{"api_key": sw.plant("a key sent as an unknown setting", "sk-")}}})

	oaiKey := upKey("oai", "the OpenAI key", "sk-proj-", 0)
	antKey1 := upKey("ant", "the first Anthropic key", "sk-ant-api03-", 0)
	upKey("ant", "the second Anthropic key", "sk-ant-api03-", 1)
	gemKey := upKey("gem", "the Gemini key", "AIzaSy", 0)
	upKey("az", "the Azure key", "az", 0)
	f1 := upKey("compat", "a compatible provider's first key", "sk-", 0)
	f2 := upKey("compat", "a compatible provider's second key", "sk-", 1)
	f3 := upKey("compat", "a compatible provider's third key", "sk-", 2)
	x1 := upKey("exhausted", "a rate limited key", "sk-", 0)
	x2 := upKey("exhausted", "another rate limited key", "sk-", 1)
	// Refused keys: a duplicate, a header-breaking one, a key on Bedrock.
	dupPath := "/api/v1/orgs/acme/providers/oai/keys"
	anon.do(sweepReq{method: "POST", path: dupPath, key: ownerKey, want: 409, body: map[string]any{"api_key": oaiKey}})
	anon.do(sweepReq{method: "POST", path: dupPath, key: ownerKey, want: 400, body: map[string]any{"api_key": sw.plant("a key with a line break", "sk-") + "\r\nX: y"}})
	anon.do(sweepReq{method: "POST", path: dupPath, key: ownerKey, want: 400, body: map[string]any{"api_key": oaiKey, "secret": oaiKey}})
	anon.do(sweepReq{method: "POST", path: "/api/v1/orgs/acme/providers/br/keys", key: ownerKey, want: 400, body: map[string]any{"api_key": sw.plant("a key given to Bedrock", "sk-")}})
	anon.do(sweepReq{method: "POST", path: dupPath, key: memberKey, want: 403, body: map[string]any{"api_key": sw.plant("a key a member tried to add", "sk-")}})
	upKey("oai", "a key deleted later", "sk-proj-", 5)
	keys := anon.json(sweepReq{method: "GET", path: dupPath, key: ownerKey, want: 200})
	items, _ := keys["items"].([]any)
	var doomedID string
	for _, it := range items {
		if m, _ := it.(map[string]any); m != nil && m["priority"] == float64(5) {
			doomedID = jsonStr(m, "id")
		}
	}
	anon.do(sweepReq{method: "PATCH", path: dupPath + "/" + doomedID, key: ownerKey, want: 200, body: map[string]any{"name": "doomed", "enabled": false}})
	anon.do(sweepReq{method: "DELETE", path: dupPath + "/" + doomedID, key: ownerKey, want: 204})
	for _, p := range []string{"", "/oai", "/br", "/az"} {
		anon.do(sweepReq{method: "GET", path: "/api/v1/orgs/acme/providers" + p, key: ownerKey, want: 200})
	}
	anon.do(sweepReq{method: "GET", path: "/api/v1/orgs/acme/providers", key: memberKey, want: 200})
	anon.do(sweepReq{method: "GET", path: "/api/v1/orgs/acme/providers/ant/keys", key: ownerKey, want: 200})

	// --- Tests without saving, known and unknown keys, every type. ---
	testPath := "/api/v1/orgs/acme/providers/test"
	testKey := sw.plantUpstream("a key tested without saving", "sk-")
	oaMock.AddKey(testKey)
	for _, tc := range []map[string]any{
		{"type": "openai", "base_url": oaMock.URL + "/v1", "api_key": testKey},
		{"type": "openai", "base_url": oaMock.URL + "/v1", "api_key": sw.plantUpstream("an OpenAI key the provider refuses", "sk-")},
		{"type": "openai-compatible", "base_url": oaMock.URL + "/v1", "api_key": sw.plantUpstream("a compatible key the provider refuses", "sk-")},
		{"type": "anthropic", "base_url": antMock.URL, "api_key": sw.plantUpstream("an Anthropic key the provider refuses", "sk-ant-")},
		{"type": "google", "base_url": gemMock.URL, "api_key": sw.plantUpstream("a Gemini key the provider refuses", "AIza")},
		{"type": "azure-openai", "base_url": oaMock.URL, "api_key": sw.plantUpstream("an Azure key the provider refuses", "az"), "settings": map[string]any{"api_version": "2024-10-21"}},
		{"type": "bedrock", "base_url": brMock.URL, "settings": map[string]any{"region": brRegion, "access_key": brAK, "access_key_secret": sw.plant("a Bedrock secret the provider refuses", "br/secret+")}},
		{"type": "bedrock", "base_url": brMock.URL, "settings": map[string]any{"region": brRegion, "access_key": brAK, "access_key_secret": brSK}},
	} {
		anon.do(sweepReq{method: "POST", path: testPath, key: ownerKey, want: 200, body: tc})
	}
	// A key that would break the header: refused, or at least not echoed.
	anon.do(sweepReq{method: "POST", path: testPath, key: ownerKey, body: map[string]any{"type": "openai", "base_url": oaMock.URL + "/v1", "api_key": sw.plant("a tested key with a line break", "sk-") + "\r\nX-Injected: 1"}})
	anon.do(sweepReq{method: "POST", path: testPath, key: ownerKey, want: 400, body: map[string]any{"type": "bedrock", "api_key": sw.plant("a key tested on Bedrock", "sk-"), "settings": map[string]any{"region": brRegion}}})
	anon.do(sweepReq{method: "GET", path: "/api/v1/orgs/acme/providers/oai/usage?refresh=true", key: ownerKey, want: 200})
	anon.do(sweepReq{method: "GET", path: "/api/v1/orgs/acme/providers/gem/usage", key: ownerKey, want: 200})

	// --- Personal credentials. ---
	personal0 := sw.plantUpstream("a personal key, before its change", "sk-proj-")
	personal := sw.plantUpstream("a personal OpenAI key", "sk-proj-")
	personalAnt := sw.plantUpstream("a personal Anthropic key", "sk-ant-api03-")
	oaMock.AddKey(personal)
	antMock.AddKey(personalAnt)
	cred := anon.json(sweepReq{method: "POST", path: "/api/v1/users/me/credentials", key: memberKey, want: 201,
		body: map[string]string{"org": "acme", "provider": "oai", "api_key": personal0}})
	credPath := "/api/v1/users/me/credentials/" + jsonStr(cred, "id")
	anon.do(sweepReq{method: "POST", path: "/api/v1/users/me/credentials", key: memberKey, want: 409, body: map[string]string{"org": "acme", "provider": "oai", "api_key": personal0}})
	anon.do(sweepReq{method: "POST", path: "/api/v1/users/me/credentials", key: memberKey, want: 404, body: map[string]string{"org": "nowhere", "provider": "oai", "api_key": sw.plant("a personal key for no org", "sk-")}})
	anon.do(sweepReq{method: "PATCH", path: credPath, key: memberKey, want: 200, body: map[string]string{"api_key": personal}})
	anon.do(sweepReq{method: "PATCH", path: credPath, key: ownerKey, want: 404, body: map[string]string{"api_key": sw.plant("a personal key changed by someone else", "sk-")}})
	anon.do(sweepReq{method: "POST", path: "/api/v1/users/me/credentials", key: memberKey, want: 201, body: map[string]string{"org": "acme", "provider": "mine", "api_key": personalAnt}})
	dropped := anon.json(sweepReq{method: "POST", path: "/api/v1/users/me/credentials", key: ownerKey, want: 201,
		body: map[string]string{"org": "acme", "provider": "az", "api_key": sw.plantUpstream("a personal key deleted later", "az")}})
	anon.do(sweepReq{method: "DELETE", path: "/api/v1/users/me/credentials/" + jsonStr(dropped, "id"), key: ownerKey, want: 204})
	anon.do(sweepReq{method: "GET", path: "/api/v1/users/me/credentials", key: memberKey, want: 200})

	// --- Projects and AI keys of every type. ---
	proj := anon.json(sweepReq{method: "POST", path: "/api/v1/orgs/acme/projects", key: ownerKey, want: 201, body: map[string]string{"name": "repo"}})
	aiPath := "/api/v1/orgs/acme/projects/" + jsonStr(proj, "id") + "/ai-keys"
	aiKeys := map[string][2]string{}
	for _, typ := range []string{"OPENAI", "ANTHROPIC", "GOOGLE", "AWS", "OTHER"} {
		k := anon.json(sweepReq{method: "POST", path: aiPath, key: ownerKey, want: 201, body: map[string]any{"name": strings.ToLower(typ), "ai_type": typ}})
		secret := sw.issued("the "+typ+" AI key's secret", jsonStr(k, "secret"))
		sw.canaries = append(sw.canaries, canaryValue{value: jsonStr(k, "key"), what: "the " + typ + " AI key's id", public: true, issued: true})
		sw.places[len(sw.places)-1].allowed[secret] = true
		aiKeys[typ] = [2]string{jsonStr(k, "key"), secret}
		anon.do(sweepReq{method: "PATCH", path: aiPath + "/" + jsonStr(k, "id"), key: ownerKey, want: 200, body: map[string]any{"rate_limit_rpm": 500}})
	}
	gone := anon.json(sweepReq{method: "POST", path: aiPath, key: ownerKey, want: 201, body: map[string]any{"name": "gone", "ai_type": "OPENAI"}})
	goneSecret := sw.issued("a deleted AI key's secret", jsonStr(gone, "secret"))
	sw.places[len(sw.places)-1].allowed[goneSecret] = true
	anon.do(sweepReq{method: "DELETE", path: aiPath + "/" + jsonStr(gone, "id"), key: ownerKey, want: 204})
	anon.do(sweepReq{method: "GET", path: aiPath + "?include_deleted=true", key: ownerKey, want: 200})
	anon.do(sweepReq{method: "POST", path: aiPath, key: ownerKey, want: 400, body: map[string]any{"name": "bad", "ai_type": "NOPE"}})

	// --- The gateway. ---
	gw := func(r sweepReq) []byte {
		t.Helper()
		_, b := anon.do(r)
		return b
	}
	chat := map[string]any{"model": "gpt-4o-mini", "messages": []map[string]string{{"role": "user", "content": "hi"}}}
	stream := map[string]any{"model": "gpt-4o-mini", "stream": true, "messages": []map[string]string{{"role": "user", "content": "hi"}}}
	ant := map[string]any{"model": "claude-sonnet-4-5", "max_tokens": 32, "messages": []map[string]string{{"role": "user", "content": "hi"}}}
	antStream := map[string]any{"model": "claude-sonnet-4-5", "max_tokens": 32, "stream": true, "messages": []map[string]string{{"role": "user", "content": "hi"}}}
	antHdr := func(name, v string) http.Header {
		return http.Header{name: {v}, "Anthropic-Version": {"2023-06-01"}}
	}
	gem := map[string]any{"contents": []map[string]any{{"parts": []map[string]string{{"text": "hi"}}}}}

	// OpenAI: the org key, a stream, the member's personal key, an AI key
	// in each place a caller may put it.
	gw(sweepReq{method: "POST", path: "/gateway/oai/chat/completions", key: gwKey, want: 200, body: chat})
	gw(sweepReq{method: "POST", path: "/gateway/oai/chat/completions", key: gwKey, want: 200, body: stream})
	gw(sweepReq{method: "POST", path: "/gateway/oai/chat/completions", key: memberKey, want: 200, body: chat})
	gw(sweepReq{method: "POST", path: "/gateway/oai/responses", header: http.Header{"X-Api-Key": {aiKeys["OPENAI"][1]}}, want: 200,
		body: map[string]any{"model": "gpt-4o-mini", "input": "hi", "stream": true}})
	gw(sweepReq{method: "POST", path: "/gateway/oai/embeddings?key=" + url.QueryEscape(aiKeys["OPENAI"][1]), want: 200, body: map[string]any{"model": "text-embedding-3-small", "input": "hi"}})
	gw(sweepReq{method: "GET", path: "/gateway/oai/models", header: http.Header{"Api-Key": {rotated}}, want: 200})
	sw.webSocket(srv.url+"/gateway/oai/responses", aiKeys["OPENAI"][1])
	// Refused callers: none reach the provider.
	for _, k := range []string{suspended, revoked, leaked, toRotate, goneSecret, sw.plant("a made-up key at the gateway", "kb_"), sw.plant("a made-up AI secret at the gateway", "kbs_")} {
		gw(sweepReq{method: "POST", path: "/gateway/oai/chat/completions", key: k, want: 401, body: chat})
	}
	gw(sweepReq{method: "POST", path: "/gateway/ant/v1/messages", header: antHdr("X-Api-Key", aiKeys["OPENAI"][1]), want: 403, body: ant})
	gw(sweepReq{method: "POST", path: "/gateway/oai/chat/completions", key: betaKey, want: 404, body: chat})
	gw(sweepReq{method: "POST", path: "/gateway/nope/chat/completions", key: gwKey, want: 404, body: chat})

	// Anthropic: a 529 on the first key fails over to the second; a
	// stream cut after two events; a personal key on a "user" provider.
	antMock.Fault(antKey1, providertest.Fault{Status: 529, Times: 1})
	gw(sweepReq{method: "POST", path: "/gateway/ant/v1/messages", header: antHdr("X-Api-Key", aiKeys["ANTHROPIC"][1]), want: 200, body: ant})
	antMock.Fault(antKey1, providertest.Fault{CutAfter: 2, Times: 1})
	gw(sweepReq{method: "POST", path: "/gateway/ant/v1/messages", header: antHdr("Authorization", "Bearer "+gwKey), want: 200, body: antStream})
	gw(sweepReq{method: "POST", path: "/gateway/mine/v1/messages", header: antHdr("X-Api-Key", memberKey), want: 200, body: ant})
	gw(sweepReq{method: "POST", path: "/gateway/mine/v1/messages", header: antHdr("X-Api-Key", gwKey), want: 403, body: ant})

	// Gemini: the key query parameter and x-goog-api-key; an upstream 500
	// with nowhere to fail over to.
	gw(sweepReq{method: "POST", path: "/gateway/gem/v1beta/models/gemini-2.5-flash:generateContent?key=" + url.QueryEscape(aiKeys["GOOGLE"][1]), want: 200, body: gem})
	gw(sweepReq{method: "POST", path: "/gateway/gem/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", header: http.Header{"X-Goog-Api-Key": {gwKey}}, want: 200, body: gem})
	gemMock.Fault(gemKey, providertest.Fault{Status: 500, Times: 1})
	gw(sweepReq{method: "POST", path: "/gateway/gem/v1beta/models/gemini-2.5-flash:generateContent", header: http.Header{"X-Goog-Api-Key": {gwKey}}, want: 502, body: gem})
	gw(sweepReq{method: "POST", path: "/gateway/gem/v1beta/models/gemini-2.5-flash:generateContent?key=" + url.QueryEscape(sw.plant("a made-up key in the query", "kb_")), want: 401, body: gem})

	// Azure: api-key, and api-version from the provider's settings.
	gw(sweepReq{method: "POST", path: "/gateway/az/openai/deployments/gpt-4o/chat/completions", header: http.Header{"Api-Key": {gwKey}}, want: 200, body: chat})

	// An OpenAI-compatible provider with three keys: a 401 and a 429 fail
	// over to the third; then a stream cut short, a 500 and resets with
	// the first two cooling down.
	oaMock.Fault(f1, providertest.Fault{Status: 401})
	oaMock.Fault(f2, providertest.Fault{Status: 429, RetryAfter: "60", Times: 1})
	gw(sweepReq{method: "POST", path: "/gateway/compat/chat/completions", header: http.Header{"Api-Key": {aiKeys["OTHER"][1]}}, want: 200, body: chat})
	oaMock.Fault(f3, providertest.Fault{CutAfter: 2, Times: 1})
	gw(sweepReq{method: "POST", path: "/gateway/compat/chat/completions", key: gwKey, want: 200, body: stream})
	oaMock.Fault(f3, providertest.Fault{Status: 500, Times: 1})
	gw(sweepReq{method: "POST", path: "/gateway/compat/chat/completions", key: gwKey, body: chat})
	oaMock.Fault(f3, providertest.Fault{Reset: true, Times: 2})
	gw(sweepReq{method: "POST", path: "/gateway/compat/chat/completions", key: gwKey, body: chat})
	oaMock.Fault(f3, providertest.Fault{Status: 503})
	gw(sweepReq{method: "POST", path: "/gateway/compat/chat/completions", key: gwKey, body: chat})
	// Every key rate limited: 429 with the shortest Retry-After, then the
	// same while they cool down, without a request upstream.
	oaMock.Fault(x1, providertest.Fault{Status: 429, RetryAfter: "30"})
	oaMock.Fault(x2, providertest.Fault{Status: 429, RetryAfter: "20"})
	gw(sweepReq{method: "POST", path: "/gateway/exhausted/chat/completions", key: gwKey, want: 429, body: chat})
	gw(sweepReq{method: "POST", path: "/gateway/exhausted/chat/completions", key: gwKey, want: 429, body: stream})

	// A provider that echoes the whole key it gets back, in its body, as
	// its error code and in a header, for each status that fails over:
	// Keybridge's answers hold none of it.
	for i, status := range []int{401, 403, 429, 500, 529} {
		echoKey := upKey("echo", fmt.Sprintf("a key the provider echoes with %d", status), "sk-echo-", i)
		echoStatus[echoKey] = status
	}
	gw(sweepReq{method: "POST", path: "/gateway/echo/chat/completions", key: gwKey, want: 429, body: chat})
	gw(sweepReq{method: "POST", path: "/gateway/echo/chat/completions", key: gwKey, want: 429, body: stream})
	anon.do(sweepReq{method: "POST", path: testPath, key: ownerKey, want: 200, body: map[string]any{"type": "openai", "base_url": echo.URL + "/v1",
		"api_key": sw.plantUpstream("a tested key the provider echoes", "sk-echo-")}})

	// HTTP/2 without TLS goes to net/http rather than the gateway's front:
	// the same answers, through the other server.
	var h2 http.Protocols
	h2.SetUnencryptedHTTP2(true)
	h2c := sw.client(srv.url)
	h2c.hc.Transport = &http.Transport{Protocols: &h2}
	for _, r := range []sweepReq{
		{method: "POST", path: "/gateway/oai/chat/completions", key: gwKey, want: 200, body: stream},
		{method: "POST", path: "/gateway/echo/chat/completions", header: http.Header{"X-Api-Key": {gwKey}}, want: 429, body: chat},
		{method: "POST", path: "/gateway/oai/chat/completions", key: sw.plant("a made-up key over HTTP/2", "kb_"), want: 401, body: chat},
		{method: "GET", path: "/api/v1/orgs/acme/providers/oai/keys", key: ownerKey, want: 200},
	} {
		if resp, _ := h2c.do(r); resp.ProtoMajor != 2 {
			t.Fatalf("%s %s was answered in %s, want HTTP/2", r.method, r.path, resp.Proto)
		}
	}

	// Bedrock: an AWS AI key signing with SigV4, a wrong signature, a
	// bearer key; a stream cut short.
	conv := `{"messages":[{"role":"user","content":[{"text":"hi"}]}]}`
	sw.sigV4(anon, "/gateway/br"+brModelPath+"/converse", conv, aiKeys["AWS"][0], aiKeys["AWS"][1], 200)
	sw.sigV4(anon, "/gateway/br"+brModelPath+"/converse", conv, aiKeys["AWS"][0], sw.plant("a wrong AWS secret", ""), 401)
	sw.sigV4(anon, "/gateway/br"+brModelPath+"/converse", conv, "AKIA"+sw.plant("an unknown AWS key id", ""), sw.plant("an unknown AWS key's secret", ""), 401)
	gw(sweepReq{method: "POST", path: "/gateway/br" + brModelPath + "/converse", key: aiKeys["AWS"][1], want: 200, body: conv})
	brMock.Fault(brAK, providertest.Fault{CutAfter: 2, Times: 1})
	gw(sweepReq{method: "POST", path: "/gateway/br" + brModelPath + "/converse-stream", key: gwKey, want: 200, body: conv})
	brMock.Fault(brAK, providertest.Fault{Status: 403, Times: 1})
	gw(sweepReq{method: "POST", path: "/gateway/br" + brModelPath + "/converse", key: gwKey, want: 502, body: conv})

	// --- The rest of the management API. ---
	anon.do(sweepReq{method: "GET", path: "/api/v1/api-keys/" + rotID, key: ownerKey, want: 200})
	anon.do(sweepReq{method: "PATCH", path: "/api/v1/api-keys/" + rotID, key: ownerKey, want: 200, body: map[string]any{"description": "rotated", "allowed_models": []string{"gpt-4o*"}}})
	anon.do(sweepReq{method: "POST", path: "/api/v1/api-keys/" + sw.keyID(anon, ownerKey, revoked) + "/reactivate", key: ownerKey, want: 409})
	owner.do(sweepReq{method: "POST", path: "/api/v1/orgs", want: 201, body: map[string]string{"slug": "gamma", "name": "Gamma"}})
	anon.do(sweepReq{method: "GET", path: "/api/v1/orgs", key: ownerKey, want: 200})
	anon.do(sweepReq{method: "GET", path: "/api/v1/orgs/acme", key: ownerKey, want: 200})
	anon.do(sweepReq{method: "PATCH", path: "/api/v1/orgs/acme", key: ownerKey, want: 200, body: map[string]string{"name": "Acme Inc"}})
	owner.do(sweepReq{method: "DELETE", path: "/api/v1/orgs/gamma", want: 204})
	anon.do(sweepReq{method: "GET", path: "/api/v1/orgs/acme/projects", key: memberKey, want: 403})
	anon.do(sweepReq{method: "GET", path: "/api/v1/orgs/acme/projects", key: ownerKey, want: 200})
	anon.do(sweepReq{method: "GET", path: "/api/v1/orgs/acme/projects/" + jsonStr(proj, "id"), key: ownerKey, want: 200})
	anon.do(sweepReq{method: "PATCH", path: "/api/v1/orgs/acme/projects/" + jsonStr(proj, "id"), key: ownerKey, want: 200, body: map[string]string{"description": "the repo"}})
	spare := anon.json(sweepReq{method: "POST", path: "/api/v1/orgs/acme/projects", key: ownerKey, want: 201, body: map[string]string{"name": "spare"}})
	anon.do(sweepReq{method: "DELETE", path: "/api/v1/orgs/acme/projects/" + jsonStr(spare, "id"), key: ownerKey, want: 204})
	left := anon.json(sweepReq{method: "POST", path: "/api/v1/orgs/acme/members", key: ownerKey, want: 201, body: map[string]string{"email": "leaver@acme.test", "role": "member"}})
	sw.places[len(sw.places)-1].allowed[sw.issued("an invitation token never used", jsonStr(left, "invite_token"))] = true
	anon.do(sweepReq{method: "DELETE", path: "/api/v1/orgs/acme/members/" + jsonStr(left, "user_id"), key: ownerKey, want: 204})
	pending := anon.json(sweepReq{method: "POST", path: "/api/v1/orgs/acme/members", key: ownerKey, want: 201, body: map[string]string{"email": "pending@acme.test", "role": "admin"}})
	sw.places[len(sw.places)-1].allowed[sw.issued("an invitation token left pending", jsonStr(pending, "invite_token"))] = true
	anon.do(sweepReq{method: "DELETE", path: "/api/v1/users/me/credentials/" + jsonStr(cred, "id"), key: memberKey, want: 204})
	for _, p := range []string{"/healthz", "/", "/api/v1/openapi.json", "/api/v1/nope"} {
		anon.do(sweepReq{method: "GET", path: p})
	}
	// A password change, where the server has the endpoint: a wrong
	// current password, then the right one, then a login with the new.
	newPassword := sw.plantPassword("a changed password")
	login.do(sweepReq{method: "POST", path: "/api/v1/users/me/password", body: map[string]string{
		"current_password": sw.plantPassword("a wrong current password"), "new_password": newPassword}})
	resp, _ := login.do(sweepReq{method: "POST", path: "/api/v1/users/me/password", body: map[string]string{
		"current_password": cliPassword, "new_password": newPassword}})
	if resp.StatusCode == http.StatusNoContent {
		again := sw.client(srv.url)
		_, body := again.do(sweepReq{method: "POST", path: "/api/v1/auth/login", want: 200, body: map[string]string{"email": "boss@beta.test", "password": newPassword}})
		sw.sessionIssued(again, body, "the session after a password change")
	}
	owner.do(sweepReq{method: "POST", path: "/api/v1/auth/logout", want: 204})
	sw.ownerKey, sw.betaKey = ownerKey, betaKey
}

// keyring rotates the data key ring and rewraps every stored secret under
// the new key, beside the running server, the way an operator does.
func (sw *sweep) keyring(getenv func(string) string, storage []string, subs ...string) {
	sw.t.Helper()
	for _, sub := range subs {
		out, err := sw.runCLI(getenv, nil, "", "keyring", append([]string{sub}, storage...)...)
		if err != nil {
			sw.t.Fatalf("keybridge keyring %s: %v", sub, err)
		}
		sw.store("keybridge keyring "+sub+" stdout", "log", []byte(out))
		if sub == "rewrap" && !strings.Contains(out, "Re-encrypted") {
			sw.t.Errorf("keybridge keyring rewrap said %q, want it to re-encrypt the stored secrets", out)
		}
	}
}

// changeMaster re-wraps the key ring under a new master key, a canary,
// with the server stopped, as an operator moving to a new key does.
func (sw *sweep) changeMaster(getenv func(string) string, storage []string) {
	sw.t.Helper()
	newKey := canaryBytes(sw.t, 32)
	sw.canaries = append(sw.canaries, canaryValue{value: string(newKey), what: "the new master key"})
	env := func(k string) string {
		if k == "KEYBRIDGE_NEW_MASTER_KEY" {
			return base64.StdEncoding.EncodeToString(newKey)
		}
		return getenv(k)
	}
	out, err := sw.runCLI(env, nil, "", "keyring", append([]string{"change-master"}, storage...)...)
	if err != nil {
		sw.t.Fatalf("keybridge keyring change-master: %v", err)
	}
	sw.store("keybridge keyring change-master stdout", "log", []byte(out))
}

// afterwards reads what the run left: usage, audit events, metrics.
func (sw *sweep) afterwards(srv *server) {
	t := sw.t
	t.Helper()
	anon := sw.client(srv.url)
	ownerKey, betaKey := sw.ownerKey, sw.betaKey
	var body []byte
	sw.waitUsage(srv.url, ownerKey)
	for _, g := range []string{"provider", "model", "user", "project", "api_key"} {
		anon.do(sweepReq{method: "GET", path: "/api/v1/orgs/acme/usage?group_by=" + g + "&bucket=hour", key: ownerKey, want: 200})
		sw.places[len(sw.places)-1].kind = "usage (API)"
	}
	_, body = anon.do(sweepReq{method: "GET", path: "/api/v1/orgs/acme/audit-events?limit=500", key: ownerKey, want: 200})
	sw.places[len(sw.places)-1].kind = "audit events (API)"
	if !bytes.Contains(body, []byte("provider_key.create")) || !bytes.Contains(body, []byte(`"[redacted]"`)) {
		t.Errorf("the audit events hold no redacted provider key creation: %.500s", body)
	}
	anon.do(sweepReq{method: "GET", path: "/api/v1/orgs/acme/audit-events/verify", key: ownerKey, want: 200})
	anon.do(sweepReq{method: "GET", path: "/api/v1/orgs/beta/audit-events?limit=500", key: betaKey, want: 200})
	sw.places[len(sw.places)-1].kind = "audit events (API)"
	anon.do(sweepReq{method: "GET", path: "/metrics", want: 401})
	anon.do(sweepReq{method: "GET", path: "/metrics", key: sw.plant("a wrong metrics token", ""), want: 401})
	_, body = anon.do(sweepReq{method: "GET", path: "/metrics", key: sw.metricsToken, want: 200})
	sw.places[len(sw.places)-1].kind = "metrics"
	for _, want := range []string{"keybridge_gateway_failovers_total", "keybridge_gateway_upstream_responses_total"} {
		if !bytes.Contains(body, []byte(want)) {
			t.Errorf("/metrics has no %s", want)
		}
	}
	anon.do(sweepReq{method: "GET", path: "/readyz", want: 200})
	anon.do(sweepReq{method: "DELETE", path: "/api/v1/orgs/acme/providers/exhausted", key: ownerKey, want: 204})

	// The run reached what it meant to.
	for _, want := range []string{"gateway response 200", "gateway response 401", "gateway response 403", "gateway response 404",
		"gateway response 429", "gateway response 502", "response 400", "response 401", "response 404", "response 409"} {
		if sw.statuses[want] == 0 {
			t.Errorf("no %s in the run", want)
		}
	}
	// The three cut streams ended in an error event in their own format
	// (SPEC §7.5), so the run reached the path it meant to.
	cut := map[string]bool{}
	for _, p := range sw.places {
		if p.kind != "gateway response" {
			continue
		}
		for provider, marker := range map[string]string{"compat": `data: {"error":`, "ant": "event: error", "br": ":exception-type"} {
			if strings.Contains(p.name, "/gateway/"+provider+"/") && bytes.Contains(p.b, []byte(marker)) {
				cut[provider] = true
			}
		}
	}
	if len(cut) != 3 {
		t.Errorf("streams that ended in an error event: %v, want compat, ant and br", cut)
	}

	n := 0
	for _, up := range sw.upstreams {
		n += len(up.Requests())
	}
	if n < 25 {
		t.Errorf("the providers received %d requests, want 25 or more", n)
	}
}

// waitUsage waits until the usage flusher has written (most of) the
// gateway's rows, so the usage answers searched hold them; the raw table,
// searched after serve drained, holds them all.
func (sw *sweep) waitUsage(base, key string) {
	sw.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, body := call(sw.t, base, "GET", "/api/v1/orgs/acme/usage?group_by=provider", key, nil)
		var v struct{ Items []struct{ Requests int } }
		json.Unmarshal(body, &v)
		n := 0
		for _, it := range v.Items {
			n += it.Requests
		}
		if n >= 25 {
			return
		}
		if time.Now().After(deadline) {
			sw.t.Fatalf("no usage rows for the gateway's requests: %d %s", resp.StatusCode, body)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// sessionIssued takes the session a login-like answer started: its cookie
// and CSRF token are canaries, and that answer the one place they belong.
func (sw *sweep) sessionIssued(c *sweepClient, body []byte, what string) {
	sw.t.Helper()
	var v struct {
		CSRF string `json:"csrf_token"`
	}
	json.Unmarshal(body, &v)
	c.csrf = sw.issued(what+"'s CSRF token", v.CSRF)
	u, _ := url.Parse(c.base)
	var token string
	for _, ck := range c.hc.Jar.Cookies(u) {
		token = ck.Value
	}
	sw.issued(what+"'s cookie", token)
	last := sw.places[len(sw.places)-1]
	last.allowed[token] = true
	last.allowed[v.CSRF] = true
}

// createKey creates a platform key (as c, with key as bearer if set) and
// returns its plaintext, allowed in that one answer.
func (sw *sweep) createKey(c *sweepClient, key string, body map[string]any) string {
	sw.t.Helper()
	v := c.json(sweepReq{method: "POST", path: "/api/v1/api-keys", key: key, want: 201, body: body})
	k := sw.issued("platform key "+fmt.Sprint(body["name"]), jsonStr(v, "key"))
	sw.places[len(sw.places)-1].allowed[k] = true
	return k
}

// keyID finds the id of a platform key by its display prefix.
func (sw *sweep) keyID(c *sweepClient, ownerKey, plaintext string) string {
	sw.t.Helper()
	v := c.json(sweepReq{method: "GET", path: "/api/v1/orgs/acme/api-keys?limit=500", key: ownerKey, want: 200})
	items, _ := v["items"].([]any)
	for _, it := range items {
		m, _ := it.(map[string]any)
		if p := jsonStr(m, "prefix"); p != "" && strings.HasPrefix(plaintext, p) {
			return jsonStr(m, "id")
		}
	}
	sw.t.Fatalf("no key with the prefix of %.12s", plaintext)
	return ""
}

// sigV4 sends body to path signed with SigV4 by the given pair, as the
// AWS SDKs sign for Bedrock.
func (sw *sweep) sigV4(c *sweepClient, path, body, akid, secret string, want int) {
	sw.t.Helper()
	hr, err := http.NewRequest("POST", c.base+path, strings.NewReader(body))
	if err != nil {
		sw.t.Fatal(err)
	}
	hr.Header.Set("Content-Type", "application/json")
	sum := sha256.Sum256([]byte(body))
	hash := hex.EncodeToString(sum[:])
	hr.Header.Set("X-Amz-Content-Sha256", hash)
	creds := aws.Credentials{AccessKeyID: akid, SecretAccessKey: secret}
	if err := v4.NewSigner().SignHTTP(context.Background(), creds, hr, hash, "bedrock", brRegion, time.Now()); err != nil {
		sw.t.Fatal(err)
	}
	c.send(hr, sweepReq{want: want})
}

// webSocket opens the Responses API over a WebSocket with secret as the
// bearer token, asks for one response, and records the upgrade's answer
// and every message received.
func (sw *sweep) webSocket(wsURL, secret string) {
	sw.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	h := http.Header{}
	h.Set("Authorization", "Bearer "+secret)
	conn, resp, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(wsURL, "http"), &websocket.DialOptions{HTTPHeader: h})
	if err != nil {
		sw.t.Fatalf("WebSocket upgrade: %v", err)
	}
	defer conn.CloseNow()
	var rec bytes.Buffer
	fmt.Fprintf(&rec, "%s\n", resp.Status)
	resp.Header.Write(&rec)
	if err := conn.Write(ctx, websocket.MessageText, []byte(`{"type":"response.create","model":"gpt-4o-mini","input":"hi"}`)); err != nil {
		sw.t.Fatal(err)
	}
	for {
		_, msg, err := conn.Read(ctx)
		if err != nil {
			sw.t.Fatalf("WebSocket read: %v", err)
		}
		rec.Write(msg)
		rec.WriteString("\n")
		if bytes.Contains(msg, []byte(`"response.completed"`)) {
			break
		}
	}
	conn.Close(websocket.StatusNormalClosure, "")
	sw.store("WebSocket /gateway/oai/responses", "gateway response", rec.Bytes())
	sw.statuses["gateway response 101"]++
}

// TestCanaryForms checks that the sweep's encodings find a secret wherever
// it starts inside a longer encoded value.
func TestCanaryForms(t *testing.T) {
	secret := []byte(`pw"<&>\CNRY0123456789abcdef01234567 +/=`)
	for pad := range 3 {
		for _, e := range []*base64.Encoding{base64.StdEncoding, base64.URLEncoding, base64.RawStdEncoding, base64.RawURLEncoding} {
			enc := e.EncodeToString(append(append([]byte("user:"[:pad+1]), secret...), "tail"[:pad]...))
			if !containsAnyForm(t, []byte("Basic "+enc), secret) {
				t.Errorf("base64 at offset %d (%s) not found", pad, enc)
			}
		}
	}
	j, _ := json.Marshal(map[string]string{"p": string(secret)})
	for _, text := range [][]byte{j, []byte(hex.EncodeToString(secret)), []byte(strings.ToUpper(hex.EncodeToString(secret))),
		[]byte("?password=" + url.QueryEscape(string(secret))), []byte("/" + url.PathEscape(string(secret)) + "/")} {
		if !containsAnyForm(t, text, secret) {
			t.Errorf("%s not found", text)
		}
	}
	if containsAnyForm(t, []byte(`{"p":"pw\"<&>\\CNRY0123456789abcdef01234566"}`), secret) {
		t.Error("a different value was taken for the secret")
	}
	// A binary value, as a ciphertext is: its hex and base64 inside a
	// longer text, at each alignment.
	sealed := canaryBytes(t, 48)
	for pad := range 3 {
		lead := bytes.Repeat([]byte{0xff}, pad)
		for _, text := range []string{hex.EncodeToString(append(lead, sealed...)), base64.StdEncoding.EncodeToString(append(lead, sealed...)),
			base64.RawURLEncoding.EncodeToString(append(lead, sealed...)), string(sealed)} {
			if !containsAnyForm(t, []byte("x"+text+"y"), sealed) {
				t.Errorf("binary value at offset %d not found in %q", pad, text)
			}
		}
	}
}

func containsAnyForm(t *testing.T, text, secret []byte) bool {
	m := &formMatcher{idx: map[uint64][]int{}}
	for _, f := range distinctForms(secret) {
		m.add(t, 0, f)
	}
	return len(m.find(text)) == 1
}
