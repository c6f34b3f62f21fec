package auth_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/keybridge/keybridge/internal/auth"
	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store"
	"github.com/keybridge/keybridge/internal/store/storetest"
	"github.com/redis/go-redis/v9"
)

// chain returns the audit events of orgID ("" for the chain of no org).
func chain(t *testing.T, st store.Store, orgID string) []keybridge.AuditEvent {
	t.Helper()
	var out []keybridge.AuditEvent
	err := st.AuditChain(context.Background(), orgID, func(e *keybridge.AuditEvent) error {
		out = append(out, *e)
		return nil
	})
	if err != nil {
		t.Fatalf("AuditChain(%q): %v", orgID, err)
	}
	return out
}

func TestLogin(t *testing.T) {
	for _, eng := range storetest.Engines() {
		t.Run(eng.Name, func(t *testing.T) {
			ctx := keybridge.NewContextWithRequestInfo(context.Background(), keybridge.RequestInfo{
				IP: "198.51.100.7", UserAgent: "test-browser", RequestID: "req-1",
			})
			f := newFixture(t, eng.New(t))
			s := auth.New(f.st, fastOptions())
			second := f.addOrg(t, "second")
			f.join(t, second, f.owner, keybridge.RoleMember)
			invited := f.addUser(t, "invited@acme.test", "")
			f.join(t, f.org, invited, keybridge.RoleMember)
			loner := f.addUser(t, "loner@nowhere.test", "pw")
			// Warm the dummy hash, so what follows counts checks only.
			s.Login(ctx, "warm-up@nowhere.test", "x", "203.0.113.250")

			u, sess, tok, err := s.Login(ctx, "  Owner@ACME.test ", ownerPassword, "198.51.100.7")
			if err != nil {
				t.Fatalf("Login: %v", err)
			}
			if u.ID != f.owner.ID || sess.UserID != f.owner.ID || sess.IP != "198.51.100.7" || sess.UserAgent != "test-browser" {
				t.Errorf("Login = user %s, session %+v; want the owner's, from 198.51.100.7 with test-browser", u.ID, sess)
			}
			p, err := s.VerifySession(ctx, tok)
			if err != nil || p.UserID != f.owner.ID || p.SessionCSRF != sess.CSRFToken {
				t.Errorf("VerifySession(login token) = %+v, %v; want the owner with the session's CSRF token", p, err)
			}
			for _, o := range []*keybridge.Org{f.org, second} {
				events := chain(t, f.st, o.ID)
				if len(events) != 1 {
					t.Fatalf("org %s has %d audit events after login, want 1", o.Slug, len(events))
				}
				e := events[0]
				want := keybridge.Resource{Type: "user", ID: f.owner.ID, Name: f.owner.Email}
				if e.Action != "auth.login" || e.Resource != want || e.Actor.Type != keybridge.ActorUser || e.Actor.ID != f.owner.ID || e.IP != "198.51.100.7" || e.RequestID != "req-1" {
					t.Errorf("login event in %s = %+v, want auth.login by the owner on %+v", o.Slug, e, want)
				}
			}

			failures := []struct {
				name, email, password string
				orgs                  []string // chains the failure is recorded in
				resource              keybridge.Resource
			}{
				{"wrong password", f.owner.Email, "wrong", []string{f.org.ID, second.ID},
					keybridge.Resource{Type: "user", ID: f.owner.ID, Name: f.owner.Email}},
				{"unknown address", "Nobody@Acme.test", ownerPassword, []string{""},
					keybridge.Resource{Type: "user", Name: "nobody@acme.test"}},
				{"user without a password", invited.Email, "", []string{f.org.ID},
					keybridge.Resource{Type: "user", ID: invited.ID, Name: invited.Email}},
				{"user in no org", loner.Email, "nope", []string{""},
					keybridge.Resource{Type: "user", ID: loner.ID, Name: loner.Email}},
			}
			for _, tt := range failures {
				t.Run(tt.name, func(t *testing.T) {
					before := map[string]int{}
					for _, id := range tt.orgs {
						before[id] = len(chain(t, f.st, id))
					}
					runs := auth.ArgonRuns()
					_, _, _, err := s.Login(ctx, tt.email, tt.password, "198.51.100.8")
					wantCode(t, "Login", err, keybridge.EUnauthenticated)
					if got, want := keybridge.ErrorMessage(err), "invalid email or password"; got != want {
						t.Errorf("Login message = %q, want %q", got, want)
					}
					if got := auth.ArgonRuns() - runs; got != 1 {
						t.Errorf("argon2 checks for the attempt = %d, want exactly 1 (no timing oracle)", got)
					}
					for _, id := range tt.orgs {
						events := chain(t, f.st, id)
						if len(events) != before[id]+1 {
							t.Fatalf("chain %q has %d events, want %d", id, len(events), before[id]+1)
						}
						e := events[len(events)-1]
						if e.Action != "auth.login_failed" || e.Resource != tt.resource || e.Actor.Type != keybridge.ActorSystem || e.IP != "198.51.100.7" {
							t.Errorf("failed-login event in %q = %+v, want auth.login_failed by the system on %+v", id, e, tt.resource)
						}
					}
				})
			}
		})
	}
}

