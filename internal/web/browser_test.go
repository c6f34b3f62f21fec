package web_test

// The web UI driven in a real Chromium (Debian's /usr/bin/chromium, or
// KEYBRIDGE_TEST_CHROMIUM) against a real "keybridge serve" with a loopback
// OpenAI upstream behind its gateway. The browser reaches serve through a
// recording proxy, so the canary check sees every response the browser
// got. Without a browser the test skips.
//
// Screenshots of every page at 1280 and 390 px wide go to the test's
// artifact directory (go test -artifacts keeps them); with
// KEYBRIDGE_UI_SCREENSHOTS=DIR the desktop ones are also written to DIR,
// which is how docs/ui/ is refreshed:
//
//	KEYBRIDGE_UI_SCREENSHOTS=$PWD/docs/ui go test -run TestBrowser ./internal/web

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	cdplog "github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"

	"github.com/keybridge/keybridge/internal/auth"
	"github.com/keybridge/keybridge/internal/cli"
	"github.com/keybridge/keybridge/internal/providertest"
	"github.com/keybridge/keybridge/internal/testsupport"
)

// chromiumPath finds the browser, or "" when there is none.
func chromiumPath() string {
	if p := os.Getenv("KEYBRIDGE_TEST_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	return ""
}

// recorder keeps every response the browser received, in order.
type recorder struct {
	mu   sync.Mutex
	resp []recorded
}

type recorded struct {
	method, path string
	status       int
	header       http.Header
	body         string
}

func (r *recorder) all() []recorded {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]recorded(nil), r.resp...)
}

// uiEnv is one serve, its proxy, its upstream and a browser.
type uiEnv struct {
	t        *testing.T
	direct   string // serve's own URL
	url      string // the recording proxy the browser uses
	setupURL string
	rec      *recorder
	upstream *providertest.Server
	alloc    context.Context
	shots    string
	docShots string
	// secrets are planted or one-time values: each may appear only in
	// the response that created it (after: index in rec.all()).
	secrets map[string]int
}

func startUI(t *testing.T) *uiEnv {
	t.Helper()
	chromium := chromiumPath()
	if chromium == "" {
		t.Skip("no Chromium found (apt-get install chromium, or set KEYBRIDGE_TEST_CHROMIUM): skipping the browser tests of the web UI")
	}
	saved := auth.PasswordParams
	auth.PasswordParams = auth.Argon2Params{Memory: 64, Time: 1, Threads: 1, SaltLen: 16, KeyLen: 32}
	t.Cleanup(func() { auth.PasswordParams = saved })

	e := &uiEnv{t: t, rec: &recorder{}, secrets: map[string]int{}, shots: t.ArtifactDir(), docShots: os.Getenv("KEYBRIDGE_UI_SCREENSHOTS")}
	e.upstream = providertest.NewOpenAI(t)
	e.upstream.Usage = providertest.Usage{Input: 120, Output: 30, CacheRead: 50}

	// The proxy starts first: serve's links must name it.
	var target *url.URL
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rp := httputil.NewSingleHostReverseProxy(target)
		rp.ModifyResponse = func(resp *http.Response) error {
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				return err
			}
			resp.Body = io.NopCloser(bytes.NewReader(b))
			e.rec.mu.Lock()
			e.rec.resp = append(e.rec.resp, recorded{r.Method, r.URL.RequestURI(), resp.StatusCode, resp.Header.Clone(), string(b)})
			e.rec.mu.Unlock()
			return nil
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(proxy.Close)
	e.url = proxy.URL

	ctx, cancel := context.WithCancel(context.Background())
	stdout, stderr := &testsupport.SyncBuffer{}, &testsupport.SyncBuffer{}
	done := make(chan error, 1)
	args := []string{"keybridge", "serve", "--listen", "127.0.0.1:0", "--data-dir", t.TempDir(), "--public-url", proxy.URL}
	noEnv := func(string) string { return "" }
	go func() { done <- cli.Run(ctx, args, noEnv, strings.NewReader(""), stdout, stderr) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Error("serve did not stop within 30 s")
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for e.direct == "" || e.setupURL == "" {
		select {
		case err := <-done:
			t.Fatalf("serve stopped: %v\n%s", err, stderr)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("serve did not start:\n%s\n%s", stdout, stderr)
		}
		e.direct = listeningURL(stderr.String())
		if m := regexp.MustCompile(`http://\S+/setup\?token=\S+`).FindString(stdout.String()); m != "" {
			e.setupURL = m
		}
		time.Sleep(20 * time.Millisecond)
	}
	target, _ = url.Parse(e.direct)

	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium),
		chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-default-apps", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 900),
	)
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancelAlloc)
	// The first context starts the browser; each tab then gets a browser
	// context of its own (its own cookies and storage).
	root, cancelRoot := chromedp.NewContext(alloc)
	t.Cleanup(cancelRoot)
	// No timeout here: the browser lives as long as the context that
	// started it.
	if err := chromedp.Do(root); err != nil {
		t.Fatalf("start %s: %v", chromium, err)
	}
	e.alloc = root
	return e
}

// listeningURL finds the address in serve's "listening" log line.
func listeningURL(logs string) string {
	sc := bufio.NewScanner(strings.NewReader(logs))
	for sc.Scan() {
		var l struct{ Msg, Addr string }
		if json.Unmarshal(sc.Bytes(), &l) == nil && l.Msg == "listening" && l.Addr != "" {
			return "http://" + l.Addr
		}
	}
	return ""
}

// tab is one browser context (its own cookies and storage) with one page.
type tab struct {
	e    *uiEnv
	ctx  context.Context
	name string
}

