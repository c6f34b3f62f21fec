// Package web is Keybridge's embedded web UI: plain HTML and a little
// JavaScript, no build step. It serves the landing page (sign in, who am
// I), the first-run setup page (/setup?token=...) and the invitation page
// (/invite?token=...); everything they do goes through the JSON API.
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
	page := func(name string) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			secure(w)
			// Pages may carry a token in their URL: never cache them.
			w.Header().Set("Cache-Control", "no-store")
			http.ServeFileFS(w, r, sub, name)
		})
	}
	mux := http.NewServeMux()
	mux.Handle("GET /{$}", page("index.html"))
	mux.Handle("GET /setup", page("setup.html"))
	mux.Handle("GET /invite", page("invite.html"))
	mux.Handle("GET /ui/", http.StripPrefix("/ui/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		secure(w)
		files.ServeHTTP(w, r)
	})))
	return mux
}

// secure sets the headers every UI response carries. No-referrer matters:
// the setup and invitation pages hold a one-time token in their URL, which
// must not travel in a Referer header. The policy allows only this
// server's own scripts, styles and API.
func secure(w http.ResponseWriter) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
}
