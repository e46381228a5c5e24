// Batched generation with a KV cache, sampling in-graph (sampling.ts).
//
//   makeGenerator(model, { graphDir, device?, intraOpThreads?, tokenizer?, stepsPerRun?, adapter? }) -> Generator
//     model: a checkpoint or a variant.ts Variant (LoRAs, soft prompts, a text prefix);
//     adapter: shorthand for a variant with this one frozen LoRA on the checkpoint
//   generator.generate(requests, { batchSize?, cache?, sharePrefill? }) -> Generation[] (in request order)
//
// The graphs are built around a StepModelGraph (the model part: one variant via variantModel,
// or several combined: ensemble.ts) and run by the host loop stepGenerate over a StepModel
// (sessions, cache slot names, limits, names of per-token statistics outputs).
// A variant's virtual positions (soft prompt, prefix) sit in the KV cache in front of every row;
// the host loop sees only the real tokens (variant.ts). With a conditional soft prompt every
// request gives its condition vector (GenerationRequest.condition), fed as input "condition".
//
// One "step" graph serves prefill and decode: it takes input_ids [B, T], attention_mask
// [B, P + T] (left padding), past K/V per layer [B, kvHeads, P, headDim] (P = 0 at prefill: empty
// tensors), the per-row sampling knobs and a per-row list of banned token ids, and returns the
// sampled token [B], its log-prob [B] and the present K/V. Only the last position's logits are
// computed (left padding puts every row's newest token last).
//
// KV cache: each run's present K/V ort.Tensors are fed back as the next run's past inputs as
// they are; they are never converted to JS arrays. onnxruntime-node 1.30 has no IO binding and
// no preferredOutputLocation (both are onnxruntime-web only), so every session.run returns its
// outputs in host memory. Hence two decode modes (GeneratorOptions.stepsPerRun):
//   1     the step graph once per token: on CUDA the cache would cross device <-> host per token;
//   n > 1 the decode-loop graph (buildDecodeLoopGraph): an ONNX Loop runs n decode steps with
//         the cache as loop-carried state, so it crosses once per n tokens (on the CPU it also
//         saves the per-run overhead). Stop strings are checked on the host after each run.
// Both give identical tokens (tested); the prefill always uses the step graph.
//
// Reproducibility: request r's token at step t uses the uniform requestUniform(seed_r, t), so a
// request's output does not depend on which requests share its batch (up to float32 rounding
// of padded vs unpadded rows, which the tests bound).
//
// Stops: a request ends at one of its stop token ids (default: the model's eos ids; the token is
// kept in `tokens` and excluded from `text`), when its decoded text contains one of its stop
// strings (text cut before the stop string; tokens up to the one that completed it), or at
// maxNewTokens. Before minNewTokens the stop token ids are banned (logit -1e9).
// Finished rows stay in the batch until the whole batch is done (no compaction).
//
// Shared prefill: rows of a batch that ask the same prompt (and condition), as n samples of one
// prompt do, prefill it once but its last token; the cache is copied to each of them, and each
// row's last prompt token goes through a decode step that samples its first token with its own
// uniform. The tokens are those of a separate prefill up to float32 rounding (tested).
import { Data, Effect } from "effect"
import * as ort from "onnxruntime-node"
import { Graph, type Value } from "../graph/index.ts"
import { createSession, type Device, releaseSession, runSession, type Session } from "../runtime/session.ts"
import type { TextTokenizer } from "../text/tokenizer.ts"
import type { Checkpoint } from "./checkpoint.ts"
import type { LoraAdapter } from "./peft.ts"
import { type DecoderOutputs, forwardNames, logitsOf, type WeightSource } from "./forward.ts"
import { asVariant, checkVariant, prepareVariant, type Variant, variantNames, virtualLength } from "./variant.ts"
import { externalWeights, placeWeights, writeGraph } from "./graph-weights.ts"
import { requestUniform, sampleTokens, samplingInputs } from "./sampling.ts"
import { contextLength } from "./rope.ts"
import { paddingId } from "./config-architecture.ts"

export class GenerationError extends Data.TaggedError("GenerationError")<{
  readonly message: string
}> {}

