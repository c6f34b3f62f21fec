package httpapi

import (
	"net/http"
)

// TODO: stub handlers, replaced by the real ones.

func (s *Server) listOrgs(w http.ResponseWriter, r *http.Request) error     { return errNotBuilt }
func (s *Server) createOrg(w http.ResponseWriter, r *http.Request) error    { return errNotBuilt }
func (s *Server) getOrg(w http.ResponseWriter, r *http.Request) error       { return errNotBuilt }
func (s *Server) updateOrg(w http.ResponseWriter, r *http.Request) error    { return errNotBuilt }
func (s *Server) deleteOrg(w http.ResponseWriter, r *http.Request) error    { return errNotBuilt }
func (s *Server) listMembers(w http.ResponseWriter, r *http.Request) error  { return errNotBuilt }
func (s *Server) createMember(w http.ResponseWriter, r *http.Request) error { return errNotBuilt }
func (s *Server) updateMember(w http.ResponseWriter, r *http.Request) error { return errNotBuilt }
func (s *Server) deleteMember(w http.ResponseWriter, r *http.Request) error { return errNotBuilt }
