package httpapi

import (
	"net/http"
)

// TODO: stub handlers, replaced by the real ones.

func (s *Server) listAuditEvents(w http.ResponseWriter, r *http.Request) error   { return errNotBuilt }
func (s *Server) verifyAuditEvents(w http.ResponseWriter, r *http.Request) error { return errNotBuilt }
func (s *Server) usage(w http.ResponseWriter, r *http.Request) error             { return errNotBuilt }