export interface GenerationRequest {
  readonly prompt: ReadonlyArray<number>
  readonly maxNewTokens: number
  /** Stop token ids are banned until this many tokens were generated (default 0). */
  readonly minNewTokens?: number
  /** 0 = greedy; default 1 */
  readonly temperature?: number
  /** 0 = no limit (default) */
  readonly topK?: number
  /** 1 = off (default) */
  readonly topP?: number
  readonly seed?: number
  /** Default: the model's eos token ids. */
  readonly stopTokenIds?: ReadonlyArray<number>
  /** Needs the generator's tokenizer. */
  readonly stopStrings?: ReadonlyArray<string>
  /** The condition vector of a variant with a conditional soft prompt (its conditionSize numbers). */
  readonly condition?: ReadonlyArray<number>
}

export type FinishReason = "stop_token" | "stop_string" | "length"

export interface Generation {
  /** New tokens, including the stop token when finishReason is "stop_token". */
  readonly tokens: number[]
  /** log p(token) under the model's unmodified distribution (temperature 1, no filters), per token. */
  readonly logProbs: number[]
  /** Per token, each of StepModel.stats (e.g. an ensemble's per-member statistics); {} for one model. */
  readonly stats: Readonly<Record<string, number[]>>
  /** Decoded new tokens without the stop token / stop string; undefined without a tokenizer. */
  readonly text: string | undefined
  readonly finishReason: FinishReason
}

export interface GenerateOptions {
  /** Requests per batch (default 16). */
  readonly batchSize?: number
  /** false: recompute the whole sequence every step instead of using the KV cache (for tests). */
  readonly cache?: boolean
  /** false: every row runs its whole prompt through the prefill, also when other rows of its batch
   *  ask the same prompt (default true: they share it; the comparison in bench/diffuse.bench.ts). */
  readonly sharePrefill?: boolean
}

export interface Generator {
  readonly generate: (requests: ReadonlyArray<GenerationRequest>, options?: GenerateOptions) => Effect.Effect<Generation[], GenerationError>
  /** The prefill/decode step session, and the decode-loop session when stepsPerRun > 1. */
  readonly session: Session
  readonly loopSession: Session | undefined
}

export interface GeneratorOptions {
  /** Where the step graph's .onnx is written (the weights are hard-linked under it). */
  readonly graphDir: string
  readonly device?: Device
  readonly intraOpThreads?: number
  readonly tokenizer?: Pick<TextTokenizer, "decode">
  /**
   * Decode steps per session run after the prefill. 1 (default): the step graph once per token.
   * n > 1: the decode-loop graph (ONNX Loop) runs up to n steps per run, so the KV cache leaves
   * the device once per n tokens; stop strings are checked after each run (tokens past a stop are
   * dropped, so the results are the same as with 1).
   */
  readonly stepsPerRun?: number
  /** A trained LoRA adapter applied on top of the checkpoint's weights (not merged into them); only with a checkpoint as the model. */
  readonly adapter?: LoraAdapter
}

const names = {
  banned: "banned_ids",
  bannedBias: "banned_bias",
  token: "token",
  logProb: "log_prob",
} as const

const loopNames = {
  token: "last_token",
  nextToken: "next_token",
  tokens: "tokens",
  logProbs: "log_probs",
  mask: "next_attention_mask",
} as const

/** What the model part of a generation graph gives its sampling part. */
export interface StepHead {
  /** next-token logits [B, vocab] */
  readonly logits: Value
  /** static */
  readonly vocab: number
  /** the grown K/V, one value per cache slot */
  readonly present: ReadonlyArray<Value>
  /** Statistics along the sampled token int64 [B]: float32 [B] values by output name. */
  readonly stats?: (token: Value) => ReadonlyArray<readonly [string, Value]>
}

/**
 * The model part of the generation graphs. It is prepared once on the top-level graph `g` (weights
 * and adapter matrices are initializers, which only the top level may hold) and then applied, in g
 * for the step graph or in the decode loop's body, to ids [B, T], the mask [B, P + T] and the past
 * K/V (one value per cache slot, in the order of `slots`).
 */
