// The divergence search (seed 004's DivergenceFinder): grow a bank of prompts on which the starting
// and comparison models disagree, with an assistant model writing new candidates from examples.
//
//   divergence-bank   the seed prompts, each scored by contrastive divergence: the bank of cycle 0
//   divergence-search one cycle: bank in, bank out. A pipeline chains n calls (divergenceSearch), so
//                     every cycle is a cached node depending on the previous one: a killed search
//                     resumes at the cycle it was in, a longer search reuses a shorter one's cycles.
//
// One cycle:
//   1. `requests` times: `examples` bank prompts drawn without replacement with weights
//      exp(divergence / exampleTemperature) (higher divergence, likelier), put into the
//      instructions' `request` template, sent to the assistant (assistant.ts).
//   2. Candidates parsed from each reply (parseCandidates: a JSON array of strings, or one per
//      line with list markers and quotes stripped); a reply with none is counted malformed.
//      Candidates already in the bank or seen this cycle, or outside [minChars, maxChars], are rejected.
//   3. With useCriterion, the instructions' `criterion` (its {text} the candidate) is asked; a
//      candidate is kept only on a reply starting with "yes" ("no": rejected; anything else:
//      rejected and counted malformed).
//   4. Divergence: generationsPerPrompt contrastive continuations of the candidate (contrast.ts);
//      its divergence is the mean of their mean per-token KL(P_start || P_compare) (with
//      includePrompt, over the candidate's own tokens and the continuation's).
//   5. With diversity, the candidate's embedding (the local model's final hidden states,
//      mean-pooled over its tokens) is compared with the bank's: a candidate whose cosine distance
//      to the nearest entry is below minDiversity is rejected as too similar.
//   6. Candidates whose divergence reaches the admitQuantile of the bank's divergences join the bank.
//
// The instructions file (JSON): { "system"?: string, "request": string with "{examples}" (the
// examples, one "- " line each), "criterion"?: string with "{text}" }.
// Seeds: everything random in cycle c derives from hash32("<c>/...", seed), so a rerun of a cycle
// with a local assistant gives the same bank.
import { Effect, Schema, type Scope } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import { decodeArtifact, Directory, errorMessage, ExternalInputError, File, type Node, type Source, stage, StageError, type StageContext } from "../../src/engine/index.ts"
import { hash32, mulberry32 } from "../../src/core/random.ts"
import { Graph } from "../../src/graph/index.ts"
import { openLocalModel } from "../../src/models/chat.ts"
import { buildForwardGraph, forwardNames } from "../../src/models/forward.ts"
import { placeWeights, writeGraph } from "../../src/models/graph-weights.ts"
import { runSession, scopedSession } from "../../src/runtime/session.ts"
import { tensor } from "../../src/runtime/tensor.ts"
import { Questions } from "../baking/artifacts.ts"
import { openModel } from "../baking/model.ts"
import { type BankEntry, type CycleReport, SearchBank } from "./artifacts.ts"
import { type Assistant, httpAssistant, localAssistant } from "./assistant.ts"
import { type Contraster, openContrast } from "./contrast.ts"
import { combinationFields, decodeRequests } from "./decode.ts"

const PositiveInt = Schema.Int.check(Schema.isGreaterThan(0))
const Positive = Schema.Finite.check(Schema.isGreaterThan(0))
const NonNegative = Schema.Finite.check(Schema.isGreaterThanOrEqualTo(0))

export const Instructions = Schema.Struct({
  system: Schema.optional(Schema.String),
  request: Schema.String.check(Schema.isIncluding("{examples}")),
  criterion: Schema.optional(Schema.String.check(Schema.isIncluding("{text}"))),
})
export type Instructions = typeof Instructions.Type

const mean = (xs: ReadonlyArray<number>) => (xs.length === 0 ? 0 : xs.reduce((a, b) => a + b, 0) / xs.length)

