package gateway

import (
	"encoding/json"
	"math/rand/v2"
	"strconv"
	"testing"
	"time"
)

func TestAppendJSONStringMatchesEncodingJSON(t *testing.T) {
	for _, s := range []string{"", "plain", `q"uote\back`, "new\nline\r\ttab", "\x00\x1f\x7f", "<a&b>",
		"ünïcödé ✓", "bad \xff utf8 \xc3", "line\u2028sep\u2029", "/v1/models/ft:gpt-4o%2Fx"} {
		want, _ := json.Marshal(s)
		if got := appendJSONString(nil, s); string(got) != string(want) {
			t.Errorf("appendJSONString(%q) = %s, want %s", s, got, want)
		}
	}
}

// The log line's milliseconds are what strconv writes for the float
// they stand for, on the edges of each digit and at random.
func TestLogMillisecondsMatchFloat(t *testing.T) {
	us := []int64{0, 1, 9, 10, 100, 999, 1000, 1001, 1010, 1100, 12345, 99999, 100000, 999999999, 1e9, 1e9 + 1, 1e12, -1, -1500}
	for range 100000 {
		us = append(us, rand.Int64N(2e9))
	}
	for _, v := range us {
		d := time.Duration(v) * time.Microsecond
		var l logLineBuilder
		l.ms("d", d)
		want := `,"d":` + strconv.FormatFloat(float64(v)/1000, 'g', -1, 64)
		if string(l.b) != want {
			t.Fatalf("%d µs: got %s, want %s", v, l.b, want)
		}
	}
}

// Server-Timing's milliseconds are what strconv writes with three
// decimals, at every carry and at random.
func TestServerTimingMillisecondsMatchFloat(t *testing.T) {
	us := []int64{0, 1, 9, 10, 99, 100, 999, 1000, 1001, 1010, 1100, 12345, 999999999, 1e12, -1, -999, -1000, -1500}
	for range 100000 {
		us = append(us, rand.Int64N(2e9)-1e9)
	}
	for _, v := range us {
		d := time.Duration(v) * time.Microsecond
		want := strconv.FormatFloat(float64(v)/1000, 'f', 3, 64)
		if got := appendMillis(nil, d); string(got) != want {
			t.Fatalf("%d µs: got %s, want %s", v, got, want)
		}
	}
}

// The log line's strings: a request id, a path, a model, a key prefix.
func BenchmarkAppendJSONString(b *testing.B) {
	strs := []string{"kb-4f3a9c2e1b7d-000000000042", "/v1/chat/completions", "gpt-4o-mini-2024-07-18", "kb_3xQ9abcd", "127.0.0.1:54321"}
	buf := make([]byte, 0, 256)
	for b.Loop() {
		buf = buf[:0]
		for _, s := range strs {
			buf = appendJSONString(buf, s)
		}
	}
}