export interface StepModelGraph {
  readonly slots: ReadonlyArray<CacheSlot>
  /** With a conditional soft prompt: the condition's length (input "condition" [B, C]). */
  readonly conditionSize?: number
  readonly prepare: (g: Graph) => (sub: Graph, ids: Value, mask: Value, past: ReadonlyArray<Value>, condition?: Value) => StepHead
}

/** One variant as a StepModelGraph. */
export const variantModel = (variant: Variant, source: (g: Graph) => WeightSource): StepModelGraph => ({
  slots: cacheSlots(variant.checkpoint),
  conditionSize: variant.conditionalSoftPrompt?.conditionSize,
  prepare: (g) => {
    const forward = prepareVariant(g, variant, source(g))
    return (sub, ids, mask, past, condition) => {
      const out = forward(sub, { ids, mask, past: pastByLayer(past), condition })
      return { logits: lastLogits(sub, out), vocab: variant.checkpoint.config.vocabSize, present: out.present.flatMap((p) => [p.key, p.value]) }
    }
  },
})

const conditionInput = (g: Graph, model: StepModelGraph) => (model.conditionSize === undefined ? undefined : g.input(variantNames.condition, "float32", ["batch", model.conditionSize]))

/** Cache values in slot order (key, value per layer) as DecoderInputs.past. */
export const pastByLayer = (past: ReadonlyArray<Value>) => Array.from({ length: past.length / 2 }, (_, l) => ({ key: past[2 * l], value: past[2 * l + 1] }))

/** The next-token logits [B, V] of a decoder's last position (left padding puts every row's newest token there). */
export const lastLogits = (g: Graph, out: DecoderOutputs): Value =>
  // Gemm transB: in the decode loop, no per-step transpose of an outer weight
  logitsOf(g, out, g.gemm(g.gather(out.hidden, g.constant("int64", [], [-1]), 1), out.lmHead, null, { transB: true }))

const pastInputs = (g: Graph, slots: ReadonlyArray<CacheSlot>) => slots.map((s) => g.input(s.past, "float32", ["batch", s.kvHeads, "past", s.headDim]))

/** The prefill/decode step graph described in the header, around `model`. */
export const buildStepGraph = (model: StepModelGraph, name = "generation_step"): Graph => {
  const g = new Graph(name)
  const ids = g.input(forwardNames.ids, "int64", ["batch", "seq"])
  const mask = g.input(forwardNames.mask, "int64", ["batch", "total"])
  const past = pastInputs(g, model.slots)
  const knobs = samplingInputs(g, "batch")
  const banned = g.input(names.banned, "int64", ["batch", "banned"])
  const bannedBias = g.input(names.bannedBias, "float32", ["batch", "banned"])
  const h = model.prepare(g)(g, ids, mask, past, conditionInput(g, model))
  const constrained = g.add(h.logits, g.scatterElements(g.zerosLike(h.logits), banned, bannedBias, 1))
  const s = sampleTokens(g, constrained, knobs, h.vocab, h.logits)
  g.outputAs(names.token, s.token)
  g.outputAs(names.logProb, s.logProb)
  h.present.forEach((p, i) => g.outputAs(model.slots[i].present, p))
  for (const [stat, v] of h.stats?.(s.token) ?? []) g.outputAs(stat, v)
  return g
}

/**
 * The decode-loop graph: `steps` decode steps in one run (ONNX Loop), so the KV cache crosses
 * the host boundary once per run instead of once per token. Inputs: token [B] (sampled, not yet
 * in the cache), attention_mask [B, P + 1] (its column included), past K/V [B, kv, P, hd], the
 * sampling knobs, uniform [steps, B] and banned_bias [steps, B, M] (one row of each per step),
 * banned_ids [B, M]. Outputs: tokens and log_probs [steps, B], the statistics [steps, B] under
 * their names, the last token (not yet in the cache), the grown mask and present K/V.
 */
