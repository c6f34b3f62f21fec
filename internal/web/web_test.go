package web_test

import (
	"io/fs"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keybridge/keybridge/internal/web"
)

func TestPages(t *testing.T) {
	h := web.Handler()
	for _, c := range []struct {
		path, contentType, contains string
		status                      int
	}{
		{"/", "text/html", `src="/ui/js/app.js"`, 200},
		{"/setup?token=abc", "text/html", `id="app"`, 200},
		{"/invite?token=abc", "text/html", `id="app"`, 200},
		{"/ui/js/app.js", "text/javascript", "hashchange", 200},
		{"/ui/js/pages/auth.js", "text/javascript", "/api/v1/setup", 200},
		{"/ui/style.css", "text/css", "body", 200},
		{"/ui/missing.js", "", "", 404},
	} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", c.path, nil))
		if rec.Code != c.status {
			t.Errorf("GET %s = %d, want %d", c.path, rec.Code, c.status)
			continue
		}
		if c.status != 200 {
			continue
		}
		if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, c.contentType) {
			t.Errorf("GET %s: Content-Type = %q, want %s", c.path, ct, c.contentType)
		}
		if !strings.Contains(rec.Body.String(), c.contains) {
			t.Errorf("GET %s: body lacks %q", c.path, c.contains)
		}
		// Tokens ride in page URLs: they must not leak by Referer or cache,
		// and no script but ours may run.
		for header, want := range map[string]string{
			"Referrer-Policy":        "no-referrer",
			"X-Content-Type-Options": "nosniff",
			"X-Frame-Options":        "DENY",
		} {
			if got := rec.Header().Get(header); got != want {
				t.Errorf("GET %s: %s = %q, want %q", c.path, header, got, want)
			}
		}
		if csp := rec.Header().Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") || strings.Contains(csp, "unsafe-inline") {
			t.Errorf("GET %s: Content-Security-Policy = %q", c.path, csp)
		}
		if strings.HasSuffix(c.contentType, "html") && rec.Header().Get("Cache-Control") != "no-store" {
			t.Errorf("GET %s: Cache-Control = %q, want no-store", c.path, rec.Header().Get("Cache-Control"))
		}
		if strings.Contains(rec.Body.String(), "<script>") {
			t.Errorf("GET %s: inline script, which the policy blocks", c.path)
		}
	}
}

// TestNoHTMLInjection reads every file of the UI for the ways a value
// could reach the page as HTML or code, or a secret could outlive its
// page: none may appear. Values go in as text (dom.js's h and
// textContent); nothing is kept in localStorage.
func TestNoHTMLInjection(t *testing.T) {
	banned := []string{"innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function", "setAttribute(\"style\"", "style=", "localStorage", "javascript:", "<script>", "onclick=", "onload="}
	files := 0
	err := fs.WalkDir(os.DirFS("static"), ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		files++
		b, err := os.ReadFile(filepath.Join("static", path))
		if err != nil {
			return err
		}
		for _, bad := range banned {
			if strings.Contains(string(b), bad) {
				t.Errorf("%s holds %q", path, bad)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if files < 10 {
		t.Errorf("read %d files of the UI, want every page's", files)
	}
}
