package cli_test

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/keybridge/keybridge/internal/cli"
)

// docFlag is one flag as docs/configuration.md or a command's -h tells it.
type docFlag struct {
	variable, def, usage, typ string
}

var codeSpan = regexp.MustCompile("`([^`]*)`")

// firstCode returns the first code span of a table cell, "" for a cell
// that says "empty" or "—".
func firstCode(cell string) string {
	cell = strings.TrimSpace(cell)
	if strings.HasPrefix(cell, "empty") || cell == "—" {
		return ""
	}
	if m := codeSpan.FindStringSubmatch(cell); m != nil {
		return m[1]
	}
	return cell
}

// configurationDoc reads docs/configuration.md's two flag tables: serve's
// flags (every row of the first) and each command's own flags.
func configurationDoc(t *testing.T) (serve map[string]docFlag, variables []string, own map[string]map[string]docFlag) {
	t.Helper()
	b, err := os.ReadFile("../../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	serve, own = map[string]docFlag{}, map[string]map[string]docFlag{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "| `") && !strings.HasPrefix(line, "| — |") {
			continue
		}
		cells := strings.Split(strings.Trim(line, "|"), " | ")
		switch {
		case len(cells) == 4 && (strings.HasPrefix(cells[0], " `--") || strings.TrimSpace(cells[0]) == "—"):
			v := firstCode(cells[1])
			variables = append(variables, v)
			if f := firstCode(cells[0]); f != "" {
				serve[strings.TrimPrefix(f, "--")] = docFlag{variable: v, def: firstCode(cells[2])}
			}
		case len(cells) == 5:
			cmd := firstCode(cells[0])
			if own[cmd] == nil {
				own[cmd] = map[string]docFlag{}
			}
			own[cmd][strings.TrimPrefix(firstCode(cells[1]), "--")] = docFlag{variable: firstCode(cells[2]), def: firstCode(cells[3])}
		}
	}
	if len(serve) < 10 || len(own) == 0 {
		t.Fatalf("read %d serve flags and %d commands from docs/configuration.md; has the table's shape changed?", len(serve), len(own))
	}
	return serve, variables, own
}

var (
	helpFlag    = regexp.MustCompile(`^  -(\S+)(?: (\S+))?$`)
	helpDefault = regexp.MustCompile(`\(default "?(.*?)"?\)$`)
)

// helpFlags runs a command's -h and reads its flags, recording which
// environment variables it asked for.
func helpFlags(t *testing.T, args ...string) (map[string]docFlag, map[string]bool) {
	t.Helper()
	asked := map[string]bool{}
	getenv := func(k string) string { asked[k] = true; return "" }
	var stdout, stderr bytes.Buffer
	if err := cli.Run(context.Background(), append([]string{"keybridge"}, append(args, "-h")...), getenv, strings.NewReader(""), &stdout, &stderr); err != nil {
		t.Fatalf("Run(%q -h) = %v", args, err)
	}
	flags := map[string]docFlag{}
	lines := strings.Split(stderr.String(), "\n")
	for i, l := range lines {
		m := helpFlag.FindStringSubmatch(l)
		if m == nil || i+1 == len(lines) {
			continue
		}
		f := docFlag{typ: m[2], usage: strings.TrimSpace(lines[i+1])}
		if d := helpDefault.FindStringSubmatch(f.usage); d != nil {
			f.def = d[1]
		}
		flags[m[1]] = f
	}
	return flags, asked
}

// sameDefault compares a documented default with the one -h prints, which
// leaves out zero values and spells durations its own way.
func sameDefault(typ, doc, help string) bool {
	switch typ {
	case "duration":
		d1, err1 := time.ParseDuration(doc)
		d2, err2 := time.ParseDuration(cmpOr(help, "0s"))
		return err1 == nil && err2 == nil && d1 == d2
	case "int":
		return doc == cmpOr(help, "0")
	case "":
		return doc == cmpOr(help, "false")
	}
	return doc == help
}

func cmpOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// TestConfigurationDocMatchesHelp holds docs/configuration.md to the
// binary: every flag a command takes is documented there with the default
// it has, every documented flag exists, and every documented variable is
// read.
func TestConfigurationDocMatchesHelp(t *testing.T) {
	serveDoc, variables, own := configurationDoc(t)
	storage := []string{"data-dir", "database-url", "master-key-file", "redis-url", "log-level"}
	want := map[string]map[string]docFlag{"serve": serveDoc}
	for _, c := range []string{"setup", "migrate", "keyring status", "keyring rotate", "keyring rewrap", "keyring change-master"} {
		want[c] = map[string]docFlag{}
		for _, name := range storage {
			want[c][name] = serveDoc[name]
		}
		for name, f := range own[c] {
			want[c][name] = f
		}
		delete(own, c)
	}
	for c := range own {
		t.Errorf("docs/configuration.md documents flags of %q, which is not a command", c)
	}
	for c, doc := range want {
		help, asked := helpFlags(t, strings.Fields(c)...)
		for name, f := range help {
			d, ok := doc[name]
			if !ok {
				t.Errorf("%s -h has --%s, which docs/configuration.md does not document for it", c, name)
				continue
			}
			if !sameDefault(f.typ, d.def, f.def) {
				t.Errorf("%s --%s: default %q in -h, %q in docs/configuration.md", c, name, f.def, d.def)
			}
			if d.variable != "" && !strings.Contains(f.usage, d.variable) {
				t.Errorf("%s --%s: -h does not name %s, which docs/configuration.md gives for it", c, name, d.variable)
			}
		}
		for name := range doc {
			if _, ok := help[name]; !ok {
				t.Errorf("docs/configuration.md documents %s --%s, which -h does not list", c, name)
			}
		}
		if c == "serve" {
			for _, v := range variables {
				if v != "" && !asked[v] {
					t.Errorf("docs/configuration.md documents %s, which serve never reads", v)
				}
			}
		}
	}
	if !slices.Contains(variables, "KEYBRIDGE_MASTER_KEY") {
		t.Error("docs/configuration.md does not document KEYBRIDGE_MASTER_KEY")
	}
}
