package httpapi

import (
	"context"
	"crypto/subtle"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"reflect"
	"runtime/debug"
	"time"

	"github.com/google/uuid"
	"github.com/keybridge/keybridge/internal/keybridge"
)

// withRequestInfo gives every request an id (echoed as X-Request-Id) and
// puts what the audit log records of it in the context.
func (s *Server) withRequestInfo(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := uuid.Must(uuid.NewV7()).String()
		w.Header().Set("X-Request-Id", id)
		ip, _, err := net.SplitHostPort(r.RemoteAddr)
		if err != nil {
			ip = r.RemoteAddr
		}
		ctx := keybridge.NewContextWithRequestInfo(r.Context(), keybridge.RequestInfo{
			IP: ip, UserAgent: r.UserAgent(), RequestID: id,
		})
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}

// withRecover turns a panic into a 500. The panic's value is not logged:
// it could hold anything, secrets included; the stack says where it was.
func (s *Server) withRecover(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				s.log.ErrorContext(r.Context(), "panic serving request", "method", r.Method, "path", r.URL.Path,
					"request_id", keybridge.RequestInfoFromContext(r.Context()).RequestID, "stack", string(debug.Stack()))
				WriteError(w, r, s.log, keybridge.Errorf(keybridge.EInternal, "internal error"))
			}
		}()
		next.ServeHTTP(w, r)
	})
}

// authed requires a caller: a platform key or a session. A session sending
// an unsafe method must also send its CSRF token as X-CSRF-Token.
func (s *Server) authed(fn handlerFunc) http.Handler {
	return s.h(func(w http.ResponseWriter, r *http.Request) error {
		p, err := s.auth.Authenticate(r)
		if err != nil {
			return err
		}
		if p.SessionCSRF != "" && !safeMethod(r.Method) && !csrfOK(r, p) {
			return keybridge.Errorf(keybridge.EForbidden, "missing or wrong X-CSRF-Token header")
		}
		return fn(w, r.WithContext(keybridge.NewContextWithPrincipal(r.Context(), p)))
	})
}

// csrfOK reports whether r sends the CSRF token of p's session.
func csrfOK(r *http.Request, p *keybridge.Principal) bool {
	return subtle.ConstantTimeCompare([]byte(r.Header.Get("X-CSRF-Token")), []byte(p.SessionCSRF)) == 1
}

func safeMethod(m string) bool {
	return m == http.MethodGet || m == http.MethodHead || m == http.MethodOptions
}

// principal returns the caller authed put in the context.
func principal(r *http.Request) *keybridge.Principal {
	return keybridge.PrincipalFromContext(r.Context())
}

// org resolves the {org} path value (id or slug) and checks the caller may
// use perm there: 404 when it cannot see the org, 403 when it can but
// lacks perm. It returns the org and the caller's role in it.
func (s *Server) org(r *http.Request, perm keybridge.Permission) (*keybridge.Org, keybridge.Role, error) {
	return s.orgByRef(r.Context(), r.PathValue("org"), perm)
}

// orgByRef is org for an org named anywhere (path or body) by id or slug.
func (s *Server) orgByRef(ctx context.Context, ref string, perm keybridge.Permission) (*keybridge.Org, keybridge.Role, error) {
	org, err := s.store.Org(ctx, ref)
	if err == nil {
		var role keybridge.Role
		if role, err = s.auth.Authorize(ctx, keybridge.PrincipalFromContext(ctx), org, perm); err == nil {
			return org, role, nil
		}
	}
	// A missing org and one the caller may not see answer alike, word for
	// word: a different message would tell that the org exists.
	if keybridge.IsCode(err, keybridge.ENotFound) {
		return nil, "", keybridge.Errorf(keybridge.ENotFound, "org %q not found", ref)
	}
	return nil, "", err
}

// orgChild resolves {org} and, through load, an object inside it for a
// caller who needs perm on it. read is what every member holds on such
// objects: without it, or when load finds nothing (404), the caller learns
// nothing more; only a caller who can see the object and lacks perm gets
// 403. It returns the caller's role in the org too.
func (s *Server) orgChild(r *http.Request, read, perm keybridge.Permission, load func(org *keybridge.Org) error) (*keybridge.Org, keybridge.Role, error) {
	org, role, err := s.org(r, read)
	if err != nil {
		return nil, "", err
	}
	if err := load(org); err != nil {
		return nil, "", err
	}
	if perm != read {
		if role, err = s.auth.Authorize(r.Context(), principal(r), org, perm); err != nil {
			return nil, "", err
		}
	}
	return org, role, nil
}

// DefaultBodyTimeout is how long the management API waits for a request's
// body when Config.BodyTimeout is zero: 1 MiB, the largest body it takes,
// arrives in it at 35 kB/s.
const DefaultBodyTimeout = 30 * time.Second

// withBodyDeadline bounds how long a request's body may take to arrive,
// counted from when its headers were read: a client trickling its body
// cannot hold a connection and a handler for longer. The deadline is set
// on the connection (the HTTP/2 stream) through http.ResponseController,
// so a body read past it fails; decode answers that 408 request_timeout
// in the error shape, and net/http closes the connection after the answer.
// Once the body has been read to its end the deadline is lifted, so a
// slow handler is not cut by it. Requests without a body set nothing: on
// HTTP/1.1 net/http is already reading the connection to notice the
// client leaving, and a deadline there would cancel the request.
func (s *Server) withBodyDeadline(next http.Handler) http.Handler {
	timeout := s.cfg.BodyTimeout
	if timeout <= 0 {
		timeout = DefaultBodyTimeout
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body != nil && r.Body != http.NoBody {
			rc := http.NewResponseController(w)
			if rc.SetReadDeadline(time.Now().Add(timeout)) == nil {
				r.Body = &deadlineBody{ReadCloser: r.Body, rc: rc, timeout: timeout}
			}
		}
		next.ServeHTTP(w, r)
	})
}

// deadlineBody is a request body read under withBodyDeadline's deadline.
type deadlineBody struct {
	io.ReadCloser
	rc      *http.ResponseController
	timeout time.Duration
	done    bool
}

func (b *deadlineBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	switch {
	case err == nil || b.done:
	case errors.Is(err, io.EOF):
		b.done = true
		b.rc.SetReadDeadline(time.Time{})
	case errors.Is(err, os.ErrDeadlineExceeded) || isTimeout(err):
		b.done = true
		return n, keybridge.Errorf(keybridge.ETimeout, "the request body did not arrive within %s", b.timeout)
	}
	return n, err
}

func isTimeout(err error) bool {
	var t interface{ Timeout() bool }
	return errors.As(err, &t) && t.Timeout()
}

// redirectType is the type of the handler ServeMux answers with when it
// would redirect: a path that is not clean (//, /./, /../) or one that
// lacks the trailing slash of a pattern (/api for /api/).
var redirectType = reflect.TypeOf(http.RedirectHandler("/", http.StatusTemporaryRedirect))

// withoutRedirects answers, in place of the mux's redirects (a 307 with an
// HTML body), a 404 in the error shape: the API's paths are written one
// way, and a client that sends another spelling of one has a bug to see,
// not a redirect to follow with its credentials.
func (s *Server) withoutRedirects(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if h, _ := mux.Handler(r); reflect.TypeOf(h) == redirectType {
			WriteError(w, r, s.log, keybridge.Errorf(keybridge.ENotFound,
				"no route for %s %s: paths are written without //, /./, /../ or a missing trailing slash", r.Method, r.URL.EscapedPath()))
			return
		}
		mux.ServeHTTP(w, r)
	})
}