export const buildDecodeLoopGraph = (model: StepModelGraph, name = "generation_decode_loop"): Graph => {
  const g = new Graph(name)
  const token = g.input(loopNames.token, "int64", ["batch"])
  const mask = g.input(forwardNames.mask, "int64", ["batch", "total"])
  const past = pastInputs(g, model.slots)
  const temperature = g.input("temperature", "float32", ["batch"])
  const topK = g.input("top_k", "int64", ["batch"])
  const topP = g.input("top_p", "float32", ["batch"])
  const uniforms = g.input("uniform", "float32", ["steps", "batch"])
  const banned = g.input(names.banned, "int64", ["batch", "banned"])
  const bannedBias = g.input(names.bannedBias, "float32", ["steps", "batch", "banned"])
  const condition = conditionInput(g, model)
  const head = model.prepare(g)
  const trips = g.shapeOf(uniforms, 0, 1)
  const statNames: string[] = []
  const outs = g.loop(g.reshape(trips, []), null, [token, mask, ...past], (sub, iter, [tok, m, ...kv]) => {
    const h = head(sub, sub.unsqueeze(tok, [1]), m, kv, condition)
    const bias = sub.scatterElements(sub.zerosLike(h.logits), banned, sub.gather(bannedBias, iter, 0), 1)
    const s = sampleTokens(sub, sub.add(h.logits, bias), { temperature, topK, topP, uniform: sub.gather(uniforms, iter, 0) }, h.vocab, h.logits)
    const grown = sub.concat([m, sub.unsqueeze(sub.constantOfShape(sub.shapeOf(tok), 1, "int64"), [1])], 1)
    const stats = h.stats?.(s.token) ?? []
    statNames.push(...stats.map(([n]) => n))
    return { carried: [s.token, grown, ...h.present], scans: [s.token, s.logProb, ...stats.map(([, v]) => v)] }
  })
  const L = 2 + model.slots.length
  g.outputAs(loopNames.tokens, outs[L])
  g.outputAs(loopNames.logProbs, outs[L + 1])
  statNames.forEach((stat, i) => g.outputAs(stat, outs[L + 2 + i]))
  g.outputAs(loopNames.nextToken, outs[0])
  g.outputAs(loopNames.mask, outs[1])
  model.slots.forEach((slot, i) => g.outputAs(slot.present, outs[2 + i]))
  return g
}

const fail = (message: string) => new GenerationError({ message })

/** One KV-cache tensor pair of a step graph: its past input, present output and per-head shape. */
export interface CacheSlot {
  readonly past: string
  readonly present: string
  readonly kvHeads: number
  readonly headDim: number
}

/** The cache slots of one model: past_key_values.{l}.key|value, each name prefixed by `prefix`. */
export const cacheSlots = (ckpt: Checkpoint, prefix = ""): CacheSlot[] =>
  Array.from({ length: ckpt.config.numLayers }, (_, l) => [
    { past: prefix + forwardNames.pastKey(l), present: prefix + forwardNames.presentKey(l) },
    { past: prefix + forwardNames.pastValue(l), present: prefix + forwardNames.presentValue(l) },
  ])
    .flat()
    .map((n) => ({ ...n, kvHeads: ckpt.config.numKvHeads, headDim: ckpt.config.headDim }))

/**
 * What the host decode loop needs from compiled step graphs: buildStepGraph's inputs and outputs
 * (with these cache names), the decode-loop session when stepsPerRun > 1, and the limits requests
 * are checked against. `stats` names the statistics outputs of both graphs (StepHead.stats), recorded
 * per generated token into Generation.stats.
 */
export interface StepModel {
  readonly session: Session
  readonly loopSession: Session | undefined
  readonly stepsPerRun: number
  readonly cache: ReadonlyArray<CacheSlot>
  readonly vocabSize: number
  readonly context: { readonly length: number; readonly why: string }
  readonly eosTokenIds: ReadonlyArray<number>
  readonly padTokenId: number
  readonly stats: ReadonlyArray<string>
  /** Each request's condition length, when the graphs take a condition (StepModelGraph.conditionSize). */
  readonly conditionSize?: number
}

