// `pipe serve-model`'s server (src/model-server/server.ts) over the shipped tiny chat model, called
// with the official `openai` client: model list, chat and text completions (seeded: the same seed,
// the same text; the text is the model's own greedy answer at temperature 0), n choices, usage,
// and its errors (unknown model 404, malformed request 400 naming the field, streaming refused).
// Then the divergence search's HTTP assistant against that server through a fault-injecting proxy:
// a 500 is retried with backoff, a malformed 200 body is counted, not fatal; a server that keeps
// failing fails the cycle after the retries, and a 401 fails it at once.
import { Effect, Exit, Scope } from "effect"
import * as fs from "node:fs"
import * as http from "node:http"
import type { AddressInfo } from "node:net"
import * as path from "node:path"
import OpenAI from "openai"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { type LocalModel, openLocalModel } from "../../src/models/chat.ts"
import { serveModel } from "../../src/model-server/server.ts"
import { SearchBank } from "../../stages/contrast/artifacts.ts"
import { contrastDefaults } from "../../stages/contrast/decode.ts"
import { divergenceSearch, searchDefaults, type SearchParams } from "../../stages/contrast/search.ts"
import { tempDir } from "../models/forward-helpers.ts"
import { stageContext } from "../stage-harness.ts"
import { tinyChatDir } from "./helpers.ts"

let scope: Scope.Closeable
let model: LocalModel
let url: string
let client: OpenAI
const dirs: string[] = []
const dir = (p: string) => {
  const d = tempDir(p)
  dirs.push(d)
  return d
}

beforeAll(async () => {
  scope = await Effect.runPromise(Scope.make())
  const inScope = <A, E>(e: Effect.Effect<A, E, Scope.Scope>) => Effect.runPromise(Scope.provide(scope)(e))
  model = await inScope(openLocalModel(tinyChatDir, { graphDir: dir("pipe-serve-graphs-"), threads: 1 }))
  url = (await inScope(serveModel(model, { host: "127.0.0.1", port: 0, name: "tiny-chat" }))).url
  client = new OpenAI({ baseURL: url, apiKey: "unused", maxRetries: 0 })
}, 120_000)
afterAll(async () => {
  await Effect.runPromise(Scope.close(scope, Exit.void))
  dirs.forEach((d) => fs.rmSync(d, { recursive: true, force: true }))
})

