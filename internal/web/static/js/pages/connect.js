// Copy-paste set-ups for the clients of docs/gateway.md, filled in with
// this server's address and the org's provider names.
import { h } from "../dom.js";
import { listAll } from "../api.js";
import { state, can, orgPath, page as layout, copyButton } from "../ui.js";

const CLIENTS = [
  { id: "claude-code", title: "Claude Code", types: ["anthropic"], text: "Claude Code talks to an anthropic provider; the Keybridge key goes in ANTHROPIC_AUTH_TOKEN (or ANTHROPIC_API_KEY, not both).",
    snippets: (u) => [["sh", `export ANTHROPIC_BASE_URL=${u}
export ANTHROPIC_AUTH_TOKEN=kb_...   # your Keybridge key, sent as Authorization: Bearer
claude`]] },
  { id: "claude-code-bedrock", title: "Claude Code on Bedrock", types: ["bedrock"], text: "For a bedrock provider: Keybridge signs the upstream request with the provider's own AWS key.",
    snippets: (u) => [["sh", `export CLAUDE_CODE_USE_BEDROCK=1
export ANTHROPIC_BEDROCK_BASE_URL=${u}
export CLAUDE_CODE_SKIP_BEDROCK_AUTH=1
export AWS_BEARER_TOKEN_BEDROCK=kb_...   # a Keybridge key, or an AWS AI key's secret (kbs_...)
export AWS_REGION=us-east-1              # Claude Code requires one; Keybridge uses the provider's
claude`]] },
  { id: "codex", title: "Codex CLI", types: ["openai", "openai-compatible"], text: "Declare Keybridge as a provider in ~/.codex/config.toml; env_key names the variable holding the key.",
    snippets: (u) => [["toml", `model_provider = "keybridge"
model = "gpt-5"

[model_providers.keybridge]
name = "Keybridge"
base_url = "${u}"
env_key = "KEYBRIDGE_KEY"
wire_api = "responses"`], ["sh", `export KEYBRIDGE_KEY=kb_...
codex`]] },
  { id: "openai-sdk", title: "OpenAI SDKs", types: ["openai", "openai-compatible"], text: "The SDKs read these variables; the base URL has no /v1 after the provider's name.",
    snippets: (u) => [["sh", `export OPENAI_BASE_URL=${u}
export OPENAI_API_KEY=kb_...`], ["python", `from openai import OpenAI
client = OpenAI(base_url="${u}", api_key="kb_...")
print(client.chat.completions.create(model="gpt-4o-mini",
      messages=[{"role": "user", "content": "Say hello"}]).choices[0].message.content)`]] },
  { id: "anthropic-sdk", title: "Anthropic SDKs", types: ["anthropic"], text: "",
    snippets: (u) => [["sh", `export ANTHROPIC_BASE_URL=${u}
export ANTHROPIC_API_KEY=kb_...   # sent as x-api-key`], ["python", `from anthropic import Anthropic
client = Anthropic(base_url="${u}", api_key="kb_...")`]] },
  { id: "aws", title: "AWS SDKs and CLI (Bedrock runtime)", types: ["bedrock"], text: "Sign with an AWS AI key (Projects → a project → Create AI key, type AWS): its key is the access key id, its secret the secret access key.",
    snippets: (u) => [["sh", `export AWS_ACCESS_KEY_ID=kbk_...
export AWS_SECRET_ACCESS_KEY=kbs_...
unset AWS_SESSION_TOKEN AWS_PROFILE
aws bedrock-runtime converse --region us-east-1 \\
  --endpoint-url ${u} \\
  --model-id anthropic.claude-3-haiku-20240307-v1:0 \\
  --messages '[{"role":"user","content":[{"text":"Say hello"}]}]'`]] },
  { id: "google", title: "Google Gen AI SDKs", types: ["google"], text: "The SDK adds /v1beta/models/... itself and sends the key as x-goog-api-key.",
    snippets: (u) => [["python", `from google import genai
from google.genai import types

client = genai.Client(api_key="kb_...",
                      http_options=types.HttpOptions(base_url="${u}/"))`]] },
  { id: "azure", title: "Azure OpenAI clients", types: ["azure-openai"], text: "The client sends api-version; Keybridge adds the provider's when a request has none.",
    snippets: (u) => [["python", `from openai import AzureOpenAI
client = AzureOpenAI(azure_endpoint="${u}", api_key="kb_...", api_version="2024-10-21")`]] },
];