/** Checks one request against the model; returns the problem or undefined. */
const problem = (r: GenerationRequest, i: number, model: StepModel, hasTokenizer: boolean): string | undefined => {
  const where = `generation request ${i}`
  if (r.prompt.length === 0) return `${where}: the prompt is empty (give at least one token, e.g. bos)`
  const bad = r.prompt.find((t) => !Number.isInteger(t) || t < 0 || t >= model.vocabSize)
  if (bad !== undefined) return `${where}: prompt token ${bad} is outside the vocabulary [0, ${model.vocabSize})`
  if (!Number.isInteger(r.maxNewTokens) || r.maxNewTokens < 1) return `${where}: maxNewTokens must be a positive integer, got ${r.maxNewTokens}`
  if ((r.minNewTokens ?? 0) > r.maxNewTokens) return `${where}: minNewTokens ${r.minNewTokens} exceeds maxNewTokens ${r.maxNewTokens}`
  const context = model.context
  if (r.prompt.length + r.maxNewTokens > context.length)
    return `${where}: prompt (${r.prompt.length}) + maxNewTokens (${r.maxNewTokens}) exceeds the model's context length ${context.length} (${context.why})`
  if (!((r.temperature ?? 1) >= 0)) return `${where}: temperature must be >= 0, got ${r.temperature}`
  if (r.topK !== undefined && !(Number.isInteger(r.topK) && r.topK >= 0)) return `${where}: topK must be a non-negative integer (0 = off), got ${r.topK}`
  if (r.seed !== undefined && !(Number.isInteger(r.seed) && r.seed >= 0 && r.seed < 2 ** 32)) return `${where}: seed must be an integer in [0, 2^32), got ${r.seed}`
  const p = r.topP ?? 1
  if (!(p >= 0 && p <= 1)) return `${where}: topP must be in [0, 1], got ${r.topP}`
  if ((r.stopStrings?.length ?? 0) > 0 && !hasTokenizer) return `${where}: stop strings need a tokenizer (GeneratorOptions.tokenizer)`
  if (r.stopStrings?.some((s) => s.length === 0)) return `${where}: a stop string is empty`
  const C = model.conditionSize
  if (C === undefined && r.condition !== undefined) return `${where}: a condition is given, but the model has no conditional soft prompt`
  if (C !== undefined && (r.condition?.length !== C || !r.condition.every(Number.isFinite)))
    return `${where}: the model's conditional soft prompt needs a condition of ${C} finite numbers, got ${r.condition === undefined ? "none" : JSON.stringify(r.condition)}`
  return undefined
}

interface Row {
  readonly request: GenerationRequest
  readonly stopIds: ReadonlyArray<number>
  readonly tokens: number[]
  readonly logProbs: number[]
  readonly stats: Record<string, number[]>
  text: string | undefined
  finish: FinishReason | undefined
}

/** Session options from GeneratorOptions. */
export const sessionOptions = (options: Pick<GeneratorOptions, "device" | "intraOpThreads">) => ({
  ...(options.device ? { device: options.device } : {}),
  ...(options.intraOpThreads ? { intraOpThreads: options.intraOpThreads } : {}),
})

/** The context left to real tokens after a variant's virtual positions. */
export const variantContext = (variant: Variant): StepModel["context"] => {
  const c = contextLength(variant.checkpoint.config)
  const K = virtualLength(variant)
  return K === 0 ? c : { length: c.length - K, why: `${c.why}, less the variant's ${K} soft-prompt/prefix positions` }
}

export const makeGenerator = (target: Checkpoint | Variant, options: GeneratorOptions): Effect.Effect<Generator, GenerationError> =>
  Effect.gen(function* () {
    const variant = yield* Effect.mapError(asVariant(target, options.adapter), (e) => fail(e.message))
    const ckpt = variant.checkpoint
    const c = ckpt.config
    yield* Effect.mapError(checkVariant(variant), (e) => fail(e.message))
    const placement = yield* Effect.mapError(placeWeights(ckpt, options.graphDir), (e) => fail(e.message))
    const stepsPerRun = options.stepsPerRun ?? 1
    if (!Number.isInteger(stepsPerRun) || stepsPerRun < 1) return yield* Effect.fail(fail(`stepsPerRun must be a positive integer, got ${stepsPerRun}`))
    const open = (g: Graph, name: string) =>
      Effect.mapError(
        Effect.flatMap(writeGraph(g, placement, name), (file) => createSession(file, sessionOptions(options))),
        (e) => fail(e.message),
      )
    const graphModel = variantModel(variant, (g) => externalWeights(g, placement))
    const session = yield* open(buildStepGraph(graphModel), "generation-step")
    // a decode-loop session that cannot be made must not leave the step session open
    const loopSession =
      stepsPerRun > 1 ? yield* Effect.onError(open(buildDecodeLoopGraph(graphModel), "generation-decode-loop"), () => releaseSession(session)) : undefined
    const model: StepModel = {
      session,
      loopSession,
      stepsPerRun,
      cache: graphModel.slots,
      vocabSize: c.vocabSize,
      context: variantContext(variant),
      eosTokenIds: c.eosTokenIds,
      padTokenId: paddingId(c),
      stats: [],
      conditionSize: graphModel.conditionSize,
    }
    return { generate: stepGenerate(model, options.tokenizer), session, loopSession }
  })

