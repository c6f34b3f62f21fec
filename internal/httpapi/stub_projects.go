package httpapi

import (
	"net/http"
)

// TODO: stub handlers, replaced by the real ones.

func (s *Server) listProjects(w http.ResponseWriter, r *http.Request) error  { return errNotBuilt }
func (s *Server) createProject(w http.ResponseWriter, r *http.Request) error { return errNotBuilt }
func (s *Server) getProject(w http.ResponseWriter, r *http.Request) error    { return errNotBuilt }
func (s *Server) updateProject(w http.ResponseWriter, r *http.Request) error { return errNotBuilt }
func (s *Server) deleteProject(w http.ResponseWriter, r *http.Request) error { return errNotBuilt }
func (s *Server) listAIKeys(w http.ResponseWriter, r *http.Request) error    { return errNotBuilt }
func (s *Server) createAIKey(w http.ResponseWriter, r *http.Request) error   { return errNotBuilt }
func (s *Server) updateAIKey(w http.ResponseWriter, r *http.Request) error   { return errNotBuilt }
func (s *Server) deleteAIKey(w http.ResponseWriter, r *http.Request) error   { return errNotBuilt }
