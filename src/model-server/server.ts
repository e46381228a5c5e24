// An OpenAI-compatible HTTP server over one local model (src/models/chat.ts): `pipe serve-model DIR`.
//
//   GET  /v1/models             the one model, id = its name (the directory's base name by default)
//   POST /v1/chat/completions   messages through the model's chat template; n, max_tokens (or
//                               max_completion_tokens), temperature, top_p, seed, stop
//   POST /v1/completions        raw text (prompt: a string or a one-string array), same knobs
//
// Errors use OpenAI's body, `{"error": {"message", "type", "param", "code"}}`: 400 for a request
// that cannot be served (a malformed body, names the field; streaming; a prompt longer than the
// context), 404 for another model name, 500 when the model itself fails. Requests run one at a time
// (one onnxruntime session), in arrival order. Binds 127.0.0.1 unless told otherwise: the server has
// no authentication.
import { Context, Effect, Layer, Schema, Semaphore } from "effect"
import { HttpRouter, HttpServer, type HttpServerRequest, HttpServerResponse } from "effect/http"
import { NodeHttpServer } from "@effect/platform-node"
import { createServer } from "node:http"
import { decodeArtifact } from "../engine/artifact.ts"
import type { Completion, CompletionOptions, LocalModel, LocalModelError } from "../models/chat.ts"

const Stop = Schema.optional(Schema.NullOr(Schema.Union([Schema.String, Schema.Array(Schema.String)])))
const OptionalNumber = Schema.optional(Schema.NullOr(Schema.Finite))
const OptionalInt = Schema.optional(Schema.NullOr(Schema.Int.check(Schema.isGreaterThan(0))))

const Sampling = {
  model: Schema.String,
  max_tokens: OptionalInt,
  max_completion_tokens: OptionalInt,
  temperature: Schema.optional(Schema.NullOr(Schema.Finite.check(Schema.isBetween({ minimum: 0, maximum: 2 })))),
  top_p: Schema.optional(Schema.NullOr(Schema.Finite.check(Schema.isBetween({ minimum: 0, maximum: 1 })))),
  n: Schema.optional(Schema.NullOr(Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 16 })))),
  seed: OptionalNumber,
  stop: Stop,
  stream: Schema.optional(Schema.NullOr(Schema.Boolean)),
}

const TextPart = Schema.Struct({ type: Schema.Literal("text"), text: Schema.String })
const ChatRequest = Schema.Struct({
  ...Sampling,
  messages: Schema.Array(Schema.Struct({ role: Schema.String, content: Schema.Union([Schema.String, Schema.Array(TextPart)]) })).check(Schema.isMinLength(1)),
})
const CompletionRequest = Schema.Struct({ ...Sampling, prompt: Schema.Union([Schema.String, Schema.Tuple([Schema.String])]) })

export interface ModelServerOptions {
  readonly host: string
  /** 0: any free port (see ModelServer.url) */
  readonly port: number
  /** the model id clients name; default the directory's base name */
  readonly name: string
}

export interface ModelServer {
  /** e.g. http://127.0.0.1:8000/v1, the base URL OpenAI clients take */
  readonly url: string
}

const errorBody = (status: number, message: string, type: string, code: string | null = null) =>
  HttpServerResponse.jsonUnsafe({ error: { message, type, param: null, code } }, { status })

class RequestProblem {
  constructor(
    readonly status: number,
    readonly message: string,
    readonly type: string,
    readonly code: string | null = null,
  ) {}
}

const invalid = (message: string, code: string | null = null) => new RequestProblem(400, message, "invalid_request_error", code)

const fromModel = (e: LocalModelError) => (e.internal ? new RequestProblem(500, e.message, "server_error") : invalid(e.message))

const body = <T>(request: HttpServerRequest.HttpServerRequest, schema: Schema.Codec<T, any>, what: string) =>
  Effect.gen(function* () {
    const json = yield* Effect.mapError(request.json, () => invalid("the request body is not valid JSON"))
    return yield* Effect.mapError(decodeArtifact(schema, "request body", what, json), (e) => invalid(e.message.replace("request body: ", "")))
  })