function curlFor(p, u) {
  switch (p.type) {
    case "anthropic": return `curl -s ${u}/v1/messages \\
  -H "x-api-key: $KB_KEY" -H 'anthropic-version: 2023-06-01' -H 'Content-Type: application/json' \\
  -d '{"model":"claude-sonnet-4-5","max_tokens":256,"messages":[{"role":"user","content":"Say hello"}]}'`;
    case "google": return `curl -s '${u}/v1beta/models/gemini-2.5-flash:generateContent' \\
  -H "x-goog-api-key: $KB_KEY" -H 'Content-Type: application/json' \\
  -d '{"contents":[{"parts":[{"text":"Say hello"}]}]}'`;
    case "azure-openai": return `curl -s ${u}/openai/deployments/DEPLOYMENT/chat/completions \\
  -H "api-key: $KB_KEY" -H 'Content-Type: application/json' \\
  -d '{"messages":[{"role":"user","content":"Say hello"}]}'`;
    case "bedrock": return `curl -s '${u}/model/anthropic.claude-3-haiku-20240307-v1:0/converse' \\
  -H "Authorization: Bearer $KB_KEY" -H 'Content-Type: application/json' \\
  -d '{"messages":[{"role":"user","content":[{"text":"Say hello"}]}]}'`;
    default: return `curl -s ${u}/chat/completions \\
  -H "Authorization: Bearer $KB_KEY" -H 'Content-Type: application/json' \\
  -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello"}]}'`;
  }
}

function snippet(lang, code) {
  const pre = h("pre", { class: "lang-" + lang, tabindex: "0", "aria-label": lang + " snippet" }, code);
  return h("div", { class: "snippet" }, pre, copyButton(() => pre.textContent, "Copy"));
}

export async function page() {
  const providers = can("providers:read") ? await listAll(orgPath("/providers")) : [];
  const gw = (name) => location.origin + "/gateway/" + name;
  const sections = CLIENTS.map((c) => {
    const ps = providers.filter((p) => c.types.includes(p.type) && p.enabled);
    const name = ps.length ? ps[0].name : "NAME";
    return h("section", { class: "panel client", id: "connect-" + c.id, "aria-labelledby": "h-" + c.id },
      h("h2", { id: "h-" + c.id }, c.title),
      c.text ? h("p", { class: "muted" }, c.text) : null,
      ps.length ? (ps.length > 1 ? h("p", { class: "hint" }, "Shown for " + name + "; also: " + ps.slice(1).map((p) => p.name).join(", ") + ".") : null)
        : h("p", { class: "note" }, "No enabled " + c.types.join(" or ") + " provider in " + state.org.name + " yet; NAME stands for its name."),
      c.snippets(gw(name)).map(([lang, code]) => snippet(lang, code)));
  });
  const curls = providers.filter((p) => p.enabled).map((p) => snippet("sh", "# " + p.name + " (" + p.type + ")\n" + curlFor(p, gw(p.name))));
  return layout("Connect a client", {
    intro: "Point a client at Keybridge: change its base URL and its key, nothing else. Use a Keybridge key from API keys (kb_...) wherever the snippets say kb_...; the provider's real key never leaves the server.",
  },
  h("p", {}, "Server: ", h("code", { id: "server-url" }, location.origin), " · Full reference: docs/gateway.md"),
  sections,
  h("section", { class: "panel client", id: "connect-curl", "aria-labelledby": "h-curl" },
    h("h2", { id: "h-curl" }, "curl"),
    h("p", { class: "muted" }, "One request per provider of " + state.org.name + ", with a Keybridge key in KB_KEY."),
    curls.length ? curls : h("p", { class: "note" }, "No enabled providers yet.")));
}