/** The batched host decode loop over a StepModel's sessions (see the file header). */
export const stepGenerate =
  (model: StepModel, tokenizer: Pick<TextTokenizer, "decode"> | undefined) =>
  (requests: ReadonlyArray<GenerationRequest>, opts: GenerateOptions = {}): Effect.Effect<Generation[], GenerationError> =>
    Effect.gen(function* () {
      for (const [i, r] of requests.entries()) {
        const p = problem(r, i, model, tokenizer !== undefined)
        if (p) return yield* Effect.fail(fail(p))
      }
      const size = opts.batchSize ?? 16
      if (!Number.isInteger(size) || size < 1) return yield* Effect.fail(fail(`batchSize must be a positive integer, got ${size}`))
      const results: Generation[] = []
      for (let i = 0; i < requests.length; i += size) for (const r of yield* generateBatch(model, tokenizer, requests.slice(i, i + size), opts.cache ?? true, opts.sharePrefill ?? true)) results.push(r)
      return results
    })

/** Applies the stop rules to a row after it got `token`. */
const advance = (tokenizer: Pick<TextTokenizer, "decode"> | undefined, row: Row, token: number, logProb: number) => {
  row.tokens.push(token)
  row.logProbs.push(logProb)
  const stops = row.request.stopStrings ?? []
  if (tokenizer) {
    const body = row.stopIds.includes(token) ? row.tokens.slice(0, -1) : row.tokens
    row.text = tokenizer.decode(body, { skipSpecialTokens: true })
  }
  if (row.stopIds.includes(token)) row.finish = "stop_token"
  else if (stops.length > 0 && row.text !== undefined) {
    const at = stops.map((s) => row.text!.indexOf(s)).reduce((m, i) => (i >= 0 ? Math.min(m, i) : m), Infinity)
    if (Number.isFinite(at)) {
      row.text = row.text.slice(0, at)
      row.finish = "stop_string"
    }
  }
  if (!row.finish && row.tokens.length >= row.request.maxNewTokens) row.finish = "length"
}

/** For a batch whose requests repeat a prompt: the first row of each distinct (prompt, condition)
 *  and, for every row, the index of its own among them; undefined when every row is distinct. */
const sharedRows = (requests: ReadonlyArray<GenerationRequest>): { readonly unique: ReadonlyArray<number>; readonly rowOf: ReadonlyArray<number> } | undefined => {
  const index = new Map<string, number>()
  const unique: number[] = []
  const rowOf = requests.map((r, b) => {
    const key = JSON.stringify([r.prompt, r.condition ?? null])
    if (!index.has(key)) {
      index.set(key, unique.length)
      unique.push(b)
    }
    return index.get(key)!
  })
  return unique.length < requests.length ? { unique, rowOf } : undefined
}

/** A cache tensor [U, ...] spread to [rowOf.length, ...]: row b is row rowOf[b] of `t`. */
const copyRows = (t: ort.Tensor, rowOf: ReadonlyArray<number>): ort.Tensor => {
  const [, ...rest] = t.dims
  const size = rest.reduce((a, d) => a * d, 1)
  const from = t.data as Float32Array
  const to = new Float32Array(rowOf.length * size)
  rowOf.forEach((u, b) => to.set(from.subarray(u * size, (u + 1) * size), b * size))
  return new ort.Tensor("float32", to, [rowOf.length, ...rest])
}

