package httpapi

import (
	"net/http"
)

// TODO: stub handlers, replaced by the real ones.

func (s *Server) openapi(w http.ResponseWriter, r *http.Request) error { return errNotBuilt }
