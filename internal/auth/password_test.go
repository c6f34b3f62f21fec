package auth_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"regexp"
	"strings"
	"testing"

	"github.com/keybridge/keybridge/internal/auth"
)

func TestProductionPasswordParams(t *testing.T) {
	want := auth.Argon2Params{Memory: 64 * 1024, Time: 1, Threads: 2, SaltLen: 16, KeyLen: 32}
	if productionParams != want {
		t.Errorf("PasswordParams = %+v, want %+v (m=64 MiB, t=1, p=2)", productionParams, want)
	}
}

var phc = regexp.MustCompile(`^\$argon2id\$v=19\$m=64,t=1,p=1\$[A-Za-z0-9+/]{22}\$[A-Za-z0-9+/]{43}$`)

func TestHashPassword(t *testing.T) {
	h1, err := auth.HashPassword("hunter2")
	if err != nil {
		t.Fatalf("HashPassword: %v", err)
	}
	h2, err := auth.HashPassword("hunter2")
	if err != nil {
		t.Fatalf("HashPassword: %v", err)
	}
	if !phc.MatchString(h1) {
		t.Errorf("HashPassword = %q, want a PHC string like %s", h1, phc)
	}
	if h1 == h2 {
		t.Error("two hashes of one password are equal; want a fresh salt each time")
	}
	if strings.Contains(h1, "hunter2") {
		t.Error("hash contains the password")
	}
}

func TestCheckPassword(t *testing.T) {
	good, err := auth.HashPassword("s3cret pass")
	if err != nil {
		t.Fatalf("HashPassword: %v", err)
	}
	// A hash made under other parameters still checks: they are read back
	// from the hash, so raising PasswordParams later locks no one out.
	saved := auth.PasswordParams
	auth.PasswordParams = auth.Argon2Params{Memory: 128, Time: 2, Threads: 2, SaltLen: 24, KeyLen: 48}
	older, err := auth.HashPassword("s3cret pass")
	auth.PasswordParams = saved
	if err != nil {
		t.Fatalf("HashPassword: %v", err)
	}
	parts := strings.Split(good, "$")
	tests := []struct {
		name, hash, password string
		want                 bool
	}{
		{"right", good, "s3cret pass", true},
		{"other parameters", older, "s3cret pass", true},
		{"wrong", good, "s3cret pasS", false},
		{"empty password", good, "", false},
		{"prefix of the password", good, "s3cret", false},
		{"empty hash", "", "s3cret pass", false},
		{"not a PHC string", "s3cret pass", "s3cret pass", false},
		{"argon2i", strings.Replace(good, "argon2id", "argon2i", 1), "s3cret pass", false},
		{"other version", strings.Replace(good, "v=19", "v=16", 1), "s3cret pass", false},
		{"huge memory", strings.Replace(good, "m=64,", "m=4194304,", 1), "s3cret pass", false},
		{"zero time", strings.Replace(good, "t=1,", "t=0,", 1), "s3cret pass", false},
		{"zero lanes", strings.Replace(good, "p=1$", "p=0$", 1), "s3cret pass", false},
		{"reordered parameters", strings.Replace(good, "m=64,t=1,p=1", "t=1,m=64,p=1", 1), "s3cret pass", false},
		{"bad salt", strings.Join([]string{"", parts[1], parts[2], parts[3], "!!", parts[5]}, "$"), "s3cret pass", false},
		{"short hash", strings.Join([]string{"", parts[1], parts[2], parts[3], parts[4], parts[5][:8]}, "$"), "s3cret pass", false},
		{"extra field", good + "$x", "s3cret pass", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := auth.CheckPassword(tt.hash, tt.password); got != tt.want {
				t.Errorf("CheckPassword(%q, %q) = %v, want %v", tt.hash, tt.password, got, tt.want)
			}
		})
	}
}

// CheckPassword must compare in constant time. Time cannot be measured
// reliably in a test, so this reads the source: the comparison is
// subtle.ConstantTimeCompare and nothing in the file compares bytes any
// other way.
func TestCheckPasswordComparesInConstantTime(t *testing.T) {
	fset := token.NewFileSet()
	file, err := parser.ParseFile(fset, "password.go", nil, 0)
	if err != nil {
		t.Fatalf("parse password.go: %v", err)
	}
	var constantTime bool
	ast.Inspect(file, func(n ast.Node) bool {
		fn, ok := n.(*ast.FuncDecl)
		if !ok || fn.Name.Name != "CheckPassword" {
			return true
		}
		ast.Inspect(fn.Body, func(n ast.Node) bool {
			switch n := n.(type) {
			case *ast.SelectorExpr:
				if x, ok := n.X.(*ast.Ident); ok {
					switch x.Name + "." + n.Sel.Name {
					case "subtle.ConstantTimeCompare":
						constantTime = true
					case "bytes.Equal", "bytes.Compare", "slices.Equal", "reflect.DeepEqual":
						t.Errorf("%s: CheckPassword compares with %s.%s, which is not constant time", fset.Position(n.Pos()), x.Name, n.Sel.Name)
					}
				}
			case *ast.BinaryExpr:
				if n.Op == token.EQL || n.Op == token.NEQ {
					if call, ok := n.X.(*ast.CallExpr); ok {
						if sel, ok := call.Fun.(*ast.SelectorExpr); ok && sel.Sel.Name == "ConstantTimeCompare" {
							return true
						}
					}
					t.Errorf("%s: CheckPassword compares with %s", fset.Position(n.Pos()), n.Op)
				}
			}
			return true
		})
		return false
	})
	if !constantTime {
		t.Error("CheckPassword does not call subtle.ConstantTimeCompare")
	}
}

// What one password check costs with the parameters the package ships.
func BenchmarkCheckPasswordProduction(b *testing.B) {
	saved := auth.PasswordParams
	auth.PasswordParams = productionParams
	defer func() { auth.PasswordParams = saved }()
	h, err := auth.HashPassword("correct horse battery staple")
	if err != nil {
		b.Fatalf("HashPassword: %v", err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if !auth.CheckPassword(h, "correct horse battery staple") {
			b.Fatal("CheckPassword = false, want true")
		}
	}
}
