package httpapi

import (
	"net/http"
	"strings"
)

// router is what routes registers on: the server's ServeMux, or the
// recorder behind Routes.
type router interface {
	Handle(pattern string, handler http.Handler)
}

// Routes returns the pattern ("METHOD /path") of every operation of the
// management API, in the order routes registers them. It is the one list
// the tests check the OpenAPI document and the authorization matrix
// against, so a new route cannot be missing from either. Patterns without
// a method (the /api/ catch-all) and the web UI's pages are not operations
// and are left out.
func Routes() []string {
	var rec patternRecorder
	(&Server{}).routes(&rec)
	return rec
}

// patternRecorder is a router that keeps the patterns with a method.
type patternRecorder []string

func (p *patternRecorder) Handle(pattern string, _ http.Handler) {
	if strings.Contains(pattern, " ") {
		*p = append(*p, pattern)
	}
}

// routes is the whole HTTP surface of Keybridge. Every route here is in the
// OpenAPI document and the reverse, and has rows in the authorization
// matrix; tests keep them in step through Routes.
func (s *Server) routes(mux router) {
	// Operations.
	mux.Handle("GET /healthz", s.h(s.healthz))
	mux.Handle("GET /readyz", s.h(s.readyz))
	mux.Handle("GET /metrics", s.h(s.metrics))
	mux.Handle("GET /api/v1/openapi.json", s.h(s.openapi))

	// Setup and sessions (SPEC §2).
	mux.Handle("POST /api/v1/setup", s.h(s.setup))
	mux.Handle("POST /api/v1/auth/login", s.h(s.login))
	mux.Handle("POST /api/v1/auth/logout", s.h(s.logout))
	mux.Handle("POST /api/v1/auth/accept-invite", s.h(s.acceptInvite))
	mux.Handle("GET /api/v1/users/me", s.authed(s.me))
	mux.Handle("PATCH /api/v1/users/me", s.authed(s.updateMe))
	mux.Handle("POST /api/v1/users/me/password", s.authed(s.changePassword))

	// Orgs and members (SPEC §2).
	mux.Handle("GET /api/v1/orgs", s.authed(s.listOrgs))
	mux.Handle("POST /api/v1/orgs", s.authed(s.createOrg))
	mux.Handle("GET /api/v1/orgs/{org}", s.authed(s.getOrg))
	mux.Handle("PATCH /api/v1/orgs/{org}", s.authed(s.updateOrg))
	mux.Handle("DELETE /api/v1/orgs/{org}", s.authed(s.deleteOrg))
	mux.Handle("GET /api/v1/orgs/{org}/members", s.authed(s.listMembers))
	mux.Handle("POST /api/v1/orgs/{org}/members", s.authed(s.createMember))
	mux.Handle("PATCH /api/v1/orgs/{org}/members/{userID}", s.authed(s.updateMember))
	mux.Handle("DELETE /api/v1/orgs/{org}/members/{userID}", s.authed(s.deleteMember))

	// Platform API keys (SPEC §3).
	mux.Handle("POST /api/v1/api-keys", s.authed(s.createAPIKey))
	mux.Handle("GET /api/v1/api-keys", s.authed(s.listAPIKeys))
	mux.Handle("GET /api/v1/api-keys/{id}", s.authed(s.getAPIKey))
	mux.Handle("PATCH /api/v1/api-keys/{id}", s.authed(s.updateAPIKey))
	mux.Handle("DELETE /api/v1/api-keys/{id}", s.authed(s.revokeAPIKey))
	mux.Handle("POST /api/v1/api-keys/{id}/suspend", s.authed(s.suspendAPIKey))
	mux.Handle("POST /api/v1/api-keys/{id}/reactivate", s.authed(s.reactivateAPIKey))
	mux.Handle("POST /api/v1/api-keys/{id}/revoke", s.authed(s.revokeAPIKey))
	mux.Handle("POST /api/v1/api-keys/{id}/rotate", s.authed(s.rotateAPIKey))
	mux.Handle("GET /api/v1/orgs/{org}/api-keys", s.authed(s.listOrgAPIKeys))
	mux.Handle("POST /api/v1/leaked-keys", s.h(s.leakedKeys))

	// Providers and their upstream keys (SPEC §4).
	mux.Handle("GET /api/v1/orgs/{org}/providers", s.authed(s.listProviders))
	mux.Handle("POST /api/v1/orgs/{org}/providers", s.authed(s.createProvider))
	mux.Handle("POST /api/v1/orgs/{org}/providers/test", s.authed(s.testProvider))
	mux.Handle("GET /api/v1/orgs/{org}/providers/{provider}", s.authed(s.getProvider))
	mux.Handle("PATCH /api/v1/orgs/{org}/providers/{provider}", s.authed(s.updateProvider))
	mux.Handle("DELETE /api/v1/orgs/{org}/providers/{provider}", s.authed(s.deleteProvider))
	mux.Handle("GET /api/v1/orgs/{org}/providers/{provider}/usage", s.authed(s.providerUsage))
	mux.Handle("GET /api/v1/orgs/{org}/providers/{provider}/keys", s.authed(s.listProviderKeys))
	mux.Handle("POST /api/v1/orgs/{org}/providers/{provider}/keys", s.authed(s.createProviderKey))
	mux.Handle("PATCH /api/v1/orgs/{org}/providers/{provider}/keys/{keyID}", s.authed(s.updateProviderKey))
	mux.Handle("DELETE /api/v1/orgs/{org}/providers/{provider}/keys/{keyID}", s.authed(s.deleteProviderKey))

	// Personal credentials (SPEC §6).
	mux.Handle("GET /api/v1/users/me/credentials", s.authed(s.listCredentials))
	mux.Handle("POST /api/v1/users/me/credentials", s.authed(s.createCredential))
	mux.Handle("PATCH /api/v1/users/me/credentials/{id}", s.authed(s.updateCredential))
	mux.Handle("DELETE /api/v1/users/me/credentials/{id}", s.authed(s.deleteCredential))

	// Projects and AI keys (SPEC §5).
	mux.Handle("GET /api/v1/orgs/{org}/projects", s.authed(s.listProjects))
	mux.Handle("POST /api/v1/orgs/{org}/projects", s.authed(s.createProject))
	mux.Handle("GET /api/v1/orgs/{org}/projects/{projectID}", s.authed(s.getProject))
	mux.Handle("PATCH /api/v1/orgs/{org}/projects/{projectID}", s.authed(s.updateProject))
	mux.Handle("DELETE /api/v1/orgs/{org}/projects/{projectID}", s.authed(s.deleteProject))
	mux.Handle("GET /api/v1/orgs/{org}/projects/{projectID}/ai-keys", s.authed(s.listAIKeys))
	mux.Handle("POST /api/v1/orgs/{org}/projects/{projectID}/ai-keys", s.authed(s.createAIKey))
	mux.Handle("PATCH /api/v1/orgs/{org}/projects/{projectID}/ai-keys/{id}", s.authed(s.updateAIKey))
	mux.Handle("DELETE /api/v1/orgs/{org}/projects/{projectID}/ai-keys/{id}", s.authed(s.deleteAIKey))

	// Audit log (SPEC §8) and usage (SPEC §7).
	mux.Handle("GET /api/v1/orgs/{org}/audit-events", s.authed(s.listAuditEvents))
	mux.Handle("GET /api/v1/orgs/{org}/audit-events/verify", s.authed(s.verifyAuditEvents))
	mux.Handle("GET /api/v1/orgs/{org}/usage", s.authed(s.usage))

	// Anything else under the API, and anywhere else, is a JSON 404, not
	// the mux's text page (withoutRedirects does the same for the mux's
	// redirects).
	mux.Handle("/api/", s.h(notFoundRoute))
	mux.Handle("/", s.h(notFoundRoute))

	// The web UI (SPEC §10), when configured. It is not part of the
	// management API's OpenAPI document. The gateway is mounted beside
	// this server, not behind it (cli's serve).
	if s.cfg.UI != nil {
		for _, pattern := range []string{"GET /{$}", "GET /setup", "GET /invite", "GET /ui/"} {
			mux.Handle(pattern, s.cfg.UI)
		}
	}
}