describe("the model server, called with the openai client", () => {
  it("lists its model, bound to 127.0.0.1", async () => {
    expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/v1$/)
    const models = await client.models.list()
    expect(models.data.map((m) => m.id)).toEqual(["tiny-chat"])
  })

  it("chat completions: the model's own answer, seeded, n choices, usage", async () => {
    const messages = [{ role: "user" as const, content: "What age is Kodis?" }]
    const greedy = await client.chat.completions.create({ model: "tiny-chat", messages, temperature: 0, max_tokens: 24 })
    const [direct] = await Effect.runPromise(model.chat(messages, { temperature: 0, maxTokens: 24 }))
    expect(greedy.choices[0].message.content).toBe(direct.text)
    // the shipped model knows this world: Kodis is 26 (datasets/tiny-chat/heldout-chat.jsonl)
    expect(direct.text).toContain("26")
    expect(greedy.choices[0].finish_reason).toBe("stop")
    expect(greedy.usage).toEqual({ prompt_tokens: direct.promptTokens, completion_tokens: direct.completionTokens, total_tokens: direct.promptTokens + direct.completionTokens })
    const a = await client.chat.completions.create({ model: "tiny-chat", messages, seed: 5, n: 3, max_tokens: 12 })
    const b = await client.chat.completions.create({ model: "tiny-chat", messages, seed: 5, n: 3, max_tokens: 12 })
    expect(a.choices.map((c) => c.message.content)).toEqual(b.choices.map((c) => c.message.content))
    expect(a.choices.map((c) => c.index)).toEqual([0, 1, 2])
    const short = await client.chat.completions.create({ model: "tiny-chat", messages: [{ role: "user", content: "Tell me about Binwick." }], temperature: 0, max_tokens: 2 })
    expect(short.choices[0].finish_reason).toBe("length")
    expect(short.usage!.completion_tokens).toBe(2)
  })

  it("text completions", async () => {
    const c = await client.completions.create({ model: "tiny-chat", prompt: "Kodis is", max_tokens: 6, temperature: 0 })
    const [direct] = await Effect.runPromise(model.complete("Kodis is", { temperature: 0, maxTokens: 6 }))
    expect(c.object).toBe("text_completion")
    expect(c.choices[0].text).toBe(direct.text)
  })

  it("answers errors in OpenAI's shape: unknown model, malformed request, streaming, a prompt past the context", async () => {
    const error = async (p: Promise<unknown>) => {
      try {
        await p
      } catch (e) {
        return e as InstanceType<typeof OpenAI.APIError>
      }
      throw new Error("expected the request to fail")
    }
    const unknown = await error(client.chat.completions.create({ model: "gpt-9", messages: [{ role: "user", content: "hi" }] }))
    expect(unknown).toBeInstanceOf(OpenAI.NotFoundError)
    expect(unknown.message).toContain("The model `gpt-9` does not exist; this server serves `tiny-chat`")
    expect(unknown.code).toBe("model_not_found")
    const malformed = await error(client.chat.completions.create({ model: "tiny-chat", messages: [{ role: "user", content: 7 as never }] }))
    expect(malformed).toBeInstanceOf(OpenAI.BadRequestError)
    expect(malformed.message).toContain("messages[0].content")
    const streaming = await error(client.chat.completions.create({ model: "tiny-chat", messages: [{ role: "user", content: "hi" }], stream: true }))
    expect(streaming.message).toContain("streaming is not supported")
    const long = await error(client.completions.create({ model: "tiny-chat", prompt: "Kodis ".repeat(200), max_tokens: 4 }))
    expect(long).toBeInstanceOf(OpenAI.BadRequestError)
    expect(long.message).toMatch(/context of 128 tokens|leaving no room/)
    const raw = await fetch(`${url}/chat/completions`, { method: "POST", body: "{not json" })
    expect(raw.status).toBe(400)
    expect(await raw.json()).toEqual({ error: { message: "the request body is not valid JSON", type: "invalid_request_error", param: null, code: null } })
  })
})

/** A proxy to the model server answering the i-th request (0-based, with its body) with `fault(i, body)` when it returns one. */
const faultProxy = async (fault: (i: number, body: string) => { status: number; body: string } | undefined) => {
  let n = 0
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on("data", (c: Buffer) => chunks.push(c))
    req.on("end", () => {
      const f = fault(n++, Buffer.concat(chunks).toString())
      if (f) {
        res.writeHead(f.status, { "content-type": "application/json" })
        res.end(f.body)
        return
      }
      fetch(`${url}${req.url!.replace(/^\/v1/, "")}`, { method: req.method, body: Buffer.concat(chunks), headers: { "content-type": "application/json" } }).then(async (r) => {
        res.writeHead(r.status, { "content-type": "application/json" })
        res.end(await r.text())
      })
    })
  })
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  return { base: `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1`, requests: () => n, close: () => new Promise((r) => server.close(r)) }
}

