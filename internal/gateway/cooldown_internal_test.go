package gateway

import (
	"net/http"
	"testing"
	"time"
)

// The rests of SPEC §7.4, on a clock the test moves: 429s in a row without
// a Retry-After rest 5 s doubling up to 5 minutes; a success ends the
// streak; 401 and 403 rest 5 minutes.
func TestCooldownDurations(t *testing.T) {
	c := newCooldowns()
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	fail := func(status int, h http.Header) time.Duration {
		t.Helper()
		d, rested := c.fail("k", status, h, now)
		if !rested {
			t.Fatalf("fail(%d) did not rest the key", status)
		}
		if cd, resting := c.check("k", now); !resting || !cd.until.Equal(now.Add(d)) {
			t.Fatalf("after fail(%d) = %v: check = %+v, %v, want resting until now+%v", status, d, cd, resting, d)
		}
		if _, resting := c.check("k", now.Add(d)); resting {
			t.Fatalf("after fail(%d) = %v: still resting once it is over", status, d)
		}
		now = now.Add(d)
		return d
	}
	want := []time.Duration{5, 10, 20, 40, 80, 160, 300, 300, 300}
	for i, w := range want {
		if d := fail(429, nil); d != w*time.Second {
			t.Errorf("429 number %d in a row rests %v, want %v", i+1, d, w*time.Second)
		}
	}
	c.succeed("k")
	if d := fail(429, nil); d != 5*time.Second {
		t.Errorf("429 after a success rests %v, want 5s: the streak ended", d)
	}
	for _, st := range []int{401, 403} {
		if d := fail(st, nil); d != 5*time.Minute {
			t.Errorf("%d rests %v, want 5m", st, d)
		}
	}
	if d, rested := c.fail("k", 500, nil, now); rested || d != 0 {
		t.Errorf("500: fail = %v, %v, want no rest", d, rested)
	}
}

// A Retry-After (or retry-after-ms) sets the rest, capped at 5 minutes,
// however large or odd the number the provider sends.
func TestCooldownRetryAfter(t *testing.T) {
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, tc := range []struct {
		name, value string
		want        time.Duration
	}{
		{"Retry-After", "30", 30 * time.Second},
		{"Retry-After", "0", 0},
		{"Retry-After", "1.5", 1500 * time.Millisecond},
		{"Retry-After", now.Add(42 * time.Second).Format(http.TimeFormat), 42 * time.Second},
		{"Retry-After", "3600", 5 * time.Minute},
		{"Retry-After", "99999999999999999999", 5 * time.Minute},
		{"Retry-After", "1e300", 5 * time.Minute},
		{"Retry-After", "Inf", 5 * time.Minute},
		{"Retry-After-Ms", "2500", 2500 * time.Millisecond},
		{"Retry-After-Ms", "1e30", 5 * time.Minute},
		{"Retry-After-Ms", "+Inf", 5 * time.Minute},
		// Not a number of the header's: the exponential rest.
		{"Retry-After", "NaN", 5 * time.Second},
		{"Retry-After", "-3", 5 * time.Second},
		{"Retry-After", "soon", 5 * time.Second},
	} {
		c := newCooldowns()
		d, rested := c.fail("k", 429, http.Header{tc.name: {tc.value}}, now)
		if !rested || d != tc.want {
			t.Errorf("429 with %s: %s rests %v (%v), want %v", tc.name, tc.value, d, rested, tc.want)
		}
		if _, resting := c.check("k", now.Add(tc.want-time.Nanosecond)); tc.want > 0 && !resting {
			t.Errorf("429 with %s: %s: not resting before %v", tc.name, tc.value, tc.want)
		}
		// A personal credential is not rested, but its answer's
		// Retry-After is the same.
		if d, _ := c.fail("", 429, http.Header{tc.name: {tc.value}}, now); d != tc.want {
			t.Errorf("429 of a credential with no id, %s: %s: wait %v, want %v", tc.name, tc.value, d, tc.want)
		}
	}
}