// randomIP returns an address in 10.0.0.0/8 no other test run uses, so
// Redis counters of earlier runs do not get in the way.
func randomIP() string {
	var b [3]byte
	rand.Read(b[:])
	return fmt.Sprintf("10.%d.%d.%d", b[0], b[1], b[2])
}

func randomEmail() string {
	var b [6]byte
	rand.Read(b[:])
	return "u" + hex.EncodeToString(b[:]) + "@limits.test"
}

// limiterSetups are the two places failed logins are counted.
func limiterSetups(t *testing.T) []struct {
	name string
	opts func() auth.Options
} {
	setups := []struct {
		name string
		opts func() auth.Options
	}{{"in-process", fastOptions}}
	if url := os.Getenv("KEYBRIDGE_TEST_REDIS_URL"); url != "" {
		ro, err := redis.ParseURL(url)
		if err != nil {
			t.Fatalf("parse KEYBRIDGE_TEST_REDIS_URL: %v", err)
		}
		rdb := redis.NewClient(ro)
		t.Cleanup(func() { rdb.Close() })
		if err := rdb.Ping(context.Background()).Err(); err != nil {
			t.Fatalf("ping redis: %v", err)
		}
		setups = append(setups, struct {
			name string
			opts func() auth.Options
		}{"redis", func() auth.Options { o := fastOptions(); o.Redis = rdb; return o }})
	}
	return setups
}

