package httpapi

import (
	"net/http"
)

// TODO: stub handlers, replaced by the real ones.

func (s *Server) listCredentials(w http.ResponseWriter, r *http.Request) error  { return errNotBuilt }
func (s *Server) createCredential(w http.ResponseWriter, r *http.Request) error { return errNotBuilt }
func (s *Server) updateCredential(w http.ResponseWriter, r *http.Request) error { return errNotBuilt }
func (s *Server) deleteCredential(w http.ResponseWriter, r *http.Request) error { return errNotBuilt }
