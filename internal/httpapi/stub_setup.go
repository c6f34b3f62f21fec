package httpapi

import (
	"net/http"

	"github.com/keybridge/keybridge/internal/keybridge"
)

// TODO: stub handlers, replaced by the real ones.

func (s *Server) setup(w http.ResponseWriter, r *http.Request) error        { return errNotBuilt }
func (s *Server) login(w http.ResponseWriter, r *http.Request) error        { return errNotBuilt }
func (s *Server) logout(w http.ResponseWriter, r *http.Request) error       { return errNotBuilt }
func (s *Server) acceptInvite(w http.ResponseWriter, r *http.Request) error { return errNotBuilt }
func (s *Server) me(w http.ResponseWriter, r *http.Request) error           { return errNotBuilt }

var errNotBuilt = keybridge.Errorf(keybridge.EUnavailable, "not built yet")