func (e *uiEnv) newTab(name string) *tab {
	ctx, cancel := chromedp.NewContext(e.alloc, chromedp.WithNewBrowserContext())
	e.t.Cleanup(cancel)
	tb := &tab{e: e, ctx: ctx, name: name}
	// Every uncaught exception and every console error (a CSP violation
	// is one) fails the test.
	exceptions := chromedp.Events(ctx, runtime.ExceptionThrown)
	logs := chromedp.Events(ctx, cdplog.EntryAdded)
	go func() {
		for ev, err := range exceptions {
			if err != nil {
				return
			}
			e.t.Errorf("%s: script error: %v", name, &chromedp.ExceptionError{ExceptionDetails: ev.ExceptionDetails})
		}
	}()
	go func() {
		for ev, err := range logs {
			if err != nil {
				return
			}
			if ev.Entry.Level == cdplog.EntryLevelError && !strings.Contains(ev.Entry.Text, "status of 4") {
				e.t.Errorf("%s: console error: %s %s", name, ev.Entry.Text, ev.Entry.URL)
			}
		}
	}()
	if err := chromedp.Do(ctx, chromedp.EmulateViewport(1280, 900)); err != nil {
		e.t.Fatalf("start the browser: %v", err)
	}
	if _, err := chromedp.Call(ctx, cdplog.Enable, cdp.Empty{}); err != nil {
		e.t.Fatalf("enable the console log: %v", err)
	}
	return tb
}

const stepTimeout = 15 * time.Second

func (tb *tab) do(what string, actions ...chromedp.Action[chromedp.Void]) {
	tb.e.t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, stepTimeout)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		tb.e.t.Fatalf("%s: %s: %v\n%s", tb.name, what, err, tb.mainText())
	}
}

func (tb *tab) eval(js string) (string, error) {
	ctx, cancel := context.WithTimeout(tb.ctx, stepTimeout)
	defer cancel()
	return chromedp.Run(ctx, chromedp.Evaluate[string](js))
}

// eval1 evaluates js, failing the test on a script error.
func (tb *tab) eval1(js string) string {
	tb.e.t.Helper()
	out, err := tb.eval(js)
	if err != nil {
		tb.e.t.Fatalf("%s: %s: %v", tb.name, js, err)
	}
	return out
}

func (tb *tab) mainText() string {
	s, _ := tb.eval(`(document.body ? document.body.innerText : "").slice(0, 3000)`)
	return s
}