const options = (r: typeof ChatRequest.Type | typeof CompletionRequest.Type, name: string) =>
  Effect.gen(function* () {
    if (r.stream) return yield* Effect.fail(invalid("stream: streaming is not supported by this server; send stream: false"))
    if (r.model !== name) return yield* Effect.fail(new RequestProblem(404, `The model \`${r.model}\` does not exist; this server serves \`${name}\``, "invalid_request_error", "model_not_found"))
    const maxTokens = r.max_completion_tokens ?? r.max_tokens
    const stop = r.stop == null ? [] : typeof r.stop === "string" ? [r.stop] : r.stop
    return {
      ...(maxTokens != null ? { maxTokens } : {}),
      ...(r.temperature != null ? { temperature: r.temperature } : {}),
      ...(r.top_p != null ? { topP: r.top_p } : {}),
      ...(r.seed != null ? { seed: r.seed } : {}),
      ...(r.n != null ? { n: r.n } : {}),
      stop,
    } satisfies CompletionOptions
  })

const usage = (cs: ReadonlyArray<Completion>) => {
  const prompt = cs[0]?.promptTokens ?? 0
  const completion = cs.reduce((n, c) => n + c.completionTokens, 0)
  return { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion }
}

const id = (prefix: string) => `${prefix}-${crypto.randomUUID().replaceAll("-", "").slice(0, 24)}`
const now = () => Math.floor(Date.now() / 1000)

const respond = (handle: Effect.Effect<unknown, RequestProblem>) =>
  handle.pipe(
    Effect.map((json) => HttpServerResponse.jsonUnsafe(json)),
    Effect.catch((p: RequestProblem) => Effect.succeed(errorBody(p.status, p.message, p.type, p.code))),
  )

const routes = (model: LocalModel, name: string, lock: Semaphore.Semaphore) =>
  Layer.mergeAll(
    HttpRouter.add("GET", "/v1/models", HttpServerResponse.jsonUnsafe({ object: "list", data: [{ id: name, object: "model", created: 0, owned_by: "pipe" }] })),
    HttpRouter.add("POST", "/v1/chat/completions", (request) =>
      respond(
        Effect.gen(function* () {
          const r = yield* body(request, ChatRequest, "a chat completion request")
          const o = yield* options(r, name)
          const messages = r.messages.map((m) => ({ role: m.role, content: typeof m.content === "string" ? m.content : m.content.map((p) => p.text).join("") }))
          const out = yield* lock.withPermit(Effect.mapError(model.chat(messages, o), fromModel))
          return {
            id: id("chatcmpl"),
            object: "chat.completion",
            created: now(),
            model: name,
            choices: out.map((c, index) => ({ index, message: { role: "assistant", content: c.text }, finish_reason: c.finishReason, logprobs: null })),
            usage: usage(out),
          }
        }),
      ),
    ),
    HttpRouter.add("POST", "/v1/completions", (request) =>
      respond(
        Effect.gen(function* () {
          const r = yield* body(request, CompletionRequest, "a completion request")
          const o = yield* options(r, name)
          const out = yield* lock.withPermit(Effect.mapError(model.complete(typeof r.prompt === "string" ? r.prompt : r.prompt[0], o), fromModel))
          return {
            id: id("cmpl"),
            object: "text_completion",
            created: now(),
            model: name,
            choices: out.map((c, index) => ({ index, text: c.text, finish_reason: c.finishReason, logprobs: null })),
            usage: usage(out),
          }
        }),
      ),
    ),
  )

/** Serves `model` until the scope closes. */
export const serveModel = (model: LocalModel, o: ModelServerOptions) =>
  Effect.gen(function* () {
    const lock = yield* Semaphore.make(1)
    const app = HttpRouter.serve(routes(model, o.name, lock), { disableLogger: true, disableListenLog: true }).pipe(
      Layer.provideMerge(NodeHttpServer.layer(() => createServer(), { host: o.host, port: o.port })),
    )
    const services = yield* Layer.build(app)
    const address = Context.get(services, HttpServer.HttpServer).address
    return { url: `${HttpServer.formatAddress(address).replace(/\/$/, "")}/v1` } satisfies ModelServer
  })
