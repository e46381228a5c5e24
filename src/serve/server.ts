// `pipe serve`: the dashboard's HTTP server (effect/http's HttpRouter on @effect/platform-node's
// NodeHttpServer). It serves one page (public/index.html + app.js, plain ES modules, and vega's browser
// build from node_modules: nothing from a CDN) and the JSON it reads from the run records.
//
// Read-only by construction: GET routes only, no route runs a command, and every file path from a URL
// is resolved inside a run's folder (Records.file / insideFolder), so `..`, encoded separators and
// links out of it are refused. When bound to loopback, requests naming another host are refused
// too (a page elsewhere that rebinds its DNS name to 127.0.0.1 cannot read the runs).
import { createServer } from "node:http"
import { readFileSync } from "node:fs"
import { createRequire } from "node:module"
import { dirname, join } from "node:path"
import { Effect, Layer } from "effect"
import { HttpRouter, HttpServer, HttpServerRequest, HttpServerResponse } from "effect/http"
import { NodeHttpServer } from "@effect/platform-node"
import { Marked, type Tokens } from "marked"
import { compile } from "vega-lite"
import type { ChartSpec } from "../plots/render.ts"
import { Forbidden, NotFound, type Records } from "./records.ts"

const PUBLIC = join(import.meta.dirname, "public")
const require = createRequire(import.meta.url)
// vega's browser build (the global `vega`): its package exports only the module entry and the schema,
// which lies in the same build folder
const VEGA = join(dirname(require.resolve("vega/vega-schema.json")), "vega.min.js")

const LOOPBACK = new Set(["127.0.0.1", "localhost", "::1", "[::1]"])

// The page runs vega, whose expression code generator compiles with `new Function` (hence
// 'unsafe-eval'); it renders SVG with style attributes (hence inline styles). Nothing leaves the host.
const PAGE_CSP = "default-src 'self'; script-src 'self' 'unsafe-eval'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-src 'self'; connect-src 'self'"
// A published file is data, never code: opened directly or in the page's frame, its scripts do not run.
const FILE_CSP = "sandbox; default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'"

const CONTENT_TYPES: Readonly<Record<string, string>> = {
  markdown: "text/markdown; charset=utf-8",
  json: "application/json; charset=utf-8",
  svg: "image/svg+xml",
  html: "text/html; charset=utf-8",
  csv: "text/csv; charset=utf-8",
  text: "text/plain; charset=utf-8",
  binary: "application/octet-stream",
}

const json = (value: unknown) => HttpServerResponse.text(JSON.stringify(value), { contentType: "application/json; charset=utf-8" })
const problem = (status: number, message: string) => HttpServerResponse.text(message, { status, contentType: "text/plain; charset=utf-8" })

/** A request's URL and its query; `request.url` is the path and query as sent, nothing decoded. */
const urlOf = (request: HttpServerRequest.HttpServerRequest) => new URL(request.url, "http://dashboard")

/** Runs a records call: NotFound becomes 404, Forbidden 403, anything else (a damaged record) 500 with its message. */
const answer = (f: () => HttpServerResponse.HttpServerResponse) =>
  Effect.sync(() => {
    try {
      return f()
    } catch (e) {
      if (e instanceof NotFound) return problem(404, e.message)
      if (e instanceof Forbidden) return problem(403, e.message)
      return problem(500, e instanceof Error ? e.message : String(e))
    }
  })

