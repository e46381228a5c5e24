// The divergence search's assistant: the model asked for new candidate prompts (and for the yes/no
// criterion). Either a local model directory (src/models/chat.ts, sampled in this process) or any
// OpenAI-compatible chat-completions endpoint (an API, vLLM, `pipe serve-model`).
//
// HTTP: POST <baseUrl>/chat/completions with { model, messages, max_tokens, temperature, seed };
// the key, when `apiKeyEnv` names a set environment variable, as a Bearer token. Each request has a
// timeout; a network error, a timeout, 429 or a 5xx is retried after backoff * 2^attempt seconds, up
// to `retries` times, then fails the stage (a cycle is not cached with its requests unanswered; the
// next run retries it). Another 4xx fails at once: the endpoint, model or key is wrong. A 200 whose
// body is not a chat completion with a string message is a malformed reply: counted, not fatal.
import { Data, Effect } from "effect"
import type { LocalModel } from "../../src/models/chat.ts"
import type { ChatMessage } from "../../src/text/chat-template.ts"

export class AssistantError extends Data.TaggedError("AssistantError")<{ readonly message: string }> {}

/** A reply that was not what a chat completion looks like (counted by the search, not fatal). */
export type Reply = { readonly ok: true; readonly text: string } | { readonly ok: false; readonly problem: string }

export interface AskOptions {
  readonly maxTokens: number
  readonly temperature: number
  readonly seed: number
}

export interface Assistant {
  readonly describe: string
  readonly ask: (messages: ReadonlyArray<ChatMessage>, options: AskOptions) => Effect.Effect<Reply, AssistantError>
}

export const localAssistant = (model: LocalModel): Assistant => ({
  describe: `local model ${model.dir}`,
  ask: (messages, o) =>
    Effect.mapError(
      Effect.map(model.chat(messages, { maxTokens: o.maxTokens, temperature: o.temperature, seed: o.seed, fitContext: true }), ([c]) => ({ ok: true, text: c.text }) as const),
      (e) => new AssistantError({ message: `local assistant ${model.dir}: ${e.message}` }),
    ),
})

export interface HttpAssistantOptions {
  /** e.g. https://api.openai.com/v1 or http://127.0.0.1:8000/v1 */
  readonly baseUrl: string
  readonly model: string
  /** the environment variable holding the API key; "" or unset: no key sent */
  readonly apiKeyEnv: string
  readonly timeoutSeconds: number
  readonly retries: number
  readonly backoffSeconds: number
  /** told about each retry */
  readonly log?: (message: string) => void
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null

/** The message text of a chat-completion body, or what is wrong with it. */
export const completionText = (body: string): Reply => {
  let json: unknown
  try {
    json = JSON.parse(body)
  } catch {
    return { ok: false, problem: `the body is not JSON: ${JSON.stringify(body.slice(0, 80))}` }
  }
  const choices = isObject(json) ? json.choices : undefined
  const first = Array.isArray(choices) ? choices[0] : undefined
  const content = isObject(first) && isObject(first.message) ? first.message.content : undefined
  return typeof content === "string" ? { ok: true, text: content } : { ok: false, problem: "the body has no choices[0].message.content string" }
}

type Attempt = { readonly done: Reply } | { readonly retry: string }

export const httpAssistant = (o: HttpAssistantOptions): Assistant => {
  const url = `${o.baseUrl.replace(/\/+$/, "")}/chat/completions`
  const key = o.apiKeyEnv === "" ? undefined : process.env[o.apiKeyEnv]
  const once = (body: string): Effect.Effect<Attempt, AssistantError> =>
    Effect.tryPromise({
      try: async (): Promise<Attempt> => {
        const response = await fetch(url, {
          method: "POST",
          headers: { "content-type": "application/json", ...(key ? { authorization: `Bearer ${key}` } : {}) },
          body,
          signal: AbortSignal.timeout(o.timeoutSeconds * 1000),
        })
        const text = await response.text()
        if (response.ok) return { done: completionText(text) }
        const why = `HTTP ${response.status}: ${text.slice(0, 200)}`
        if (response.status === 429 || response.status >= 500) return { retry: why }
        throw new AssistantError({ message: `assistant ${url} (model ${o.model}) refused the request: ${why}` })
      },
      catch: (e) => e,
    }).pipe(
      Effect.catch((e) =>
        e instanceof AssistantError
          ? Effect.fail(e)
          : Effect.succeed<Attempt>({ retry: e instanceof Error && e.name === "TimeoutError" ? `no answer within ${o.timeoutSeconds} s` : `network error: ${e instanceof Error ? e.message : String(e)}` }),
      ),
    )
  const attempt = (body: string, n: number): Effect.Effect<Reply, AssistantError> =>
    Effect.flatMap(once(body), (a) => {
      if ("done" in a) return Effect.succeed(a.done)
      if (n >= o.retries) return Effect.fail(new AssistantError({ message: `assistant ${url} (model ${o.model}): ${a.retry}; gave up after ${n + 1} attempts` }))
      const wait = o.backoffSeconds * 2 ** n
      o.log?.(`assistant ${url}: ${a.retry}; retrying in ${wait} s (attempt ${n + 2} of ${o.retries + 1})`)
      return Effect.andThen(Effect.sleep(wait * 1000), attempt(body, n + 1))
    })
  return {
    describe: `${url} (model ${o.model})`,
    ask: (messages, a) => attempt(JSON.stringify({ model: o.model, messages, max_tokens: a.maxTokens, temperature: a.temperature, seed: a.seed }), 0),
  }
}
