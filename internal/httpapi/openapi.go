package httpapi

import (
	"embed"
	"encoding/json"
	"fmt"
	"io/fs"
	"net/http"
	"path"
	"reflect"
	"sort"
	"strings"
	"sync"
)

// The OpenAPI document is written by hand in fragments, one per area of
// the API (openapi/*.json), so each area's owner edits only its own file.
// Each fragment is an object such as {"paths": {...}, "components":
// {"schemas": {...}}}; 00_base.json holds the document's head. They are
// merged in name order; two fragments defining the same operation or
// schema is an error, not a silent overwrite.
//
//go:embed openapi/*.json
var openapiFragments embed.FS

// OpenAPI returns the merged OpenAPI 3.1 document of the whole API.
func OpenAPI() ([]byte, error) { return openapiDoc() }

var openapiDoc = sync.OnceValues(func() ([]byte, error) {
	doc, err := mergeOpenAPI(openapiFragments, "openapi")
	if err != nil {
		return nil, err
	}
	return json.MarshalIndent(doc, "", "  ")
})

// mergeOpenAPI merges every *.json fragment in dir of fsys, in name order.
func mergeOpenAPI(fsys fs.FS, dir string) (map[string]any, error) {
	names, err := fs.Glob(fsys, path.Join(dir, "*.json"))
	if err != nil {
		return nil, err
	}
	sort.Strings(names)
	doc := map[string]any{}
	for _, name := range names {
		b, err := fs.ReadFile(fsys, name)
		if err != nil {
			return nil, err
		}
		var frag map[string]any
		if err := json.Unmarshal(b, &frag); err != nil {
			return nil, fmt.Errorf("openapi fragment %s: %w", name, err)
		}
		if err := mergeInto(doc, frag, name, ""); err != nil {
			return nil, err
		}
	}
	return doc, nil
}

// mergeInto adds src to dst: objects merge key by key; anything else may
// be defined once, or again only with the same value.
func mergeInto(dst, src map[string]any, file, at string) error {
	for k, v := range src {
		where := at + "/" + k
		old, ok := dst[k]
		if !ok {
			dst[k] = v
			continue
		}
		om, ok1 := old.(map[string]any)
		nm, ok2 := v.(map[string]any)
		if !ok1 || !ok2 {
			if reflect.DeepEqual(old, v) {
				// The same value twice (a shared path parameter) is fine.
				continue
			}
			return fmt.Errorf("openapi fragment %s: %s is already defined by an earlier fragment", file, where)
		}
		if err := mergeInto(om, nm, file, where); err != nil {
			return err
		}
	}
	return nil
}

func (s *Server) openapi(w http.ResponseWriter, r *http.Request) error {
	doc, err := openapiDoc()
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-cache")
	_, err = w.Write(doc)
	return err
}

// bodylessRoutes is the set of route patterns ("POST /api/v1/api-keys/{id}/suspend")
// whose operation the document gives no requestBody: the one list, kept
// true by the tests, of the operations that take no body.
var bodylessRoutes = sync.OnceValue(func() map[string]bool {
	out := map[string]bool{}
	raw, err := openapiDoc()
	if err != nil {
		return out // openapiDoc's error surfaces on GET /api/v1/openapi.json and in the tests
	}
	var doc struct {
		Paths map[string]map[string]json.RawMessage `json:"paths"`
	}
	if json.Unmarshal(raw, &doc) != nil {
		return out
	}
	for p, ops := range doc.Paths {
		for method, rawOp := range ops {
			var op struct {
				RequestBody json.RawMessage `json:"requestBody"`
			}
			if method == "parameters" || json.Unmarshal(rawOp, &op) != nil {
				continue
			}
			if op.RequestBody == nil {
				out[strings.ToUpper(method)+" "+p] = true
			}
		}
	}
	return out
})