func TestLoginRateLimits(t *testing.T) {
	for _, setup := range limiterSetups(t) {
		t.Run(setup.name, func(t *testing.T) {
			ctx := context.Background()
			f := newFixture(t, storetest.SQLite(t))
			s := auth.New(f.st, setup.opts())
			login := func(email, password, ip string) error {
				_, _, _, err := s.Login(ctx, email, password, ip)
				return err
			}
			wantLimited := func(what string, err error) {
				t.Helper()
				wantCode(t, what, err, keybridge.ERateLimited)
				var ke *keybridge.Error
				if e, ok := err.(*keybridge.Error); ok {
					ke = e
				}
				if ke == nil || ke.RetryAfterSeconds < 1 || ke.RetryAfterSeconds > 15*60 {
					t.Errorf("%s: %+v, want Retry-After within the 15 min window", what, ke)
				}
			}

			t.Run("per account", func(t *testing.T) {
				u := f.addUser(t, randomEmail(), "right")
				for i := range 5 {
					err := login(u.Email, "wrong", randomIP())
					wantCode(t, fmt.Sprintf("failed login %d", i+1), err, keybridge.EUnauthenticated)
				}
				wantLimited("6th login, right password, other IP", login(u.Email, "right", randomIP()))
				// Another account from the same kind of place is not locked.
				other := f.addUser(t, randomEmail(), "right")
				if err := login(other.Email, "right", randomIP()); err != nil {
					t.Errorf("login of another account: %v", err)
				}
			})
			t.Run("unknown account", func(t *testing.T) {
				email := randomEmail()
				for range 5 {
					login(email, "guess", randomIP())
				}
				wantLimited("6th guess at an unknown address", login(email, "guess", randomIP()))
			})
			t.Run("success clears the account", func(t *testing.T) {
				u := f.addUser(t, randomEmail(), "right")
				for range 4 {
					login(u.Email, "wrong", randomIP())
				}
				if err := login(u.Email, "right", randomIP()); err != nil {
					t.Fatalf("login after 4 failures: %v", err)
				}
				for i := range 4 {
					err := login(u.Email, "wrong", randomIP())
					wantCode(t, fmt.Sprintf("failure %d after a success", i+1), err, keybridge.EUnauthenticated)
				}
			})
			t.Run("per IP", func(t *testing.T) {
				ip := randomIP()
				for i := range 30 {
					err := login(randomEmail(), "guess", ip)
					wantCode(t, fmt.Sprintf("failed login %d", i+1), err, keybridge.EUnauthenticated)
				}
				wantLimited("31st login from the IP, right password", login(f.owner.Email, ownerPassword, ip))
				if err := login(f.owner.Email, ownerPassword, randomIP()); err != nil {
					t.Errorf("login from another IP: %v", err)
				}
			})
			t.Run("concurrent guesses", func(t *testing.T) {
				// A costlier hash keeps every guess in flight long enough
				// that all of them start before the first one fails.
				saved := auth.PasswordParams
				auth.PasswordParams = auth.Argon2Params{Memory: 8 * 1024, Time: 2, Threads: 1, SaltLen: 16, KeyLen: 32}
				u := f.addUser(t, randomEmail(), "right")
				auth.PasswordParams = saved
				const n = 20
				var checked atomic.Int32
				var wg sync.WaitGroup
				for range n {
					wg.Add(1)
					go func() {
						defer wg.Done()
						if err := login(u.Email, "wrong", randomIP()); keybridge.IsCode(err, keybridge.EUnauthenticated) {
							checked.Add(1)
						}
					}()
				}
				wg.Wait()
				if got := checked.Load(); got > 5 {
					t.Errorf("%d of %d wrong passwords sent at once were checked, want at most 5 (the account's limit)", got, n)
				}
			})
			t.Run("IPv6 counts per /64", func(t *testing.T) {
				var b [4]byte
				rand.Read(b[:])
				prefix := fmt.Sprintf("2001:db8:%x:%x:", b[:2], b[2:])
				for i := range 30 {
					login(randomEmail(), "guess", fmt.Sprintf("%s:%x", prefix, i+1))
				}
				wantLimited("login from another address of the /64", login(f.owner.Email, ownerPassword, prefix+":ffff"))
			})
		})
	}
}

// With Redis, replicas share the counters: failures on one lock the
// account on the other.
func TestLoginRateLimitsSharedInRedis(t *testing.T) {
	url := os.Getenv("KEYBRIDGE_TEST_REDIS_URL")
	if url == "" {
		t.Skip("KEYBRIDGE_TEST_REDIS_URL is not set")
	}
	ro, err := redis.ParseURL(url)
	if err != nil {
		t.Fatalf("parse KEYBRIDGE_TEST_REDIS_URL: %v", err)
	}
	rdb := redis.NewClient(ro)
	defer rdb.Close()
	ctx := context.Background()
	f := newFixture(t, storetest.SQLite(t))
	opts := fastOptions()
	opts.Redis = rdb
	a, b := auth.New(f.st, opts), auth.New(f.st, opts)
	u := f.addUser(t, randomEmail(), "right")
	for range 5 {
		a.Login(ctx, u.Email, "wrong", randomIP())
	}
	_, _, _, err = b.Login(ctx, u.Email, "right", randomIP())
	wantCode(t, "login on the other replica", err, keybridge.ERateLimited)
}
