package httpapi

import (
	"net/http"
)

// TODO: stub handlers, replaced by the real ones.

func (s *Server) listProviders(w http.ResponseWriter, r *http.Request) error     { return errNotBuilt }
func (s *Server) createProvider(w http.ResponseWriter, r *http.Request) error    { return errNotBuilt }
func (s *Server) testProvider(w http.ResponseWriter, r *http.Request) error      { return errNotBuilt }
func (s *Server) getProvider(w http.ResponseWriter, r *http.Request) error       { return errNotBuilt }
func (s *Server) updateProvider(w http.ResponseWriter, r *http.Request) error    { return errNotBuilt }
func (s *Server) deleteProvider(w http.ResponseWriter, r *http.Request) error    { return errNotBuilt }
func (s *Server) providerUsage(w http.ResponseWriter, r *http.Request) error     { return errNotBuilt }
func (s *Server) listProviderKeys(w http.ResponseWriter, r *http.Request) error  { return errNotBuilt }
func (s *Server) createProviderKey(w http.ResponseWriter, r *http.Request) error { return errNotBuilt }
func (s *Server) updateProviderKey(w http.ResponseWriter, r *http.Request) error { return errNotBuilt }
func (s *Server) deleteProviderKey(w http.ResponseWriter, r *http.Request) error { return errNotBuilt }