// Markdown from a run folder may hold model output: raw HTML in it is shown as text, never parsed.
const markdown = new Marked({
  renderer: { html: ({ text }: Tokens.HTML | Tokens.Tag) => text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;") },
})

/** Vega-Lite specs compiled to Vega here, so the page needs vega's browser build only. */
const forPage = (charts: ReadonlyArray<{ name: string; spec: ChartSpec }>) => charts.map((c) => ({ name: c.name, vega: compile(c.spec).spec }))

const asset = (file: string, contentType: string) =>
  HttpServerResponse.uint8Array(readFileSync(file), { contentType, headers: { "cache-control": "no-cache" } })

const page = () => asset(join(PUBLIC, "index.html"), "text/html; charset=utf-8").pipe(HttpServerResponse.setHeader("content-security-policy", PAGE_CSP))

const num = (v: string | null, fallback: number) => (v !== null && /^\d+$/.test(v) ? Number(v) : fallback)

const routes = (records: Records) =>
  Layer.mergeAll(
    HttpRouter.add("GET", "/", Effect.sync(page)),
    HttpRouter.add("GET", "/run/:id", Effect.sync(page)),
    HttpRouter.add("GET", "/node/:id", Effect.sync(page)),
    HttpRouter.add("GET", "/compare", Effect.sync(page)),
    HttpRouter.add("GET", "/assets/app.js", Effect.sync(() => asset(join(PUBLIC, "app.js"), "text/javascript; charset=utf-8"))),
    HttpRouter.add("GET", "/assets/style.css", Effect.sync(() => asset(join(PUBLIC, "style.css"), "text/css; charset=utf-8"))),
    HttpRouter.add("GET", "/vendor/vega.js", Effect.sync(() => asset(VEGA, "text/javascript; charset=utf-8"))),
    HttpRouter.add("GET", "/api/runs", (request) => answer(() => json(records.runs(num(urlOf(request).searchParams.get("limit"), 200))))),
    HttpRouter.add("GET", "/api/runs/:id", () =>
      Effect.flatMap(HttpRouter.params, (p) => answer(() => json(records.run(p.id ?? "")))),
    ),
    HttpRouter.add("GET", "/api/runs/:id/node", (request) =>
      Effect.flatMap(HttpRouter.params, (p) =>
        answer(() => {
          const n = records.node(p.id ?? "", urlOf(request).searchParams.get("name") ?? "")
          return json({ ...n, charts: forPage(n.charts) })
        }),
      ),
    ),
    HttpRouter.add("GET", "/api/runs/:id/log", (request) =>
      Effect.flatMap(HttpRouter.params, (p) => {
        const q = urlOf(request).searchParams
        return answer(() => json(records.log(p.id ?? "", q.get("node") ?? "", num(q.get("from"), 0))))
      }),
    ),
    // a published file as it is (svg for <img>, html for a sandboxed frame, anything for download)
    HttpRouter.add("GET", "/api/runs/:id/files/*", (request) =>
      Effect.flatMap(HttpRouter.params, (p) =>
        answer(() => {
          const f = records.file(p.id ?? "", filePath(request, p.id ?? ""))
          return HttpServerResponse.uint8Array(readFileSync(f.path), { contentType: CONTENT_TYPES[f.kind], headers: { "content-security-policy": FILE_CSP } })
        }),
      ),
    ),
    // a published file for the page: Markdown rendered, JSON parsed, text as text
    HttpRouter.add("GET", "/api/runs/:id/view/*", (request) =>
      Effect.flatMap(HttpRouter.params, (p) =>
        answer(() => {
          const f = records.file(p.id ?? "", filePath(request, p.id ?? "", "view"))
          const text = readFileSync(f.path, "utf8")
          if (f.kind === "markdown") return json({ kind: f.kind, html: markdown.parse(text, { async: false }) })
          if (f.kind === "json") return json({ kind: f.kind, value: parseJsonOrLines(text) })
          return json({ kind: f.kind, text })
        }),
      ),
    ),
    HttpRouter.add("GET", "/api/compare", (request) => {
      const q = urlOf(request).searchParams
      return answer(() => {
        const c = records.compare(q.get("a") ?? "", q.get("b") ?? "")
        return json({ ...c, nodes: c.nodes.map((n) => ({ ...n, curve: n.curve === null ? null : forPage([{ name: n.name, spec: n.curve }])[0].vega })) })
      })
    }),
  )

/**
 * The file path after `/api/runs/<id>/<route>/`, each segment percent-decoded here (an encoded `/` or
 * `..` is then seen for what it is by Records.file, which refuses anything outside the run's folder).
 */
const filePath = (request: HttpServerRequest.HttpServerRequest, id: string, route = "files"): string => {
  const path = urlOf(request).pathname
  const prefix = `/api/runs/${id}/${route}/`
  const rest = path.startsWith(prefix) ? path.slice(prefix.length) : ""
  try {
    return rest.split("/").map(decodeURIComponent).join("/")
  } catch {
    throw new NotFound({ message: `${rest}: not a valid path` })
  }
}

const parseJsonOrLines = (text: string): unknown => {
  try {
    return JSON.parse(text)
  } catch {
    // JSON Lines (metrics.jsonl): one value per line
    return text.split("\n").filter((l) => l.trim() !== "").map((l) => JSON.parse(l))
  }
}

export interface ServeOptions {
  readonly records: Records
  readonly host: string
  readonly port: number
  /** Told the address once the server listens (`pipe serve` prints it). */
  readonly onListening: (url: string) => void
}

/** The dashboard server as a layer: it listens while the layer is alive (Layer.launch runs it until interrupted). */
export const dashboard = (o: ServeOptions) => {
  const loopbackOnly = LOOPBACK.has(o.host)
  const hostCheck = HttpRouter.middleware(
    (app) =>
      Effect.gen(function* () {
        const request = yield* HttpServerRequest.HttpServerRequest
        const host = (request.headers.host ?? "").replace(/:\d+$/, "")
        return loopbackOnly && !LOOPBACK.has(host) ? problem(403, `host ${host} refused: the dashboard answers on loopback names only`) : yield* app
      }),
    { global: true },
  )
  const announce = Layer.effectDiscard(
    Effect.gen(function* () {
      o.onListening(HttpServer.formatAddress((yield* HttpServer.HttpServer).address))
    }),
  )
  return Layer.mergeAll(HttpRouter.serve(Layer.mergeAll(routes(o.records), hostCheck), { disableLogger: true, disableListenLog: true }), announce).pipe(
    Layer.provide(NodeHttpServer.layer(() => createServer(), { host: o.host, port: o.port })),
  )
}