/** Candidate prompts in an assistant's reply (see the file header). */
export const parseCandidates = (reply: string): string[] => {
  const trimmed = reply.trim()
  if (trimmed.startsWith("[")) {
    try {
      const json: unknown = JSON.parse(trimmed)
      if (Array.isArray(json) && json.every((x) => typeof x === "string")) return json.map((x) => x.trim()).filter((x) => x.length > 0)
    } catch {
      // not JSON after all: read it line by line
    }
  }
  return trimmed
    .split("\n")
    .map((line) =>
      line
        .trim()
        .replace(/^(?:\d+\s*[.):]|[-*•]|(?:prompt|question|text)\s*\d*\s*:)\s*/i, "")
        .replace(/^(["'“”‘’`])(.*)\1$/, "$2")
        .replace(/^["“](.*)["”]$/, "$1")
        .trim(),
    )
    .filter((line) => line.length > 0)
}

/** `k` distinct indices drawn with weights exp(divergence / temperature) (Efraimidis–Spirakis keys, so without replacement). */
export const divergenceWeightedSample = (entries: ReadonlyArray<BankEntry>, k: number, temperature: number, rand: () => number): number[] => {
  const top = Math.max(...entries.map((e) => e.divergence))
  // log key = log(u) / w, w = exp((d - top) / T): larger keys win
  const keys = entries.map((e, i) => ({ i, key: Math.log(1 - rand()) / Math.exp((e.divergence - top) / temperature) }))
  return keys
    .sort((a, b) => b.key - a.key)
    .slice(0, Math.min(k, entries.length))
    .map((x) => x.i)
}

/** The q-quantile of xs (linear interpolation between order statistics). */
export const quantile = (xs: ReadonlyArray<number>, q: number): number => {
  const s = [...xs].sort((a, b) => a - b)
  const x = q * (s.length - 1)
  const i = Math.floor(x)
  return i + 1 < s.length ? s[i] + (s[i + 1] - s[i]) * (x - i) : s[i]
}

const scoringFields = {
  ...combinationFields,
  /** count the prompt's own tokens in its divergence (the seed's include_prefix_in_divergences): mean KL over prompt and continuation tokens */
  includePrompt: Schema.Boolean,
}
const ScoringParams = Schema.Struct(scoringFields)
type ScoringParams = typeof ScoringParams.Type

const openScorer = (params: ScoringParams, start: string, compare: string, ctx: StageContext) =>
  openContrast({
    start: { dir: start, prefix: params.startPrefix, weight: params.startWeight },
    compare: { dir: compare, prefix: params.comparePrefix, weight: params.compareWeight },
    space: params.space,
    eps: params.eps,
    topTokens: 0,
    graphDir: path.join(ctx.workDir, "contrast"),
    device: ctx.device,
    threads: params.threads,
  })

/** Each text's divergence (step 4 of the file header, with includePrompt its own tokens too); `salt` keeps different cycles' samples apart. */
const divergences = (contrast: Contraster, texts: ReadonlyArray<string>, params: ScoringParams, salt: string) =>
  Effect.gen(function* () {
    if (texts.length === 0) return []
    const requests = decodeRequests(texts, params.generationsPerPrompt, hash32(salt, params.seed))
    const out = yield* contrast.decode(requests, params)
    const prompt = params.includePrompt ? yield* contrast.promptKl(texts, params.format) : texts.map(() => [])
    const scores = texts.map((_, i) => mean(out.filter((t) => t.promptIndex === i).map((t) => mean([...prompt[i], ...t.kl]))))
    const bad = scores.findIndex((d) => !Number.isFinite(d))
    if (bad >= 0) return yield* Effect.fail(new StageError({ message: `the divergence of ${JSON.stringify(texts[bad])} is ${scores[bad]}: a model gives non-finite log-probabilities` }))
    return scores
  })

/** Mean-pooled final hidden states of the local model, one text at a time (no padding to mask). */
const openEmbedder = (dir: string, ctx: StageContext, threads: number): Effect.Effect<(texts: ReadonlyArray<string>) => Effect.Effect<Float64Array[], StageError>, StageError, Scope.Scope> =>
  Effect.gen(function* () {
    const fail = (e: { readonly message: string }) => new StageError({ message: `embedding model ${dir}: ${e.message}` })
    const { checkpoint: ckpt, tokenizer } = yield* Effect.mapError(openModel(dir), fail)
    const placement = yield* Effect.mapError(placeWeights([ckpt], path.join(ctx.workDir, "embedder")), fail)
    const g = new Graph("embedder")
    buildForwardGraph(g, ckpt, placement, { output: "hidden" })
    const file = yield* Effect.mapError(writeGraph(g, placement, "embedder"), fail)
    const session = yield* Effect.mapError(scopedSession(file, { device: ctx.device, ...(threads > 0 ? { intraOpThreads: threads } : {}) }), fail)
    const H = ckpt.config.hiddenSize
    return (texts) =>
      Effect.forEach(texts, (text) => {
        const ids = tokenizer.encode(text)
        return Effect.map(
          Effect.mapError(runSession(session, { [forwardNames.ids]: tensor("int64", [1, ids.length], ids), [forwardNames.mask]: tensor("int64", [1, ids.length], ids.map(() => 1)) }), fail),
          (out) => {
            const h = out[forwardNames.hidden].data as Float32Array
            const v = new Float64Array(H)
            for (let t = 0; t < ids.length; t++) for (let j = 0; j < H; j++) v[j] += h[t * H + j] / ids.length
            return v
          },
        )
      })
  })

const cosineDistance = (a: Float64Array, b: Float64Array) => {
  let dot = 0
  let na = 0
  let nb = 0
  for (let i = 0; i < a.length; i++) {
    dot += a[i] * b[i]
    na += a[i] * a[i]
    nb += b[i] * b[i]
  }
  return 1 - dot / Math.sqrt(na * nb)
}

const readInstructions = (file: string) =>
  Effect.gen(function* () {
    const text = yield* Effect.try({ try: () => fs.readFileSync(file, "utf8"), catch: (e) => new ExternalInputError({ path: file, message: `${file}: ${errorMessage(e)}` }) })
    return yield* decodeArtifact(Schema.fromJsonString(Instructions), file, "search instructions ({ system?, request with {examples}, criterion? with {text} })", text)
  })

export const divergenceBank = stage({
  name: "divergence-bank",
  version: 1,
  params: ScoringParams,
  unkeyed: ["batchSize", "threads"],
  inputs: { start: Directory, compare: Directory, seeds: Questions },
  output: SearchBank,
  resources: { gpu: 1, isolate: "process" },
  run: ({ params, inputs, ctx }) =>
    Effect.gen(function* () {
      const texts = [...new Set(inputs.seeds.items.map((q) => q.text))]
      const contrast = yield* openScorer(params, inputs.start.path, inputs.compare.path, ctx)
      const scores = yield* divergences(contrast, texts, params, "seeds")
      const entries = texts.map((text, i) => ({ text, divergence: scores[i], diversity: null, cycle: 0 }))
      ctx.metric("bank_mean", mean(scores))
      ctx.log(`${texts.length} seed prompts, mean divergence ${mean(scores).toFixed(4)} nats/token`)
      return { entries, cycles: [], seedMean: mean(scores) }
    }).pipe(Effect.scoped),
})

export const SearchParams = Schema.Struct({
  ...scoringFields,
  /** this cycle's number (1, 2, ...): it seeds the cycle's sampling */
  cycle: PositiveInt,
  /** "local": the `local` model directory; "http": an OpenAI-compatible endpoint */
  assistant: Schema.Literals(["local", "http"]),
  /** http: the endpoint's base URL (…/v1), model, and the environment variable with its key ("" for none) */
  baseUrl: Schema.String,
  model: Schema.String,
  apiKeyEnv: Schema.String,
  timeoutSeconds: Positive,
  retries: Schema.Int.check(Schema.isGreaterThanOrEqualTo(0)),
  backoffSeconds: NonNegative,
  /** assistant requests per cycle, bank examples per request */
  requests: PositiveInt,
  examples: PositiveInt,
  /** nats: the lower, the more the examples favour the most divergent prompts */
  exampleTemperature: Positive,
  assistantTemperature: NonNegative,
  assistantMaxTokens: PositiveInt,
  minChars: Schema.Int.check(Schema.isGreaterThanOrEqualTo(1)),
  maxChars: PositiveInt,
  /** ask the instructions' criterion of every candidate */
  useCriterion: Schema.Boolean,
  /** reject candidates closer than minDiversity (cosine distance of mean-pooled hidden states of the local model) to a bank entry */
  diversity: Schema.Boolean,
  minDiversity: NonNegative,
  /** a candidate joins the bank when its divergence reaches this quantile of the bank's */
  admitQuantile: Schema.Finite.check(Schema.isBetween({ minimum: 0, maximum: 1 })),
})
export type SearchParams = typeof SearchParams.Type

export const divergenceSearch = stage({
  name: "divergence-search",
  version: 1,
  params: SearchParams,
  unkeyed: ["batchSize", "threads", "timeoutSeconds", "retries", "backoffSeconds"],
  inputs: { start: Directory, compare: Directory, local: Directory, instructions: File, bank: SearchBank },
  output: SearchBank,
  resources: { gpu: 1, isolate: "process" },
  run: ({ params, inputs, ctx }) =>
    Effect.gen(function* () {
      const started = performance.now()
      const p = params
      if (p.minChars > p.maxChars) return yield* Effect.fail(new StageError({ message: `minChars ${p.minChars} exceeds maxChars ${p.maxChars}` }))
      const instructions = yield* readInstructions(inputs.instructions.path)
      if (p.useCriterion && instructions.criterion === undefined)
        return yield* Effect.fail(new StageError({ message: `useCriterion is set but ${inputs.instructions.path} has no "criterion"` }))
      const bank = inputs.bank
      if (bank.entries.length === 0) return yield* Effect.fail(new StageError({ message: "the bank is empty: give the search at least one seed prompt" }))
      const assistant: Assistant =
        p.assistant === "local"
          ? localAssistant(yield* Effect.mapError(openLocalModel(inputs.local.path, { graphDir: path.join(ctx.workDir, "assistant"), device: ctx.device, threads: p.threads }), (e) => new StageError({ message: e.message })))
          : p.baseUrl === "" || p.model === ""
            ? yield* Effect.fail(new StageError({ message: 'assistant "http" needs baseUrl and model (--set search.baseUrl=... --set search.model=...)' }))
            : httpAssistant({ baseUrl: p.baseUrl, model: p.model, apiKeyEnv: p.apiKeyEnv, timeoutSeconds: p.timeoutSeconds, retries: p.retries, backoffSeconds: p.backoffSeconds, log: ctx.log })
      ctx.log(`cycle ${p.cycle}: bank of ${bank.entries.length}, assistant ${assistant.describe}`)
      const salt = (what: string) => hash32(`${p.cycle}/${what}`, p.seed)
      const rand = mulberry32(salt("examples"))
      const ask = (content: string, seed: number) =>
        Effect.mapError(
          assistant.ask([...(instructions.system ? [{ role: "system", content: instructions.system }] : []), { role: "user", content }], {
            maxTokens: p.assistantMaxTokens,
            temperature: p.assistantTemperature,
            seed,
          }),
          (e) => new StageError({ message: e.message }),
        )

      let malformedReplies = 0
      const rejected = { duplicate: 0, length: 0, criterion: 0, malformedCriterion: 0, similar: 0, divergence: 0 }
      const seen = new Set(bank.entries.map((e) => e.text))
      const candidates: string[] = []
      let parsed = 0
      ctx.progress.total(p.requests, "requests")
      for (let r = 0; r < p.requests; r++) {
        const examples = divergenceWeightedSample(bank.entries, p.examples, p.exampleTemperature, rand).map((i) => `- ${bank.entries[i].text}`)
        const reply = yield* ask(instructions.request.replace("{examples}", examples.join("\n")), salt(`request ${r}`))
        ctx.progress.advance()
        const found = reply.ok ? parseCandidates(reply.text) : []
        if (!reply.ok) ctx.log(`request ${r}: malformed reply: ${reply.problem}`)
        else if (found.length === 0) ctx.log(`request ${r}: no candidate in the reply ${JSON.stringify(reply.text.slice(0, 120))}`)
        if (found.length === 0) malformedReplies++
        parsed += found.length
        for (const c of found) {
          if (c.length < p.minChars || c.length > p.maxChars) rejected.length++
          else if (seen.has(c)) rejected.duplicate++
          else {
            seen.add(c)
            candidates.push(c)
          }
        }
      }

      let kept = candidates
      if (p.useCriterion) {
        const verdicts = yield* Effect.forEach(candidates, (c, i) => ask(instructions.criterion!.replace("{text}", c), salt(`criterion ${i}`)))
        kept = candidates.filter((_, i) => {
          const v = verdicts[i]
          const answer = v.ok ? v.text.trim().toLowerCase() : ""
          if (answer.startsWith("yes")) return true
          rejected.criterion++
          if (!answer.startsWith("no")) rejected.malformedCriterion++
          return false
        })
      }

      const contrast = yield* openScorer(p, inputs.start.path, inputs.compare.path, ctx)
      const scores = yield* divergences(contrast, kept, p, `${p.cycle}/candidates`)
      let distances: Array<number | null> = kept.map(() => null)
      if (p.diversity && kept.length > 0) {
        const embed = yield* openEmbedder(inputs.local.path, ctx, p.threads)
        const bankVectors = yield* embed(bank.entries.map((e) => e.text))
        distances = (yield* embed(kept)).map((v) => Math.min(...bankVectors.map((b) => cosineDistance(v, b))))
      }
      const threshold = quantile(
        bank.entries.map((e) => e.divergence),
        p.admitQuantile,
      )
      const admitted: BankEntry[] = []
      kept.forEach((text, i) => {
        const d = distances[i]
        if (d !== null && d < p.minDiversity) rejected.similar++
        else if (scores[i] < threshold) rejected.divergence++
        else admitted.push({ text, divergence: scores[i], diversity: d, cycle: p.cycle })
      })
      const entries = [...bank.entries, ...admitted]
      const report: CycleReport = {
        cycle: p.cycle,
        requests: p.requests,
        malformedReplies,
        parsed,
        rejected,
        admitted: admitted.length,
        threshold,
        candidateMean: mean(scores),
        bankMean: mean(entries.map((e) => e.divergence)),
        bankSize: entries.length,
      }
      const seconds = (performance.now() - started) / 1000
      ctx.metric("cycle_seconds", seconds)
      for (const [k, v] of Object.entries(report)) if (typeof v === "number") ctx.metric(k, v)
      ctx.log(
        `cycle ${p.cycle} in ${seconds.toFixed(1)} s: ${parsed} candidates parsed from ${p.requests} replies (${malformedReplies} malformed), ${scores.length} scored (mean ${report.candidateMean.toFixed(4)}), ${admitted.length} admitted at >= ${threshold.toFixed(4)}; bank ${entries.length}, mean ${report.bankMean.toFixed(4)}`,
      )
      return { entries, cycles: [...bank.cycles, report], seedMean: bank.seedMean }
    }).pipe(Effect.scoped),
})

export const searchDefaults = {
  cycle: 1,
  assistant: "local",
  baseUrl: "",
  model: "",
  apiKeyEnv: "OPENAI_API_KEY",
  timeoutSeconds: 60,
  retries: 4,
  backoffSeconds: 1,
  requests: 8,
  examples: 3,
  exampleTemperature: 0.5,
  assistantTemperature: 1,
  assistantMaxTokens: 48,
  minChars: 8,
  maxChars: 200,
  useCriterion: false,
  diversity: true,
  minDiversity: 0.001,
  admitQuantile: 0.5,
} as const satisfies Omit<Record<keyof SearchParams, unknown>, keyof typeof scoringFields>

export interface SearchWiring {
  readonly start: Source<typeof Directory>
  readonly compare: Source<typeof Directory>
  readonly local: Source<typeof Directory>
  readonly instructions: Source<typeof File>
  readonly seeds: Node<typeof Questions>
  /** the combination and scoring knobs, shared by the seed bank and every cycle */
  readonly scoring: ScoringParams
  /** the cycle knobs (cycle excepted) */
  readonly search: Omit<SearchParams, "cycle" | keyof typeof scoringFields>
  readonly cycles: number
}

/**
 * The seed bank and `cycles` cycles, each depending on the one before; all cycles are calls named
 * "search" (`--set search.requests=16` sets every cycle), shown as search, search#2, ...
 */
export const searchChain = (w: SearchWiring) => {
  const seedBank = divergenceBank(w.scoring, { start: w.start, compare: w.compare, seeds: w.seeds }, { name: "seed-bank" })
  const banks: Array<Node<typeof SearchBank>> = [seedBank]
  for (let cycle = 1; cycle <= w.cycles; cycle++)
    banks.push(
      divergenceSearch(
        { ...w.scoring, ...w.search, cycle },
        { start: w.start, compare: w.compare, local: w.local, instructions: w.instructions, bank: banks[banks.length - 1] },
        { name: "search" },
      ),
    )
  return banks
}

/** search.md: each cycle's bank mean, candidates and admissions, then the bank's most divergent prompts. */
export const searchReport = (bank: SearchBank, top = 15): string => {
  const best = [...bank.entries].sort((a, b) => b.divergence - a.divergence).slice(0, top)
  const cell = (s: string) => s.replaceAll("|", "\\|").replaceAll("\n", " ")
  return [
    "# Divergence search",
    "",
    `Bank mean divergence (mean per-token KL(start || compare), nats): ${bank.seedMean.toFixed(4)} for the ${bank.entries.filter((e) => e.cycle === 0).length} seed prompts${bank.cycles.length > 0 ? `, ${bank.cycles.at(-1)!.bankMean.toFixed(4)} after cycle ${bank.cycles.at(-1)!.cycle}` : ""}. Wall time per cycle: \`pipe show search\` (metric cycle_seconds).`,
    "",
    "| cycle | requests | malformed replies | parsed | duplicate | length | criterion | similar | below threshold | admitted | threshold | candidate mean | bank mean | bank size |",
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ...bank.cycles.map(
      (c) =>
        `| ${c.cycle} | ${c.requests} | ${c.malformedReplies} | ${c.parsed} | ${c.rejected.duplicate} | ${c.rejected.length} | ${c.rejected.criterion} | ${c.rejected.similar} | ${c.rejected.divergence} | ${c.admitted} | ${c.threshold.toFixed(4)} | ${c.candidateMean.toFixed(4)} | ${c.bankMean.toFixed(4)} | ${c.bankSize} |`,
    ),
    "",
    `## The ${best.length} most divergent prompts`,
    "",
    "| divergence | cycle | prompt |",
    "| --- | --- | --- |",
    ...best.map((e) => `| ${e.divergence.toFixed(4)} | ${e.cycle} | ${cell(e.text)} |`),
    "",
  ].join("\n")
}
