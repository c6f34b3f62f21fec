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

			// A user in no org logs in too: the session is a change, so
			// its event goes to the chain of no org, as a failure would.
			if _, _, _, err := s.Login(ctx, loner.Email, "pw", "198.51.100.7"); err != nil {
				t.Fatalf("Login of a user in no org: %v", err)
			}
			if events := chain(t, f.st, ""); len(events) == 0 || events[len(events)-1].Action != "auth.login" ||
				events[len(events)-1].Resource.ID != loner.ID || events[len(events)-1].Actor.ID != loner.ID {
				t.Errorf("chain of no org after a login of a user in no org = %+v, want its auth.login last", events)
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

// limitedOptions are small limits, so each one is reached in a few tries:
// 3 failures per (account, IP), 8 per IP, 6 per account.
func limitedOptions(base auth.Options) auth.Options {
	base.LoginAccountIPLimit, base.LoginIPLimit, base.LoginAccountLimit = 3, 8, 6
	return base
}

func TestLoginRateLimits(t *testing.T) {
	for _, setup := range limiterSetups(t) {
		t.Run(setup.name, func(t *testing.T) {
			ctx := context.Background()
			f := newFixture(t, storetest.SQLite(t))
			defaults := auth.New(f.st, setup.opts())
			s := auth.New(f.st, limitedOptions(setup.opts()))
			login := func(s *auth.Service, email, password, ip string) error {
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

			// The hole this policy closes: with the default limits, a
			// stranger hammering wrong passwords from their IP is slowed
			// down, and the owner still signs in from theirs.
			t.Run("a stranger cannot lock the owner out", func(t *testing.T) {
				u := f.addUser(t, randomEmail(), "right")
				stranger, ownerIP := randomIP(), randomIP()
				limited := 0
				for i := range 40 {
					err := login(defaults, u.Email, fmt.Sprintf("guess %d", i), stranger)
					if keybridge.IsCode(err, keybridge.ERateLimited) {
						limited++
					} else {
						wantCode(t, fmt.Sprintf("guess %d", i+1), err, keybridge.EUnauthenticated)
					}
				}
				if limited != 30 {
					t.Errorf("%d of 40 guesses from one IP were rate limited, want 30 (10 are checked)", limited)
				}
				if err := login(defaults, u.Email, "right", ownerIP); err != nil {
					t.Errorf("owner's login from their IP after a stranger's 40 guesses: %v, want success", err)
				}
				wantLimited("the stranger's next try, right password", login(defaults, u.Email, "right", stranger))
			})
			t.Run("per account and IP", func(t *testing.T) {
				u := f.addUser(t, randomEmail(), "right")
				ip := randomIP()
				for i := range 3 {
					wantCode(t, fmt.Sprintf("failed login %d", i+1), login(s, u.Email, "wrong", ip), keybridge.EUnauthenticated)
				}
				wantLimited("4th login from the IP, right password", login(s, u.Email, "right", ip))
				if err := login(s, u.Email, "right", randomIP()); err != nil {
					t.Errorf("login of the account from another IP: %v", err)
				}
				other := f.addUser(t, randomEmail(), "right")
				if err := login(s, other.Email, "right", ip); err != nil {
					t.Errorf("login of another account from the IP: %v", err)
				}
			})
			t.Run("per account, from many IPs", func(t *testing.T) {
				// Only a guess attack spread over many addresses reaches
				// the account's ceiling.
				u := f.addUser(t, randomEmail(), "right")
				for i := range 6 {
					wantCode(t, fmt.Sprintf("failed login %d", i+1), login(s, u.Email, "wrong", randomIP()), keybridge.EUnauthenticated)
				}
				wantLimited("7th login, right password, a new IP", login(s, u.Email, "right", randomIP()))
			})
			t.Run("unknown account", func(t *testing.T) {
				email, ip := randomEmail(), randomIP()
				for range 3 {
					login(s, email, "guess", ip)
				}
				wantLimited("4th guess at an unknown address", login(s, email, "guess", ip))
			})
			t.Run("success clears the account and IP", func(t *testing.T) {
				u := f.addUser(t, randomEmail(), "right")
				ip := randomIP()
				for range 2 {
					login(s, u.Email, "wrong", ip)
				}
				if err := login(s, u.Email, "right", ip); err != nil {
					t.Fatalf("login after 2 failures: %v", err)
				}
				for i := range 2 {
					err := login(s, u.Email, "wrong", ip)
					wantCode(t, fmt.Sprintf("failure %d after a success", i+1), err, keybridge.EUnauthenticated)
				}
			})
			t.Run("per IP", func(t *testing.T) {
				ip := randomIP()
				for i := range 8 {
					err := login(s, randomEmail(), "guess", ip)
					wantCode(t, fmt.Sprintf("failed login %d", i+1), err, keybridge.EUnauthenticated)
				}
				wantLimited("9th login from the IP, right password", login(s, f.owner.Email, ownerPassword, ip))
				if err := login(s, f.owner.Email, ownerPassword, randomIP()); err != nil {
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
				ip := randomIP()
				var checked atomic.Int32
				var wg sync.WaitGroup
				for range n {
					wg.Add(1)
					go func() {
						defer wg.Done()
						if err := login(s, u.Email, "wrong", ip); keybridge.IsCode(err, keybridge.EUnauthenticated) {
							checked.Add(1)
						}
					}()
				}
				wg.Wait()
				if got := checked.Load(); got > 3 {
					t.Errorf("%d of %d wrong passwords sent at once from one IP were checked, want at most 3 (the limit)", got, n)
				}
			})
			t.Run("IPv6 counts per /64", func(t *testing.T) {
				var b [4]byte
				rand.Read(b[:])
				prefix := fmt.Sprintf("2001:db8:%x:%x:", b[:2], b[2:])
				for i := range 8 {
					login(s, randomEmail(), "guess", fmt.Sprintf("%s:%x", prefix, i+1))
				}
				wantLimited("login from another address of the /64", login(s, f.owner.Email, ownerPassword, prefix+":ffff"))
			})
		})
	}
}

// With Redis, replicas share the counters: a stranger's failures on one
// slow the stranger down on the other too, and never the owner.
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
	a, b := auth.New(f.st, limitedOptions(opts)), auth.New(f.st, limitedOptions(opts))
	u := f.addUser(t, randomEmail(), "right")
	stranger := randomIP()
	for range 10 {
		a.Login(ctx, u.Email, "wrong", stranger)
	}
	_, _, _, err = b.Login(ctx, u.Email, "right", stranger)
	wantCode(t, "the stranger's login on the other replica", err, keybridge.ERateLimited)
	if _, _, _, err := b.Login(ctx, u.Email, "right", randomIP()); err != nil {
		t.Errorf("the owner's login from their IP on the other replica: %v, want success", err)
	}
	// The account's ceiling is shared too: guesses from many IPs on one
	// replica reach it for both.
	v := f.addUser(t, randomEmail(), "right")
	for range 6 {
		a.Login(ctx, v.Email, "wrong", randomIP())
	}
	_, _, _, err = b.Login(ctx, v.Email, "right", randomIP())
	wantCode(t, "login on the other replica past the account's ceiling", err, keybridge.ERateLimited)
}
