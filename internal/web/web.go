// Package web is Keybridge's embedded web UI: plain HTML, CSS and
// JavaScript modules, no build step (docs/ui.md). One page, index.html,
// is served at /, /setup and /invite; the script routes by the URL's hash
// (#/providers, #/api-keys, ...) and does everything through the JSON
// API, with the session cookie and X-CSRF-Token.
package web

import (
	"embed"
	"io/fs"
	"net/http"
)

//go:embed static
var static embed.FS

// Handler returns the UI's handler for GET /, /setup, /invite and /ui/
// (its scripts and styles).
func Handler() http.Handler {
	sub, err := fs.Sub(static, "static")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	files := http.FileServerFS(sub)
	page := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		secure(w)
		// /setup and /invite carry a one-time token in their URL, and
		// every page may show a one-time secret: never cache them.
		w.Header().Set("Cache-Control", "no-store")
		http.ServeFileFS(w, r, sub, "index.html")
	})
	mux := http.NewServeMux()
	mux.Handle("GET /{$}", page)
	mux.Handle("GET /setup", page)
	mux.Handle("GET /invite", page)
	mux.Handle("GET /ui/", http.StripPrefix("/ui/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		secure(w)
		// Scripts change with the binary: revalidate rather than run an
		// old one against a new API.
		w.Header().Set("Cache-Control", "no-cache")
		files.ServeHTTP(w, r)
	})))
	return mux
}

// secure sets the headers every UI response carries. No-referrer matters:
// the setup and invitation pages hold a one-time token in their URL, which
// must not travel in a Referer header. The policy allows only this
// server's own scripts, styles and API: no inline script or style.
func secure(w http.ResponseWriter) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Cross-Origin-Opener-Policy", "same-origin")
}
