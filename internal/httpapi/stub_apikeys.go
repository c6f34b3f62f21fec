package httpapi

import (
	"net/http"
)

// TODO: stub handlers, replaced by the real ones.

func (s *Server) createAPIKey(w http.ResponseWriter, r *http.Request) error     { return errNotBuilt }
func (s *Server) listAPIKeys(w http.ResponseWriter, r *http.Request) error      { return errNotBuilt }
func (s *Server) getAPIKey(w http.ResponseWriter, r *http.Request) error        { return errNotBuilt }
func (s *Server) updateAPIKey(w http.ResponseWriter, r *http.Request) error     { return errNotBuilt }
func (s *Server) revokeAPIKey(w http.ResponseWriter, r *http.Request) error     { return errNotBuilt }
func (s *Server) suspendAPIKey(w http.ResponseWriter, r *http.Request) error    { return errNotBuilt }
func (s *Server) reactivateAPIKey(w http.ResponseWriter, r *http.Request) error { return errNotBuilt }
func (s *Server) rotateAPIKey(w http.ResponseWriter, r *http.Request) error     { return errNotBuilt }
func (s *Server) listOrgAPIKeys(w http.ResponseWriter, r *http.Request) error   { return errNotBuilt }
func (s *Server) leakedKeys(w http.ResponseWriter, r *http.Request) error       { return errNotBuilt }