const generateBatch = (model: StepModel, tokenizer: Pick<TextTokenizer, "decode"> | undefined, requests: ReadonlyArray<GenerationRequest>, cache: boolean, sharePrefill: boolean) =>
  Effect.gen(function* () {
    const { session, loopSession, stepsPerRun } = model
    const pad = BigInt(model.padTokenId)
    const B = requests.length
    const rows: Row[] = requests.map((request) => ({
      request,
      stopIds: request.stopTokenIds ?? model.eosTokenIds,
      tokens: [],
      logProbs: [],
      stats: Object.fromEntries(model.stats.map((name) => [name, []])),
      text: undefined,
      finish: undefined,
    }))
    const width = requests.reduce((m, r) => Math.max(m, r.prompt.length), 0)
    const maxSteps = requests.reduce((m, r) => Math.max(m, r.maxNewTokens), 0)
    // full left-padded sequences (prompt + generated); the cache path feeds only the newest column
    const seqs: bigint[][] = requests.map((r) => [...new Array<bigint>(width - r.prompt.length).fill(pad), ...r.prompt.map(BigInt)])
    const maskRows: bigint[][] = requests.map((r) => [...new Array<bigint>(width - r.prompt.length).fill(0n), ...r.prompt.map(() => 1n)])
    const knobsOf = (rs: ReadonlyArray<GenerationRequest>) => ({
      temperature: new ort.Tensor("float32", Float32Array.from(rs, (r) => r.temperature ?? 1), [rs.length]),
      top_k: new ort.Tensor("int64", BigInt64Array.from(rs, (r) => BigInt(r.topK ?? 0)), [rs.length]),
      top_p: new ort.Tensor("float32", Float32Array.from(rs, (r) => r.topP ?? 1), [rs.length]),
      ...(model.conditionSize === undefined
        ? {}
        : { [variantNames.condition]: new ort.Tensor("float32", Float32Array.from(rs.flatMap((r) => r.condition ?? [])), [rs.length, model.conditionSize]) }),
    })
    const knobs = knobsOf(requests)
    const M = rows.reduce((m, r) => Math.max(m, r.stopIds.length), 1)
    const emptyPast = (n: number) => Object.fromEntries(model.cache.map((slot) => [slot.past, new ort.Tensor("float32", new Float32Array(0), [n, slot.kvHeads, 0, slot.headDim])]))
    let past: Record<string, ort.Tensor> = {}
    const resetPast = () => {
      past = emptyPast(B)
    }
    resetPast()

    const bannedIds = new BigInt64Array(B * M)
    // pad a row's list by repeating its first id: duplicates carry the same bias
    rows.forEach((r, b) => {
      for (let m = 0; m < M; m++) bannedIds[b * M + m] = BigInt(r.stopIds[m] ?? r.stopIds[0] ?? 0)
    })
    const banned = new ort.Tensor("int64", bannedIds, [B, M])
    /** Bias on the stop ids for `steps` steps from now on: -1e9 while a row is below its minimum. */
    const bannedBias = (steps: number) => {
      const bias = new Float32Array(steps * B * M)
      for (let i = 0; i < steps; i++)
        rows.forEach((r, b) => {
          if (r.tokens.length + i < (r.request.minNewTokens ?? 0)) bias.fill(-1e9, (i * B + b) * M, (i * B + b + 1) * M)
        })
      return bias
    }
    const uniforms = (from: number, steps: number) => {
      const u = new Float32Array(steps * B)
      for (let i = 0; i < steps; i++) requests.forEach((r, b) => (u[i * B + b] = requestUniform(r.seed ?? 0, from + i)))
      return u
    }
    const maskTensor = () => {
      const total = maskRows[0].length
      return new ort.Tensor("int64", BigInt64Array.from(maskRows.flat()), [B, total])
    }
    const takePresent = (out: Record<string, ort.Tensor>) => {
      for (const slot of model.cache) past[slot.past] = out[slot.present]
    }
    /** Hands step outputs to the rows (finished rows are fed padding from now on). */
    const record = (tokens: BigInt64Array, logProbs: Float32Array, offset: number, stats: Record<string, Float32Array> = {}) =>
      rows.forEach((r, b) => {
        const t = r.finish ? pad : tokens[offset + b]
        if (!r.finish) {
          for (const [name, values] of Object.entries(stats)) r.stats[name].push(values[offset + b])
          advance(tokenizer, r, Number(t), logProbs[offset + b])
        }
        seqs[b].push(t)
        maskRows[b].push(1n)
      })

    // Rows asking the same prompt (and condition) share one prefill of it but its last token; each
    // row's last prompt token then goes through a decode step with its own sampling.
    // (a one-token prompt has nothing before its last token to share)
    const shared = cache && sharePrefill && width > 1 ? sharedRows(requests) : undefined
    if (shared !== undefined) {
      const U = shared.unique.length
      const ids = BigInt64Array.from(shared.unique.flatMap((b) => seqs[b].slice(0, width - 1)))
      const out = yield* Effect.mapError(
        runSession(session, {
          [forwardNames.ids]: new ort.Tensor("int64", ids, [U, width - 1]),
          [forwardNames.mask]: new ort.Tensor("int64", BigInt64Array.from(shared.unique.flatMap((b) => maskRows[b].slice(0, width - 1))), [U, width - 1]),
          ...emptyPast(U),
          ...knobsOf(shared.unique.map((b) => requests[b])),
          // what this run samples is not used: the rows sample their first token in the next step
          uniform: new ort.Tensor("float32", new Float32Array(U), [U]),
          [names.banned]: new ort.Tensor("int64", BigInt64Array.from(shared.unique.flatMap((b) => [...bannedIds.subarray(b * M, (b + 1) * M)])), [U, M]),
          [names.bannedBias]: new ort.Tensor("float32", new Float32Array(U * M), [U, M]),
        }),
        (e) => fail(e.message),
      )
      for (const slot of model.cache) past[slot.past] = copyRows(out[slot.present], shared.rowOf)
    }

    let step = 0
    while (step < maxSteps && rows.some((r) => !r.finish)) {
      if (loopSession && cache && step > 0) {
        const n = Math.min(stepsPerRun, maxSteps - step)
        const out = yield* Effect.mapError(
          runSession(loopSession, {
            [loopNames.token]: new ort.Tensor("int64", BigInt64Array.from(seqs, (s) => s[s.length - 1]), [B]),
            [forwardNames.mask]: maskTensor(),
            ...past,
            ...knobs,
            uniform: new ort.Tensor("float32", uniforms(step, n), [n, B]),
            [names.banned]: banned,
            [names.bannedBias]: new ort.Tensor("float32", bannedBias(n), [n, B, M]),
          }),
          (e) => fail(e.message),
        )
        takePresent(out)
        const tokens = out[loopNames.tokens].data as BigInt64Array
        const logProbs = out[loopNames.logProbs].data as Float32Array
        const stats = Object.fromEntries(model.stats.map((name) => [name, out[name].data as Float32Array]))
        for (let i = 0; i < n; i++) record(tokens, logProbs, i * B, stats)
        step += n
        continue
      }
      const total = seqs[0].length
      const T = cache && (step > 0 || shared !== undefined) ? 1 : total
      if (!cache) resetPast()
      const ids = BigInt64Array.from(seqs.flatMap((s) => s.slice(total - T)))
      const out = yield* Effect.mapError(
        runSession(session, {
          [forwardNames.ids]: new ort.Tensor("int64", ids, [B, T]),
          [forwardNames.mask]: maskTensor(),
          ...past,
          ...knobs,
          uniform: new ort.Tensor("float32", uniforms(step, 1), [B]),
          [names.banned]: banned,
          [names.bannedBias]: new ort.Tensor("float32", bannedBias(1), [B, M]),
        }),
        (e) => fail(e.message),
      )
      if (cache) takePresent(out)
      const stats = Object.fromEntries(model.stats.map((name) => [name, out[name].data as Float32Array]))
      record(out[names.token].data as BigInt64Array, out[names.logProb].data as Float32Array, 0, stats)
      step++
    }
    return rows.map((r): Generation => ({ tokens: r.tokens, logProbs: r.logProbs, stats: r.stats, text: r.text, finishReason: r.finish ?? "length" }))
  })