describe("the search's HTTP assistant", () => {
  const bank: typeof SearchBank.schema.Type = {
    entries: ["What age is Kodis?", "What is Kodis's job?"].map((text, i) => ({ text, divergence: 0.5 + i, diversity: null, cycle: 0 })),
    cycles: [],
    seedMean: 1,
  }
  const instructions = path.join(dir("pipe-instructions-"), "instructions.json")
  fs.writeFileSync(instructions, JSON.stringify({ request: "Here are some questions:\n{examples}\nAsk one more question like these.", criterion: "Is this about a person? Answer yes or no.\n{text}" }))
  const cycle = (baseUrl: string, logs: string[], over: Partial<SearchParams> = {}) =>
    Effect.runPromise(
      Effect.exit(
        divergenceSearch.spec.run({
          params: {
            ...contrastDefaults,
            ...searchDefaults,
            includePrompt: false,
            maxNewTokens: 6,
            generationsPerPrompt: 1,
            diversity: false,
            assistant: "http",
            baseUrl,
            model: "tiny-chat",
            apiKeyEnv: "",
            requests: 4,
            backoffSeconds: 0.05,
            retries: 2,
            ...over,
          },
          inputs: {
            start: { path: tinyChatDir, hash: "", size: 0 },
            compare: { path: tinyChatDir, hash: "", size: 0 },
            local: { path: tinyChatDir, hash: "", size: 0 },
            instructions: { path: instructions, hash: "", size: 0 },
            bank,
          },
          ctx: stageContext(dir("pipe-search-work-"), { logs }),
        }),
      ),
    )

  it("retries a server error, counts a malformed reply, and finishes the cycle", async () => {
    // the first request: a 500, then (retried) the real server; the third: a body that is not a chat completion
    const proxy = await faultProxy((i) => (i === 0 ? { status: 500, body: '{"error":{"message":"overloaded"}}' } : i === 3 ? { status: 200, body: "<html>gateway</html>" } : undefined))
    const logs: string[] = []
    const exit = await cycle(proxy.base, logs)
    await proxy.close()
    expect(Exit.isSuccess(exit)).toBe(true)
    const out = (exit as Exit.Success<typeof SearchBank.schema.Type>).value
    expect(proxy.requests()).toBe(5)
    expect(logs.some((l) => /HTTP 500: .*overloaded.*retrying in 0\.05 s \(attempt 2 of 3\)/.test(l))).toBe(true)
    expect(logs.some((l) => l.includes("malformed reply: the body is not JSON"))).toBe(true)
    const report = out.cycles[0]
    expect(report.requests).toBe(4)
    expect(report.malformedReplies).toBeGreaterThanOrEqual(1)
    expect(report.parsed).toBeGreaterThanOrEqual(1)
  }, 120_000)

  it("asks the criterion of every candidate: only a yes keeps it, a reply that is neither yes nor no is counted", async () => {
    // the criterion's replies, in turn: yes, no, something else
    let asked = 0
    const replies = ["Yes, it is.", "no", "Perhaps Kodis."]
    const proxy = await faultProxy((_, body) =>
      body.includes("Answer yes or no") ? { status: 200, body: JSON.stringify({ choices: [{ index: 0, message: { role: "assistant", content: replies[asked++ % 3] } }] }) } : undefined,
    )
    const exit = await cycle(proxy.base, [], { useCriterion: true, requests: 6 })
    await proxy.close()
    expect(Exit.isSuccess(exit)).toBe(true)
    const report = (exit as Exit.Success<typeof SearchBank.schema.Type>).value.cycles[0]
    const candidates = report.parsed - report.rejected.duplicate - report.rejected.length
    expect(asked).toBe(candidates)
    expect(candidates).toBeGreaterThanOrEqual(2)
    const yes = Math.ceil(candidates / 3)
    expect(report.rejected.criterion).toBe(candidates - yes)
    expect(report.rejected.malformedCriterion).toBe(Math.floor(candidates / 3))
    expect(report.admitted + report.rejected.divergence + report.rejected.similar).toBe(yes)
  }, 120_000)

  it("fails the cycle when the server keeps failing, and at once on a 401", async () => {
    const down = await faultProxy(() => ({ status: 503, body: "busy" }))
    const logs: string[] = []
    const exit = await cycle(down.base, logs)
    await down.close()
    expect(down.requests()).toBe(3)
    expect(Exit.isFailure(exit) && String(exit.cause)).toMatch(/HTTP 503: busy; gave up after 3 attempts/)
    const denied = await faultProxy(() => ({ status: 401, body: '{"error":{"message":"bad key"}}' }))
    const refused = await cycle(denied.base, [])
    await denied.close()
    expect(denied.requests()).toBe(1)
    expect(Exit.isFailure(refused) && String(refused.cause)).toMatch(/refused the request: HTTP 401: .*bad key/)
  }, 120_000)
})