// until evaluates js (a function body returning "" for not yet, or a
// string that is the answer) until it answers, and returns the answer.
func (tb *tab) until(what, js string) string {
	tb.e.t.Helper()
	deadline := time.Now().Add(stepTimeout)
	var last string
	for {
		out, err := tb.eval("(() => {" + js + "})()")
		if err == nil && out != "" {
			return out
		}
		if err != nil {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			tb.e.t.Fatalf("%s: %s: not within %v (%s)\npage:\n%s", tb.name, what, stepTimeout, last, tb.mainText())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func jsq(s string) string { b, _ := json.Marshal(s); return string(b) }

// scope is the open dialog when there is one, else the page.
const scopeJS = `const scope = document.querySelector("dialog[open]") || document;`

// click clicks the visible button or link whose text is label.
func (tb *tab) click(label string) {
	tb.e.t.Helper()
	tb.until("click "+label, scopeJS+`
		const el = [...scope.querySelectorAll("button, a, label.check, summary")].find((e) => (e.getAttribute("aria-label") || e.textContent).trim() === `+jsq(label)+` && e.getClientRects().length && !e.disabled);
		if (!el) return "";
		el.click();
		return "ok";`)
}

// fill sets the control labelled label (in the open dialog if any).
func (tb *tab) fill(label, value string) {
	tb.e.t.Helper()
	tb.until("fill "+label, scopeJS+`
		const l = [...scope.querySelectorAll("label, legend")].find((e) => e.textContent.replace(/\s*\*$/, "").trim() === `+jsq(label)+`);
		if (!l) return "";
		const c = l.htmlFor ? document.getElementById(l.htmlFor) : l.querySelector("input");
		if (!c) return "";
		if (c.type === "checkbox") c.checked = `+jsq(value)+` === "true";
		else c.value = `+jsq(value)+`;
		c.dispatchEvent(new Event("input", {bubbles: true}));
		c.dispatchEvent(new Event("change", {bubbles: true}));
		return "ok";`)
}

// submit submits the form in the open dialog, or the page's form whose
// button says label.
func (tb *tab) submit(label string) { tb.click(label) }

// see waits until the page (or selector's element) shows text.
func (tb *tab) see(sel, text string) {
	tb.e.t.Helper()
	tb.until(fmt.Sprintf("see %q in %s", text, sel), `
		const el = document.querySelector(`+jsq(sel)+`);
		return el && el.innerText.includes(`+jsq(text)+`) ? "ok" : "";`)
}

// notSee checks, once the page has settled, that text is absent.
func (tb *tab) notSee(sel, text string) {
	tb.e.t.Helper()
	out, err := tb.eval(`(() => { const el = document.querySelector(` + jsq(sel) + `); return el ? el.innerText : ""; })()`)
	if err != nil {
		tb.e.t.Fatalf("%s: read %s: %v", tb.name, sel, err)
	}
	if strings.Contains(out, text) {
		tb.e.t.Errorf("%s: %s shows %q, want it absent:\n%s", tb.name, sel, text, out)
	}
}

// go navigates by the UI's own hash links and waits for the page's title.
func (tb *tab) open(hash, title string) {
	tb.e.t.Helper()
	// The same hash again is a reload of the page, as a click on its
	// navigation link would be.
	tb.until("open "+hash, `if (location.hash === `+jsq(hash)+`) window.dispatchEvent(new HashChangeEvent("hashchange")); else location.hash = `+jsq(hash)+`; return "ok";`)
	tb.until("title of "+hash, `
		const h = document.querySelector("main h1");
		return h && h.textContent === `+jsq(title)+` && !document.querySelector("main .loading") ? "ok" : "";`)
}

// secret reads the one-time value labelled label from the open dialog,
// then closes it and checks the value left the page with it.
func (tb *tab) secret(label string, createdBy string) string {
	tb.e.t.Helper()
	v := tb.until("read "+label, `
		const d = document.querySelector("dialog[open]");
		if (!d || !d.innerText.toLowerCase().includes("you will not see this again")) return "";
		const l = [...d.querySelectorAll("label")].find((e) => e.textContent.trim() === `+jsq(label)+`);
		return l ? document.getElementById(l.htmlFor).value : "";`)
	tb.e.plant(v, createdBy)
	tb.click("I have copied it — close")
	tb.until("dialog closed", `return document.querySelector("dialog") ? "" : "ok";`)
	tb.canary()
	return v
}

// plant registers a one-time value: it may appear in the response of the
// request that made it (createdBy: "METHOD path-prefix"), the last such
// one so far, and never after.
func (e *uiEnv) plant(v, createdBy string) {
	all := e.rec.all()
	idx := -1
	for i := len(all) - 1; i >= 0; i-- {
		if strings.HasPrefix(all[i].method+" "+all[i].path, createdBy) && strings.Contains(all[i].body, v) {
			idx = i
			break
		}
	}
	if idx < 0 {
		e.t.Fatalf("no %s response holds the one-time value", createdBy)
	}
	if got := all[idx].header.Get("Cache-Control"); got != "no-store" {
		e.t.Errorf("%s: Cache-Control = %q, want no-store", createdBy, got)
	}
	e.secrets[v] = idx
}

// never registers a value no response may ever hold (a provider key).
func (e *uiEnv) never(v string) { e.secrets[v] = -1 }

// typed is never's mark for what the user types (a password): it is in a
// form's control while typed, and in no response ever.
const typed = -2

func (e *uiEnv) typed(v string) { e.secrets[v] = typed }

// canary checks the page (HTML, text and every control's value) and
// every response so far for planted secrets.
func (tb *tab) canary() {
	tb.e.t.Helper()
	page, err := tb.eval(`document.documentElement.outerHTML + "\n" + document.body.innerText + "\n" +
		[...document.querySelectorAll("input, textarea, select")].map((c) => c.value).join("\n") + "\n" +
		JSON.stringify(Object.entries(localStorage)) + JSON.stringify(Object.entries(sessionStorage)) + location.href`)
	if err != nil {
		tb.e.t.Fatalf("%s: read the page: %v", tb.name, err)
	}
	for v, at := range tb.e.secrets {
		if at != typed && strings.Contains(page, v) {
			tb.e.t.Errorf("%s: the page holds a one-time secret %.8s… at %s", tb.name, v, tb.mainText()[:min(200, len(tb.mainText()))])
		}
	}
	tb.e.checkResponses()
}

func (e *uiEnv) checkResponses() {
	e.t.Helper()
	for i, r := range e.rec.all() {
		for v, at := range e.secrets {
			if i != at && strings.Contains(r.body, v) {
				e.t.Errorf("response %d (%s %s) holds a secret %.8s… (allowed only in response %d)", i, r.method, r.path, v, at)
			}
		}
	}
}

// shot saves the page at desktop and phone widths.
func (tb *tab) shot(name string) {
	tb.e.t.Helper()
	tb.canary()
	// Toasts of earlier steps would cover the picture.
	if _, err := tb.eval(`document.querySelector(".toasts")?.replaceChildren(); ""`); err != nil {
		tb.e.t.Fatal(err)
	}
	for _, w := range []struct {
		suffix string
		w, h   int64
	}{{"desktop", 1280, 900}, {"phone", 390, 844}} {
		ctx, cancel := context.WithTimeout(tb.ctx, stepTimeout)
		err := chromedp.Do(ctx, chromedp.EmulateViewport(w.w, w.h), chromedp.Sleep(150*time.Millisecond))
		var png []byte
		if err == nil {
			png, err = chromedp.Run(ctx, chromedp.FullScreenshot(100))
		}
		cancel()
		if err != nil {
			tb.e.t.Fatalf("screenshot %s: %v", name, err)
		}
		// Readable at this width: nothing but a snippet's own scroller is
		// wider than the screen or its card, and every control has a name.
		check, err := tb.eval(`(() => {
			const bad = [];
			if (document.documentElement.scrollWidth > window.innerWidth + 1) bad.push("the page is " + document.documentElement.scrollWidth + " px wide");
			// Nor is a card's content wider than the card (hidden behind
			// its edge or its scroller), unless it scrolls by design.
			for (const c of document.querySelectorAll(".panel, .chart, .stat, .table-wrap, .empty, .dialog-body")) {
				if (!c.getClientRects().length || c.closest(".scrolls")) continue;
				if (c.scrollWidth > c.clientWidth + 1) bad.push((c.id || c.querySelector("[id]")?.id || c.closest("[id]")?.id || c.className) + " holds " + c.scrollWidth + " px in " + c.clientWidth + " px");
			}
			for (const c of document.querySelectorAll("input, select, textarea, button")) {
				if (!c.getClientRects().length) continue;
				const named = c.getAttribute("aria-label") || (c.id && document.querySelector("label[for='" + c.id + "']")) || c.closest("label") || (c.tagName === "BUTTON" && c.textContent.trim());
				if (!named) bad.push("unlabelled " + c.tagName.toLowerCase() + (c.name ? " " + c.name : ""));
			}
			return bad.join("; ");
		})()`)
		if err != nil {
			tb.e.t.Fatal(err)
		}
		if check != "" {
			tb.e.t.Errorf("%s at %d px: %s", name, w.w, check)
		}
		file := name + "-" + w.suffix + ".png"
		if err := os.WriteFile(filepath.Join(tb.e.shots, file), png, 0o644); err != nil {
			tb.e.t.Fatal(err)
		}
		if w.suffix == "desktop" && tb.e.docShots != "" {
			if err := os.WriteFile(filepath.Join(tb.e.docShots, name+".png"), png, 0o644); err != nil {
				tb.e.t.Fatal(err)
			}
		}
	}
	tb.do("restore the viewport", chromedp.EmulateViewport(1280, 900))
}

// login signs in through the API (not the browser) and answers the status.
func (e *uiEnv) login(email, password string) int {
	e.t.Helper()
	b, _ := json.Marshal(map[string]string{"email": email, "password": password})
	resp, err := http.Post(e.direct+"/api/v1/auth/login", "application/json", bytes.NewReader(b))
	if err != nil {
		e.t.Fatalf("login: %v", err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// gateway calls the OpenAI chat endpoint through Keybridge with key.
func (e *uiEnv) gateway(key, model string) int {
	e.t.Helper()
	body := `{"model":"` + model + `","messages":[{"role":"user","content":"hi"}]}`
	req, _ := http.NewRequest("POST", e.direct+"/gateway/openai/chat/completions", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatalf("gateway: %v", err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

func TestBrowser(t *testing.T) {
	e := startUI(t)
	const (
		email    = "ada@acme.test"
		password = "correct horse battery staple"
	)
	e.typed(password)
	admin := e.newTab("admin")

	// Set-up: the one-time link leaves the address bar at once.
	admin.do("open the setup link", chromedp.Navigate(e.setupURL))
	admin.until("setup form", `return document.getElementById("setup-form") ? "ok" : "";`)
	if loc, _ := admin.eval(`location.href`); strings.Contains(loc, "token") {
		t.Errorf("after opening the setup link the address is %q, want the token gone", loc)
	}
	admin.fill("Organisation slug", "acme")
	admin.fill("Your name", "Ada Admin")
	admin.fill("Your email", email)
	admin.fill("Password", password)
	admin.shot("setup")
	admin.submit("Create organisation")
	// Straight to the API key the README's next step needs.
	admin.see("dialog[open]", "Create an API key")
	admin.click("Cancel")
	admin.see("#my-keys", "You have no API keys in acme yet")

	// Sign out, and in again by keyboard.
	admin.click("Sign out")
	admin.until("login form", `return document.getElementById("login-form") ? "ok" : "";`)
	admin.shot("login")
	admin.do("type the credentials",
		chromedp.SendKeys(chromedp.CSS(`#login-form input[type="email"]`), email),
		chromedp.SendKeys(chromedp.CSS(`#login-form input[type="password"]`), password+"\r"))
	admin.until("signed in", `return document.querySelector("nav .who") ? document.querySelector("nav .who").textContent : "";`)
	admin.see("nav", "Audit log")

	uiScenario(t, e, admin)
}

// uiScenario is every page after sign-in, in the order an operator meets
// them.
func uiScenario(t *testing.T, e *uiEnv, admin *tab) {
	admin.open("#/account", "Account")
	admin.see("#account-email", "ada@acme.test")
	newPassword := "an even better passphrase"
	e.typed(newPassword)
	admin.fill("Current password", "wrong password")
	admin.fill("New password", newPassword)
	admin.submit("Change password")
	admin.see("#password-form .form-error", "current_password")
	admin.fill("Current password", "correct horse battery staple")
	admin.fill("New password", newPassword)
	admin.submit("Change password")
	admin.see(".toasts", "Password changed")
	if got := e.login("ada@acme.test", newPassword); got != 200 {
		t.Errorf("login with the new password = %d, want 200", got)
	}
	// The name: an empty one is refused at its field, then a new one is
	// saved, trimmed, and a new page load shows it.
	admin.fill("Name", " ")
	admin.submit("Save name")
	admin.until("empty name refused", `const c = document.getElementById("name-form").elements.namedItem("name"); return c.getAttribute("aria-invalid") === "true" && c.parentElement.querySelector(".field-error").textContent.includes("1 to 200 characters") ? "ok" : "";`)
	admin.fill("Name", "  Ada Lovelace ")
	admin.submit("Save name")
	admin.see(".toasts", "Name saved")
	admin.do("reload the account page", chromedp.Reload())
	admin.until("the new name after a reload", `const f = document.getElementById("name-form"); return f && document.querySelector("main h1")?.textContent === "Account" && f.elements.namedItem("name").value === "Ada Lovelace" ? "ok" : "";`)
	admin.shot("account")
	// A second org, and the switcher between the two.
	admin.fill("Slug", "acme-labs")
	admin.fill("Display name", "Acme Labs")
	admin.submit("Create organisation")
	admin.until("switcher", `const s = document.getElementById("org-switcher"); return s && s.options.length === 2 && s.value === "acme-labs" ? "ok" : "";`)
	admin.open("#/providers", "Providers")
	admin.see("#providers", "No providers yet")
	admin.until("switch back", `const s = document.getElementById("org-switcher"); s.value = "acme"; s.dispatchEvent(new Event("change")); return "ok";`)
	admin.until("acme chosen", `return document.querySelector(".org-row select")?.value === "acme" && document.querySelector("main h1")?.textContent === "Providers" ? "ok" : "";`)

	// A provider with two upstream keys, tested before and after saving.
	mainKey, backupKey := "sk-main-"+randomText(32), "sk-backup-"+randomText(32)
	e.upstream.AddKey(mainKey)
	e.upstream.AddKey(backupKey)
	e.typed(mainKey)
	e.typed(backupKey)
	admin.open("#/providers", "Providers")
	admin.see("#providers", "No providers yet — add one")
	// A Bedrock provider without its region: the API's field error shows
	// beside the Region control.
	admin.click("Add provider")
	admin.fill("Type", "bedrock")
	admin.fill("Name", "bedrock")
	admin.submit("Create provider")
	admin.until("region error", `const l = [...document.querySelectorAll("dialog[open] label")].find((e) => e.textContent.startsWith("Region")); const c = l && document.getElementById(l.htmlFor); return c && c.getAttribute("aria-invalid") === "true" && c.parentElement.querySelector(".field-error").textContent ? "ok" : "";`)
	admin.click("Close")
	admin.click("Add provider")
	admin.fill("Name", "openai")
	admin.fill("Base URL", e.upstream.URL+"/v1")
	admin.fill("Upstream API key", mainKey)
	admin.click("Test connection")
	admin.see("dialog[open] .test-result", "reachable")
	admin.see("dialog[open] .test-result", "models: ")
	admin.submit("Create provider")
	admin.until("provider page", `return document.querySelector("main h1")?.textContent === "openai" && document.querySelector("#provider-keys table") ? "ok" : "";`)
	admin.see("#provider-keys", mainKey[:4]+"..."+mainKey[len(mainKey)-4:])
	e.never(mainKey)
	admin.canary()
	admin.fill("API key", backupKey)
	admin.fill("Name", "backup")
	admin.fill("Priority", "5")
	admin.submit("Add key")
	admin.see("#provider-keys", "backup")
	e.never(backupKey)
	admin.click("Disable backup")
	admin.see("#provider-keys", "disabled")
	admin.click("Enable backup")
	admin.until("backup enabled again", `return document.querySelector("#provider-keys")?.innerText.includes("disabled") ? "" : "ok";`)
	admin.click("Test connection")
	admin.until("both keys tested", `return document.querySelectorAll("#provider-usage .test-result").length === 2 && document.querySelector("#provider-usage").innerText.includes("reachable") ? "ok" : "";`)
	admin.see("#provider-usage", "Key backup")
	admin.shot("provider")
	admin.click("Edit")
	admin.fill("Display name", "OpenAI (main account)")
	admin.submit("Save")
	admin.until("renamed", `return document.querySelector("main h1")?.textContent === "OpenAI (main account)" ? "ok" : "";`)
	admin.open("#/providers", "Providers")
	admin.see("#providers", "OpenAI (main account)")
	admin.shot("providers")

	// An API key, its one-time plaintext, and traffic through the gateway.
	admin.open("#/api-keys", "API keys")
	// By keyboard: Enter on the button opens the dialog with the focus in
	// its first field; Escape closes it.
	admin.until("focus the create button", `const b = [...document.querySelectorAll("main button")].find((e) => e.textContent === "Create API key"); if (!b) return ""; b.focus(); return "ok";`)
	admin.do("press Enter", chromedp.KeyEvent("\r"))
	admin.until("dialog by keyboard", `const d = document.querySelector("dialog[open]"); return d && d.contains(document.activeElement) && document.activeElement.tagName === "INPUT" ? "ok" : "";`)
	admin.do("press Escape", chromedp.KeyEvent(kb.Escape))
	admin.until("dialog closed by Escape", `return document.querySelector("dialog") ? "" : "ok";`)
	admin.click("Create API key")
	admin.fill("Name", "laptop")
	admin.submit("Create key")
	key := admin.secret("API key", "POST /api/v1/api-keys")
	if !strings.HasPrefix(key, "kb_") {
		t.Fatalf("the dialog showed %q, want a kb_ key", key)
	}
	admin.see("#my-keys", "laptop")
	admin.see("#my-keys", key[:12])
	// The main key is rate limited once: the gateway fails over to the
	// backup and the main key cools down, which the provider page shows.
	e.upstream.Fault(mainKey, providertest.Fault{Status: 429, RetryAfter: "300", Times: 1})
	for i := range gatewayCalls {
		model := "gpt-4o-mini"
		if i%2 == 1 {
			model = "gpt-4o"
		}
		if got := e.gateway(key, model); got != 200 {
			t.Fatalf("gateway call %d with the new key = %d, want 200", i, got)
		}
	}
	admin.shot("api-keys")
	admin.click("Suspend laptop")
	admin.see("#my-keys", "suspended")
	waitStatus(t, func() int { return e.gateway(key, "gpt-4o-mini") }, 401)
	admin.open("#/providers/openai", "OpenAI (main account)")
	admin.see("#provider-keys", "cooling down")

	// Rotation with a grace period, then revocation.
	admin.open("#/api-keys", "API keys")
	admin.click("Create API key")
	admin.fill("Name", "ci")
	admin.submit("Create key")
	ci := admin.secret("API key", "POST /api/v1/api-keys")
	admin.click("Rotate ci")
	admin.fill("Grace period (seconds)", "600")
	admin.submit("Rotate")
	ci2 := admin.secret("API key", "POST /api/v1/api-keys/")
	if ci2 == ci || !strings.HasPrefix(ci2, "kb_") {
		t.Errorf("rotation showed %q, want a new kb_ key", ci2)
	}
	if got := e.gateway(ci, "gpt-4o-mini"); got != 200 {
		t.Errorf("the rotated-out key within its grace period = %d, want 200", got)
	}
	admin.until("two ci keys", `return [...document.querySelectorAll("#my-keys tbody tr")].filter((r) => r.cells[0].innerText.trim() === "ci").length === 2 ? "ok" : "";`)
	admin.until("revoke the new ci", `const b = [...document.querySelectorAll("#my-keys tbody tr")].find((r) => r.innerText.includes(`+jsq(ci2[:12])+`))?.querySelector("button.danger"); if (!b) return ""; b.click(); return "ok";`)
	admin.click("Revoke")
	admin.see("#my-keys", "revoked")
	waitStatus(t, func() int { return e.gateway(ci2, "gpt-4o-mini") }, 401)

	for _, step := range uiSteps {
		step(t, e, admin)
	}
}

// gatewayCalls is how many successful gateway calls the scenario makes
// with the "laptop" key; the "ci" key and the member's key make one each.
const gatewayCalls = 6

// uiSteps are the pages after API keys and providers, one function each.
var uiSteps []func(t *testing.T, e *uiEnv, admin *tab)

func waitStatus(t *testing.T, call func() int, want int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := call()
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("status = %d, want %d within 10 s", got, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func randomText(n int) string {
	const alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b)
}

func init() {
	uiSteps = append(uiSteps, func(t *testing.T, e *uiEnv, admin *tab) {
		admin.open("#/projects", "Projects")
		admin.see("#projects", "No projects yet")
		admin.click("Create project")
		admin.fill("Name", "web-app")
		admin.fill("Description", "The storefront")
		admin.submit("Create project")
		admin.until("project page", `return document.querySelector("main h1")?.textContent === "web-app" && document.querySelector("#ai-keys .empty") ? "ok" : "";`)
		admin.click("Create AI key")
		admin.fill("Name", "github-actions")
		admin.fill("Requests per minute", "30")
		admin.submit("Create AI key")
		secret := admin.secret("Secret", "POST /api/v1/orgs/acme/projects/")
		if !strings.HasPrefix(secret, "kbs_") {
			t.Errorf("the AI key dialog showed %q as the secret, want kbs_…", secret)
		}
		admin.see("#ai-keys", "github-actions")
		admin.see("#ai-keys", "30 rpm")
		admin.see("#ai-keys", "kbk_")
		admin.click("Create AI key")
		admin.fill("Name", "old-ci")
		admin.submit("Create AI key")
		admin.secret("Secret", "POST /api/v1/orgs/acme/projects/")
		admin.click("Delete AI key old-ci")
		admin.click("Delete")
		admin.until("old-ci hidden", `return document.querySelector("#ai-keys table") && !document.querySelector("#ai-keys").innerText.includes("old-ci") ? "ok" : "";`)
		admin.click("Show deleted keys")
		admin.see("#ai-keys", "old-ci")
		admin.see("#ai-keys", "deleted ")
		admin.shot("project")
		admin.open("#/projects", "Projects")
		admin.see("#projects", "The storefront")
		admin.shot("projects")
	})
}

func init() {
	uiSteps = append(uiSteps, func(t *testing.T, e *uiEnv, admin *tab) {
		personal := "sk-personal-" + randomText(30)
		e.typed(personal)
		admin.open("#/credentials", "My provider keys")
		admin.see("#credentials", "You have no personal provider keys")
		admin.fill("Your API key", personal)
		admin.submit("Add key")
		admin.see("#credentials", personal[len(personal)-4:])
		admin.see("#credentials", "openai")
		e.never(personal)
		admin.shot("credentials")
	})
}

func init() {
	uiSteps = append(uiSteps, func(t *testing.T, e *uiEnv, admin *tab) {
		admin.open("#/members", "Members")
		admin.see("#members", "ada@acme.test")
		// The last owner rule, as the API answers it.
		admin.click("Change role of ada@acme.test")
		admin.fill("Role", "admin")
		admin.submit("Save")
		admin.see("dialog[open] .form-error", "owner")
		admin.click("Cancel")
		admin.click("Invite member")
		admin.fill("Email", "dev@acme.test")
		admin.fill("Name", "Dev Eloper")
		admin.submit("Create invitation")
		link := admin.secret("Invitation link", "POST /api/v1/orgs/acme/members")
		if !strings.Contains(link, "/invite?token=") {
			t.Fatalf("the invitation dialog showed %q, want an /invite?token= link", link)
		}
		admin.see("#members", "dev@acme.test")
		admin.see("#members", "invited")
		admin.shot("members")

		// The teammate, in a browser context of their own.
		dev := e.newTab("member")
		dev.do("open the invitation", chromedp.Navigate(link))
		dev.until("invite form", `return document.getElementById("invite-form") ? "ok" : "";`)
		if loc, _ := dev.eval(`location.href`); strings.Contains(loc, "token") {
			t.Errorf("after opening the invitation the address is %q, want the token gone", loc)
		}
		devPassword := "a long member password"
		e.typed(devPassword)
		dev.fill("Password", devPassword)
		dev.shot("invite")
		dev.submit("Accept invitation")
		dev.see("dialog[open]", "Create an API key")
		dev.fill("Name", "dev-laptop")
		dev.submit("Create key")
		devKey := dev.secret("API key", "POST /api/v1/api-keys")
		dev.see("#my-keys", "dev-laptop")
		if got := e.gateway(devKey, "gpt-4o-mini"); got != 200 {
			t.Errorf("the member's own key through the gateway = %d, want 200", got)
		}
		// What a member may not do is absent, not broken.
		for _, absent := range []string{"Dashboard", "Usage", "Audit log"} {
			dev.notSee("nav", absent)
		}
		dev.notSee("main", "Everyone's keys")
		dev.open("#/providers", "Providers")
		dev.see("#providers", "openai")
		dev.notSee("main", "Add provider")
		dev.open("#/providers/openai", "OpenAI (main account)")
		dev.see("main", "Admins manage this provider's keys")
		dev.notSee("main", "Delete provider")
		dev.notSee("main", "Add a key")
		dev.notSee("main", "Test connection")
		dev.open("#/members", "Members")
		dev.see("#members", "dev@acme.test")
		dev.notSee("main", "Invite member")
		dev.notSee("main", "Remove")
		dev.open("#/projects", "Projects")
		dev.see("#projects", "web-app")
		dev.notSee("main", "Create project")
		dev.shot("member-projects")
		dev.until("open #/audit", `location.hash = "#/audit"; return "ok";`)
		dev.see("main", "does not allow this page")

		// The admin sees the new member joined, and their key.
		admin.open("#/members", "Members")
		admin.until("dev joined", `return document.querySelector("#members table") && !document.querySelector("#members").innerText.includes("invited") ? "ok" : "";`)
		admin.open("#/api-keys", "API keys")
		admin.see("#org-keys", "dev-laptop")
		admin.see("#org-keys", "dev@acme.test")
		devTab = dev
	})
}

// devTab is the member's browser, once they have joined.
var devTab *tab

func init() {
	uiSteps = append(uiSteps, func(t *testing.T, e *uiEnv, admin *tab) {
		// An existing user invited to a second org accepts while signed
		// in: no password, and the org joins their switcher.
		admin.until("switch to acme-labs", `const s = document.getElementById("org-switcher"); s.value = "acme-labs"; s.dispatchEvent(new Event("change")); return "ok";`)
		admin.open("#/members", "Members")
		admin.see("#members", "ada@acme.test")
		admin.click("Invite member")
		admin.fill("Email", "dev@acme.test")
		admin.submit("Create invitation")
		link := admin.secret("Invitation link", "POST /api/v1/orgs/acme-labs/members")
		dev := devTab
		dev.do("open the second invitation", chromedp.Navigate(link))
		dev.see("main", "You are signed in as dev@acme.test")
		dev.submit("Accept invitation")
		dev.until("two orgs", `const s = document.getElementById("org-switcher"); return s && s.options.length === 2 ? "ok" : "";`)
		dev.canary()
		admin.until("switch back to acme", `const s = document.getElementById("org-switcher"); s.value = "acme"; s.dispatchEvent(new Event("change")); return "ok";`)
		admin.until("acme again", `return document.querySelector(".org-row select")?.value === "acme" && document.querySelector("main h1") ? "ok" : "";`)
	})
}

func init() {
	uiSteps = append(uiSteps, func(t *testing.T, e *uiEnv, admin *tab) {
		admin.open("#/audit", "Audit log")
		admin.see("#audit-events", "provider.create")
		// Pages: 50 more events (the page's size) than there were, made
		// through the API with the page's own session, push the oldest to
		// page 2; Next and Previous walk there and back.
		ctx, cancel := context.WithTimeout(admin.ctx, 2*stepTimeout)
		made, err := chromedp.Run(ctx, chromedp.Evaluate[int](`(async () => {
			const org = "/api/v1/orgs/acme/projects";
			const p = (await (await fetch(org)).json()).items.find((x) => x.name === "web-app");
			let n = 0;
			for (let i = 0; i < 50; i++) {
				const r = await fetch(org + "/" + p.id, {method: "PATCH", headers: {"Content-Type": "application/json", "X-CSRF-Token": sessionStorage.getItem("kb.csrf")}, body: JSON.stringify({description: "The storefront, take " + i})});
				if (r.ok) n++;
			}
			return n;
		})()`, chromedp.EvalAwaitPromise))
		cancel()
		if err != nil || made != 50 {
			t.Fatalf("made %d project updates (%v), want 50", made, err)
		}
		admin.open("#/audit", "Audit log")
		rowsJS := `[...document.querySelectorAll("#audit-events tbody tr")].map((r) => r.innerText)`
		first := admin.until("page 1", `const rows = `+rowsJS+`; return rows.length === 50 && document.querySelector(".pager").innerText.includes("Page 1") ? JSON.stringify(rows) : "";`)
		if strings.Count(first, "project.update") != 50 {
			t.Errorf("page 1 of the audit log is not the 50 newest events (the project updates):\n%.500s", first)
		}
		admin.click("Next page")
		second := admin.until("page 2", `const rows = `+rowsJS+`; return rows.length && document.querySelector(".pager").innerText.includes("Page 2") && !document.querySelector("#audit-events .loading") ? JSON.stringify(rows) : "";`)
		var page1, page2 []string
		if err := json.Unmarshal([]byte(first), &page1); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal([]byte(second), &page2); err != nil {
			t.Fatal(err)
		}
		for _, r := range page2 {
			for _, q := range page1 {
				if r == q {
					t.Errorf("an event is on pages 1 and 2: %q", r)
				}
			}
		}
		if !strings.Contains(second, "provider.create") {
			t.Errorf("page 2 of the audit log lacks the oldest events (provider.create):\n%.500s", second)
		}
		admin.click("Previous page")
		again := admin.until("page 1 again", `const rows = `+rowsJS+`; return rows.length && document.querySelector(".pager").innerText.includes("Page 1") && !document.querySelector("#audit-events .loading") ? JSON.stringify(rows) : "";`)
		if again != first {
			t.Errorf("page 1 after Previous differs from page 1 before:\n%.300s\nwant\n%.300s", again, first)
		}
		admin.fill("Action", "api_key.suspend")
		admin.submit("Apply filters")
		admin.until("filtered", `const t = document.querySelector("#audit-events table"); return t && t.tBodies[0].rows.length === 1 && t.innerText.includes("api_key.suspend") && t.innerText.includes("laptop") ? "ok" : "";`)
		admin.click("1 change")
		admin.see("#audit-events", "active → suspended")
		admin.click("Verify chain")
		admin.see("#audit-verify", "chain intact")
		admin.see("#audit-verify", "events verified")
		admin.shot("audit")
	})
}

func init() {
	uiSteps = append(uiSteps, func(t *testing.T, e *uiEnv, admin *tab) {
		// gatewayCalls by the admin's laptop key, one by its ci key and
		// one by the member's went through; usage rows are written in
		// batches, so wait for them.
		want := fmt.Sprint(gatewayCalls + 2)
		admin.open("#/usage", "Usage")
		admin.until("usage rows", `
			const t = document.querySelector("#usage table");
			if (t && t.innerText.includes("openai\t`+want+`")) return "ok";
			// Not all written yet: load the page again about once a second.
			window.pollCount = (window.pollCount || 0) + 1;
			if (window.pollCount % 20 === 0 && !document.querySelector("#usage .loading")) window.dispatchEvent(new HashChangeEvent("hashchange"));
			return "";`)
		admin.fill("Group by", "model")
		admin.see("#usage table", "gpt-4o-mini")
		admin.see("#usage table", "gpt-4o\t3")
		admin.see("#usage-chart", "Requests by model")
		admin.until("CSV link", `const a = document.getElementById("usage-csv"); return a && a.href.startsWith("blob:") && a.download.endsWith(".csv") ? "ok" : "";`)
		// What the link downloads (the page's policy lets no script
		// fetch a blob: URL, so the test reads the Blob itself).
		ctx, cancel := context.WithTimeout(admin.ctx, stepTimeout)
		csv, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.getElementById("usage-csv").csvBlob.text()`, chromedp.EvalAwaitPromise))
		cancel()
		if err != nil {
			t.Fatalf("read the CSV: %v", err)
		}
		if !strings.HasPrefix(csv, "model,name,requests,") || !strings.Contains(csv, "gpt-4o,gpt-4o,3,") {
			t.Errorf("usage CSV = %q, want a header and a gpt-4o row with 3 requests", csv)
		}
		admin.shot("usage")

		admin.open("#/dashboard", "Dashboard")
		admin.until("dashboard totals", `const s = document.querySelector("#stat-requests .v"); return s && s.textContent === `+jsq(want)+` ? "ok" : "";`)
		total := admin.until("requests chart", `const c = document.getElementById("chart-requests"); return c ? c.dataset.total : "";`)
		if total != want {
			t.Errorf("the requests chart totals %s, want %s", total, want)
		}
		bars := admin.until("bars", `return String(document.querySelectorAll("#chart-requests rect.bar").length);`)
		if bars == "0" {
			t.Error("the requests chart has no bars")
		}
		admin.see("#top-providers", "openai")
		admin.see("#top-models", "gpt-4o-mini")
		admin.see("#top-keys", "laptop")
		admin.see("#chart-latency", "Latency")
		admin.click("Last 7 days")
		admin.until("7 days", `const s = document.querySelector("#stat-requests .v"); return s && s.textContent === `+jsq(want)+` && document.querySelector("button[aria-pressed=true]").textContent === "Last 7 days" ? "ok" : "";`)
		admin.click("Last 24 hours")
		admin.until("24 hours", `return document.querySelector("#stat-requests .v") ? "ok" : "";`)
		admin.shot("dashboard")

		// A custom range of UTC days, kept in the address.
		today := time.Now().UTC()
		since, until := today.AddDate(0, 0, -1).Format(time.DateOnly), today.Format(time.DateOnly)
		admin.click("Custom range")
		admin.fill("Since (UTC)", since)
		admin.fill("Until (UTC)", until)
		admin.submit("Show range")
		admin.until("custom range", `const s = document.querySelector("#stat-requests .v"); return location.hash === "#/dashboard?since=`+since+`&until=`+until+`" && s && s.textContent === `+jsq(want)+` ? "ok" : "";`)
		admin.see("main .intro", since+" to "+until+", by hour")
		admin.until("custom pressed", `return document.querySelector("button[aria-pressed=true]")?.textContent === "Custom range" ? "ok" : "";`)
		// The page refuses a range that ends before it starts, beside the
		// control, and asks the API nothing.
		asked := len(e.rec.all())
		admin.fill("Until (UTC)", today.AddDate(0, 0, -3).Format(time.DateOnly))
		admin.submit("Show range")
		admin.until("until refused", `const f = document.getElementById("range-form"); const c = f.elements.until; return c.getAttribute("aria-invalid") === "true" && c.parentElement.querySelector(".field-error").textContent === "must not be before since" ? "ok" : "";`)
		if strings.Contains(admin.eval1(`location.hash`), "until="+today.AddDate(0, 0, -3).Format(time.DateOnly)) {
			t.Error("a refused range reached the address")
		}
		for _, r := range e.rec.all()[asked:] {
			if strings.Contains(r.path, "/usage?") {
				t.Errorf("a range the page refused was asked of the API: %s", r.path)
			}
		}
		// What only the API decides (here a year RFC 3339 cannot write;
		// with usage retention, a start before what is kept) is its
		// answer, each field beside its control.
		admin.fill("Since (UTC)", "10000-01-01")
		admin.fill("Until (UTC)", "10000-01-02")
		admin.submit("Show range")
		admin.until("API refusal", `const f = document.getElementById("range-form"); const c = f.elements.since; return c.getAttribute("aria-invalid") === "true" && c.parentElement.querySelector(".field-error").textContent.includes("RFC 3339") && [...f.querySelectorAll(".form-error code")].some((x) => x.textContent === "since") ? "ok" : "";`)
		var refused bool
		for _, r := range e.rec.all()[asked:] {
			refused = refused || (strings.Contains(r.path, "/usage?") && r.status == 400)
		}
		if !refused {
			t.Error("the API was not asked for (and did not refuse) the year 10000 range")
		}
		// A bookmark of the range opens it again, in a new page load.
		admin.do("open the bookmarked range", chromedp.Navigate(e.url+"/#/usage?since="+since+"&until="+until), chromedp.Reload())
		admin.until("usage of the range", `const t = document.querySelector("#usage table"); const f = document.getElementById("range-form"); return t && t.innerText.includes("openai\t`+want+`") && f && !f.classList.contains("hidden") && f.elements.since.value === `+jsq(since)+` && f.elements.until.value === `+jsq(until)+` ? "ok" : "";`)
		admin.see("#usage-csv", "Download CSV")
		if dl := admin.eval1(`document.getElementById("usage-csv").download`); !strings.HasSuffix(dl, since+"-"+until+".csv") {
			t.Errorf("the CSV of the range downloads as %q, want it named after the range", dl)
		}
		admin.shot("usage-range")
	})
}

func init() {
	uiSteps = append(uiSteps, func(t *testing.T, e *uiEnv, admin *tab) {
		admin.open("#/connect", "Connect a client")
		admin.see("#connect-openai-sdk", "export OPENAI_BASE_URL="+e.url+"/gateway/openai")
		admin.see("#connect-codex", `base_url = "`+e.url+`/gateway/openai"`)
		admin.see("#connect-claude-code", "No enabled anthropic provider")
		admin.see("#connect-curl", e.url+"/gateway/openai/chat/completions")
		admin.shot("connect")
	})
}

func init() {
	uiSteps = append(uiSteps, func(t *testing.T, e *uiEnv, admin *tab) {
		// Azure OpenAI and an OpenAI-compatible server, both on the
		// loopback mock (which serves Azure's paths too), tested before
		// saving; each detail page shows the fields it was made with.
		azureKey, compatKey := "azure-"+randomText(32), "sk-compat-"+randomText(32)
		e.upstream.AddKey(azureKey)
		e.upstream.AddKey(compatKey)
		e.typed(azureKey)
		e.typed(compatKey)
		for _, p := range []struct{ typ, name, baseURL, version, key, typeName string }{
			{"azure-openai", "azure", e.upstream.URL, "2024-10-21", azureKey, "Azure OpenAI"},
			{"openai-compatible", "local", e.upstream.URL + "/v1", "", compatKey, "OpenAI-compatible"},
		} {
			admin.open("#/providers", "Providers")
			admin.click("Add provider")
			admin.fill("Type", p.typ)
			admin.fill("Name", p.name)
			admin.fill("Base URL", p.baseURL)
			if p.version != "" {
				admin.fill("API version", p.version)
			}
			admin.fill("Upstream API key", p.key)
			admin.click("Test connection")
			admin.see("dialog[open] .test-result", "reachable")
			admin.notSee("dialog[open] .test-result", "unreachable")
			admin.submit("Create provider")
			admin.until(p.name+" page", `return document.querySelector("main h1")?.textContent === `+jsq(p.name)+` && document.querySelector("#provider-keys table") ? "ok" : "";`)
			facts := admin.eval1(`document.querySelector("main dl.facts").innerText`)
			for _, want := range []string{"Type\n" + p.typeName + "\n", "Base URL\n" + p.baseURL + "\n"} {
				if !strings.Contains(facts, want) {
					t.Errorf("%s: the provider's facts lack %q:\n%s", p.name, want, facts)
				}
			}
			if p.version != "" && !strings.Contains(facts, "api_version\n"+p.version) {
				t.Errorf("%s: the provider's facts lack its API version %s:\n%s", p.name, p.version, facts)
			}
			admin.see("#provider-keys", p.key[len(p.key)-4:])
			e.never(p.key)
			admin.canary()
		}
	})
}
