// Several models ("members") in one onnxruntime graph: generation and scoring from a combination
// of their next-token distributions, with per-member statistics along the tokens.
//
//   makeEnsemble({ members, rule, klPairs?, graphDir, device?, intraOpThreads?, tokenizer?, chunk?, stepsPerRun? })
//     -> Ensemble { generate(requests, options), score(requests) }
//   members: variant.ts Variants with a name: different checkpoints sharing a tokenizer (any mix
//     of architectures), or one checkpoint with different interventions (LoRAs, soft prompts, a
//     text prefix; its weights are read once and shared). Conditional soft prompts are not
//     supported here. Names are [A-Za-z0-9_-]+; they prefix the member's graph names.
//   rule, over each member's logits z_m restricted to the tokenizer's vocabulary:
//     { space: "logits", terms: [{ member, weight, temperature? }] }
//       log p = log_softmax( Σ_terms weight * log_softmax(z_member / temperature) )
//       blending; proxy tuning = large + (small tuned - small base) with weights 1, 1, -1;
//       contrastive decoding in logit space (expert 1 + α, amateur -α). A member may appear in
//       several terms (e.g. at two temperatures).
//     { space: "probs", terms: [{ member, weight }], eps }
//       p ∝ max(Σ_terms weight * softmax(z_member), 0) + eps   (needs eps > 0 or Σ weight > 0,
//       else a row can be all zeros)
//   klPairs: [a, b] pairs; KL(p_a || p_b) is reported at every step / position.
//
// Statistics (every member at temperature 1, unfiltered, over the tokenizer's vocabulary), per
// generated or scored token: "<member>.log_prob", "<member>.entropy", "kl.<a>.<b>"; the
// combined distribution's log-prob and (scoring) entropy. Generation samples from the combined
// log-probs exactly as generate.ts samples from one model's logits (temperature, top-k, top-p,
// per-request seeds, stop rules), and its `logProbs` are the combined log-probs.
//
// Vocabulary: members must share tokenizer.json byte for byte (sha256), else EnsembleError naming
// both models. Checkpoints often pad the embedding past the tokenizer (e.g. to a multiple of 64):
// logits are cut to the tokenizer's vocabulary V before any softmax, so the padded rows get no
// mass; a checkpoint with fewer than V rows is refused.
//
// KV caches are per member: inputs "<member>.past_key_values.{l}.key|value", outputs
// "<member>.present.{l}.key|value"; ids and the attention mask are shared (one token stream).
// Generation runs generate.ts's step graph, or with stepsPerRun > 1 its decode-loop graph, around
// the ensemble (ensembleGraphModel).
// Default stop token ids and padding: the first member's.
import { createHash } from "node:crypto"
import * as fs from "node:fs"
import { Data, Effect, type Scope } from "effect"
import { Graph, type Value } from "../graph/index.ts"
import { createSession, type Device, releaseSession, type RunError, type Session } from "../runtime/session.ts"
import { loadTokenizer, type TextTokenizer } from "../text/tokenizer.ts"
import { forwardNames, logitsOf, type WeightSource } from "./forward.ts"
import {
  buildDecodeLoopGraph,
  buildStepGraph,
  cacheSlots,
  type Generation,
  type GenerateOptions,
  type GenerationError,
  type GenerationRequest,
  lastLogits,
  pastByLayer,
  sessionOptions,
  stepGenerate,
  type StepModelGraph,
  variantContext,
} from "./generate.ts"
import { externalWeights, placeWeights, type WeightPlacement, writeGraph } from "./graph-weights.ts"
import { checkVariant, prepareVariant, type Variant } from "./variant.ts"
import { chunkedRows, type ContinuationRequest, entropyOf, scoreContinuations, type ScoringError, scoringNames, targetLogProbOf } from "./scoring.ts"
import { paddingId } from "./config-architecture.ts"

export class EnsembleError extends Data.TaggedError("EnsembleError")<{ readonly message: string }> {}

export interface EnsembleMember extends Variant {
  readonly name: string
}

export interface LogitTerm {
  readonly member: string
  readonly weight: number
  /** default 1 */
  readonly temperature?: number
}

export interface ProbTerm {
  readonly member: string
  readonly weight: number
}

export type CombinationRule =
  | { readonly space: "logits"; readonly terms: ReadonlyArray<LogitTerm> }
  | { readonly space: "probs"; readonly terms: ReadonlyArray<ProbTerm>; readonly eps: number }

export interface EnsembleOptions {
  readonly members: ReadonlyArray<EnsembleMember>
  readonly rule: CombinationRule
  readonly klPairs?: ReadonlyArray<readonly [string, string]>
  /** Where the graphs' .onnx files are written. */
  readonly graphDir: string
  readonly device?: Device
  readonly intraOpThreads?: number
  /** For stop strings and Generation.text. */
  readonly tokenizer?: Pick<TextTokenizer, "decode">
  /** Positions per scoring chunk (default 128): one [chunk x vocab] block per member at a time. */
  readonly chunk?: number
  /** Decode steps per session run, as GeneratorOptions.stepsPerRun (default 1). */
  readonly stepsPerRun?: number
}

export interface MemberStats {
  readonly logProbs: number[]
  readonly entropies: number[]
}

export interface PairKl {
  readonly from: string
  readonly to: string
  /** KL(p_from || p_to) per token */
  readonly values: number[]
}

export interface EnsembleStats {
  readonly members: Readonly<Record<string, MemberStats>>
  readonly kl: ReadonlyArray<PairKl>
}

export type EnsembleGeneration = Generation & EnsembleStats

export interface EnsembleScore extends EnsembleStats {
  /** the combined distribution's log p(continuation[i] | ...) */
  readonly logProbs: number[]
  /** the combined distribution's entropy at each continuation position */
  readonly entropies: number[]
  readonly sum: number
}

export interface Ensemble {
  /** The shared vocabulary size (the tokenizer's). */
  readonly vocabSize: number
  readonly generate: (requests: ReadonlyArray<GenerationRequest>, options?: GenerateOptions) => Effect.Effect<EnsembleGeneration[], GenerationError>
  readonly score: (requests: ReadonlyArray<ContinuationRequest>) => Effect.Effect<EnsembleScore[], RunError | ScoringError>
  readonly stepSession: Session
  readonly loopSession: Session | undefined
  readonly scoringSession: Session
}

/** Graph output names of the statistics (see the file header). */
export const ensembleNames = {
  logProb: (member: string) => `${member}.log_prob`,
  entropy: (member: string) => `${member}.entropy`,
  kl: (from: string, to: string) => `kl.${from}.${to}`,
} as const

const fail = (message: string) => new EnsembleError({ message })

const sha256 = (file: string) =>
  Effect.try({
    try: () => createHash("sha256").update(fs.readFileSync(file)).digest("hex"),
    catch: (e) => fail(`cannot read ${file}: ${e instanceof Error ? e.message : String(e)}`),
  })

const describe = (m: EnsembleMember) => `"${m.name}" (${m.checkpoint.dir})`

/**
 * The members' shared vocabulary size: the tokenizer's, after checking that every member has the
 * first member's tokenizer.json (same sha256) and at least that many embedding rows.
 */
export const sharedVocabulary = (members: ReadonlyArray<EnsembleMember>): Effect.Effect<number, EnsembleError> =>
  Effect.gen(function* () {
    const files = yield* Effect.forEach(members, (m) => {
      const { tokenizerFile, tokenizerConfigFile } = m.checkpoint
      return tokenizerFile === undefined || tokenizerConfigFile === undefined
        ? Effect.fail(fail(`model ${describe(m)} has no tokenizer.json and tokenizer_config.json: the members' vocabularies cannot be checked`))
        : Effect.succeed({ tokenizerFile, configFile: tokenizerConfigFile })
    })
    const hashes = yield* Effect.forEach(files, (f) => sha256(f.tokenizerFile))
    const other = hashes.findIndex((h) => h !== hashes[0])
    if (other >= 0)
      return yield* Effect.fail(
        fail(
          `models ${describe(members[0])} and ${describe(members[other])} have different tokenizers (tokenizer.json sha256 ${hashes[0].slice(0, 12)}… vs ${hashes[other].slice(0, 12)}…): ensemble members must share one vocabulary`,
        ),
      )
    const tokenizer = yield* Effect.mapError(loadTokenizer(files[0]), (e) => fail(e.message))
    const small = members.find((m) => m.checkpoint.config.vocabSize < tokenizer.vocabSize)
    if (small)
      return yield* Effect.fail(
        fail(`model ${describe(small)} has ${small.checkpoint.config.vocabSize} embedding rows, fewer than the ${tokenizer.vocabSize} tokens of its tokenizer ${files[0].tokenizerFile}`),
      )
    return tokenizer.vocabSize
  })

/** Checks names, the rule and the KL pairs; returns the problem or undefined. */
const optionsProblem = (o: Pick<EnsembleOptions, "members" | "rule" | "klPairs" | "chunk">): string | undefined => {
  const names = o.members.map((m) => m.name)
  if (names.length === 0) return "an ensemble needs at least one member"
  const badName = names.find((n) => !/^[A-Za-z0-9_-]+$/.test(n))
  if (badName !== undefined) return `member name "${badName}" must match [A-Za-z0-9_-]+ (it prefixes graph input and output names)`
  const twice = names.find((n, i) => names.indexOf(n) !== i)
  if (twice !== undefined) return `member name "${twice}" is used twice`
  const conditional = o.members.find((m) => m.conditionalSoftPrompt)
  if (conditional) return `member "${conditional.name}" has a conditional soft prompt, which ensembles do not support (its condition would be one more shared input)`
  const rule = o.rule
  if (rule.terms.length === 0) return "the combination rule has no terms"
  for (const [i, t] of rule.terms.entries()) {
    const where = `combination rule term ${i}`
    if (!names.includes(t.member)) return `${where}: no member named "${t.member}" (members: ${names.join(", ")})`
    if (!Number.isFinite(t.weight)) return `${where}: weight must be a finite number, got ${t.weight}`
    const temperature = rule.space === "logits" ? ((t as LogitTerm).temperature ?? 1) : 1
    if (!(Number.isFinite(temperature) && temperature > 0)) return `${where}: temperature must be a finite number > 0, got ${temperature}`
  }
  if (rule.space === "probs") {
    if (!(Number.isFinite(rule.eps) && rule.eps >= 0)) return `combination rule: eps must be a finite number >= 0, got ${rule.eps}`
    const total = rule.terms.reduce((s, t) => s + t.weight, 0)
    if (rule.eps === 0 && !(total > 0)) return `combination rule: with eps 0 the weights must sum to more than 0 (they sum to ${total}), else a row can have no mass`
  }
  for (const [i, [a, b]] of (o.klPairs ?? []).entries()) {
    const unknown = [a, b].find((n) => !names.includes(n))
    if (unknown !== undefined) return `KL pair [${a}, ${b}]: no member named "${unknown}"`
    if (a === b) return `KL pair [${a}, ${b}]: the two members are the same`
    if ((o.klPairs ?? []).findIndex(([x, y]) => x === a && y === b) !== i) return `KL pair [${a}, ${b}] is given twice`
  }
  if (o.chunk !== undefined && !(Number.isInteger(o.chunk) && o.chunk >= 1)) return `chunk must be a positive integer, got ${o.chunk}`
  const used = new Set([...rule.terms.map((t) => t.member), ...(o.klPairs ?? []).flat()])
  const idle = names.find((n) => !used.has(n))
  if (idle !== undefined) return `member "${idle}" is used by neither the combination rule nor a KL pair`
  return undefined
}

/** Member log-probs at temperature 1 and the combined log-probs, from logits over the shared vocabulary [N, V]. */
const combine = (g: Graph, rule: CombinationRule, logits: ReadonlyMap<string, Value>) => {
  const logp = new Map([...logits].map(([name, z]) => [name, g.logSoftmax(z, 1)]))
  const sum = (vs: Value[]) => vs.reduce((a, b) => g.add(a, b))
  if (rule.space === "logits") {
    const scaled = rule.terms.map((t) => {
      const T = t.temperature ?? 1
      const lp = T === 1 ? logp.get(t.member)! : g.logSoftmax(g.div(logits.get(t.member)!, g.scalar(T)), 1)
      return g.mul(lp, g.scalar(t.weight))
    })
    return { logp, combined: g.logSoftmax(sum(scaled), 1) }
  }
  const mixed = sum(rule.terms.map((t) => g.mul(g.exp(logp.get(t.member)!), g.scalar(t.weight))))
  const q = g.add(g.max(mixed, g.scalar(0)), g.scalar(rule.eps))
  return { logp, combined: g.sub(g.log(q), g.log(g.reduceSum(q, [1], true))) }
}

/** The statistics outputs (name -> [N]) along `tokens` int64 [N]. */
const statistics = (g: Graph, logp: ReadonlyMap<string, Value>, klPairs: ReadonlyArray<readonly [string, string]>, tokens: Value): Array<[string, Value]> => [
  ...[...logp].flatMap(([name, lp]): Array<[string, Value]> => [
    [ensembleNames.logProb(name), targetLogProbOf(g, lp, tokens)],
    [ensembleNames.entropy(name), entropyOf(g, lp)],
  ]),
  ...klPairs.map(([a, b]): [string, Value] => {
    const pa = logp.get(a)!
    return [ensembleNames.kl(a, b), g.reduceSum(g.mul(g.exp(pa), g.sub(pa, logp.get(b)!)), [1])]
  }),
]

/**
 * Each member's weights and frozen interventions as initializers of the top-level graph `g` (a
 * checkpoint shared by several members is read once), and its variant forward into `g` or a
 * subgraph of it.
 */
const memberModels = (g: Graph, members: ReadonlyArray<EnsembleMember>, placement: WeightPlacement) => {
  const sources = new Map<string, WeightSource>()
  return members.map((m) => {
    const source = sources.get(m.checkpoint.dir) ?? externalWeights(g, placement, `w${sources.size}.`)
    sources.set(m.checkpoint.dir, source)
    return { member: m, forward: prepareVariant(g, m, source, { prefix: `${m.name}.` }) }
  })
}

/** Columns [0, V) of [N, V'] logits. */
const vocabColumns = (g: Graph, z: Value, V: number) => g.slice(z, g.ints([0]), g.ints([V]), [1])

const statNames = (members: ReadonlyArray<EnsembleMember>, klPairs: ReadonlyArray<readonly [string, string]>) => [
  ...members.flatMap((m) => [ensembleNames.logProb(m.name), ensembleNames.entropy(m.name)]),
  ...klPairs.map(([a, b]) => ensembleNames.kl(a, b)),
]

const unpack = (stats: Readonly<Record<string, number[]>>, members: ReadonlyArray<EnsembleMember>, klPairs: ReadonlyArray<readonly [string, string]>): EnsembleStats => ({
  members: Object.fromEntries(members.map((m) => [m.name, { logProbs: stats[ensembleNames.logProb(m.name)], entropies: stats[ensembleNames.entropy(m.name)] }])),
  kl: klPairs.map(([from, to]) => ({ from, to, values: stats[ensembleNames.kl(from, to)] })),
})

/** The ensemble as the model part of generate.ts's step and decode-loop graphs: sampling from the combined log-probs, per-member caches and statistics. */
export const ensembleGraphModel = (o: Pick<EnsembleOptions, "members" | "rule" | "klPairs">, placement: WeightPlacement, V: number): StepModelGraph => {
  const slots = o.members.map((m) => cacheSlots(m.checkpoint, `${m.name}.`))
  return {
    slots: slots.flat(),
    prepare: (g) => {
      const models = memberModels(g, o.members, placement)
      return (sub, ids, mask, past) => {
        let offset = 0
        const outs = models.map(({ forward }, i) => {
          const mine = past.slice(offset, (offset += slots[i].length))
          return forward(sub, { ids, mask, past: pastByLayer(mine) })
        })
        const { logp, combined } = combine(sub, o.rule, new Map(outs.map((out, i) => [o.members[i].name, vocabColumns(sub, lastLogits(sub, out), V)])))
        return {
          logits: combined,
          vocab: V,
          present: outs.flatMap((out) => out.present.flatMap((p) => [p.key, p.value])),
          stats: (token) => statistics(sub, logp, o.klPairs ?? [], token),
        }
      }
    },
  }
}

/**
 * The ensemble's scoring graph: inputs input_ids, attention_mask, targets [B, T] (as
 * buildScoringGraph); outputs target_logprob and entropy of the combined distribution and the
 * statistics, each [B, T], computed chunk by chunk over positions.
 */
export const buildEnsembleScoringGraph = (o: Pick<EnsembleOptions, "members" | "rule" | "klPairs" | "chunk">, placement: WeightPlacement, V: number): Graph => {
  const g = new Graph("ensemble_scoring")
  const ids = g.input(forwardNames.ids, "int64", ["batch", "seq"])
  const mask = g.input(forwardNames.mask, "int64", ["batch", "seq"])
  const targets = g.input(scoringNames.targets, "int64", ["batch", "seq"])
  const outs = memberModels(g, o.members, placement).map(({ forward }) => forward(g, { ids, mask }))
  const heads = outs.map((out) => g.slice(out.lmHead, g.ints([0]), g.ints([V]), [0]))
  const hidden = outs.map((out, i) => g.reshape(out.hidden, [-1, o.members[i].checkpoint.config.hiddenSize]))
  const names = [scoringNames.targetLogProb, scoringNames.entropy, ...statNames(o.members, o.klPairs ?? [])]
  const values = chunkedRows(g, [...hidden, g.reshape(targets, [-1])], o.chunk ?? 128, names.map(() => []), (sub, blocks) => {
    const t = blocks[outs.length]
    const logits = new Map(outs.map((out, i) => [o.members[i].name, logitsOf(sub, out, sub.gemm(blocks[i], heads[i], null, { transB: true }))]))
    const { logp, combined } = combine(sub, o.rule, logits)
    return [targetLogProbOf(sub, combined, t), entropyOf(sub, combined), ...statistics(sub, logp, o.klPairs ?? [], t).map(([, v]) => v)]
  })
  names.forEach((name, i) => g.outputAs(name, g.reshapeLike(values[i], targets)))
  return g
}

/** Graph output name of a member's full log-probs in buildMemberLogProbsGraph. */
export const memberLogProbsName = (member: string) => `${member}.logprobs`

/**
 * Every member's log-softmax over the shared vocabulary at every position, in one graph: inputs
 * input_ids, attention_mask [B, T] (left padding); outputs memberLogProbsName(m) [B, T, V]. For
 * combining stored distributions on the host (blend-search tries hundreds of rules on one scoring).
 */
export const buildMemberLogProbsGraph = (members: ReadonlyArray<EnsembleMember>, placement: WeightPlacement, V: number): Graph => {
  const g = new Graph("member_logprobs")
  const ids = g.input(forwardNames.ids, "int64", ["batch", "seq"])
  const mask = g.input(forwardNames.mask, "int64", ["batch", "seq"])
  for (const { member, forward } of memberModels(g, members, placement)) {
    const out = forward(g, { ids, mask })
    const head = g.slice(out.lmHead, g.ints([0]), g.ints([V]), [0])
    const z = logitsOf(g, out, g.gemm(g.reshape(out.hidden, [-1, member.checkpoint.config.hiddenSize]), head, null, { transB: true }))
    g.outputAs(memberLogProbsName(member.name), g.reshape(g.logSoftmax(z, 1), g.concat([g.shapeOf(ids), g.ints([V])], 0)))
  }
  return g
}

export const makeEnsemble = (options: EnsembleOptions): Effect.Effect<Ensemble, EnsembleError> =>
  Effect.gen(function* () {
    const problem = optionsProblem(options)
    if (problem) return yield* Effect.fail(fail(problem))
    const stepsPerRun = options.stepsPerRun ?? 1
    if (!Number.isInteger(stepsPerRun) || stepsPerRun < 1) return yield* Effect.fail(fail(`stepsPerRun must be a positive integer, got ${stepsPerRun}`))
    const { members } = options
    const klPairs = options.klPairs ?? []
    const V = yield* sharedVocabulary(members)
    for (const m of members) yield* Effect.mapError(checkVariant(m), (e) => fail(`member "${m.name}": ${e.message}`))
    const placement = yield* Effect.mapError(
      placeWeights(members.map((m) => m.checkpoint), options.graphDir),
      (e) => fail(e.message),
    )
    const open = (g: Graph, name: string) =>
      Effect.mapError(
        Effect.flatMap(writeGraph(g, placement, name), (file) => createSession(file, sessionOptions(options))),
        (e) => fail(e.message),
      )
    const graphModel = ensembleGraphModel(options, placement, V)
    // graph building throws on a checkpoint it cannot express (e.g. a weight dtype): keep the message
    const build = (make: () => Graph) => Effect.try({ try: make, catch: (e) => fail(`building the ensemble graphs: ${e instanceof Error ? e.message : String(e)}`) })
    const stepSession = yield* open(yield* build(() => buildStepGraph(graphModel, "ensemble_step")), "ensemble-step")
    // a later session that cannot be made must not leave the earlier ones open
    const { loopSession, scoringSession } = yield* Effect.gen(function* () {
      const loopSession =
        stepsPerRun > 1 ? yield* open(yield* build(() => buildDecodeLoopGraph(graphModel, "ensemble_decode_loop")), "ensemble-decode-loop") : undefined
      const scoringSession = yield* Effect.onError(open(yield* build(() => buildEnsembleScoringGraph(options, placement, V)), "ensemble-scoring"), () =>
        loopSession ? releaseSession(loopSession) : Effect.void,
      )
      return { loopSession, scoringSession }
    }).pipe(Effect.onError(() => releaseSession(stepSession)))
    const contexts = members.map(variantContext)
    const first = members[0].checkpoint.config
    const stats = statNames(members, klPairs)
    const generate = stepGenerate(
      {
        session: stepSession,
        loopSession,
        stepsPerRun,
        cache: graphModel.slots,
        vocabSize: V,
        context: contexts.reduce((a, b) => (b.length < a.length ? b : a)),
        eosTokenIds: first.eosTokenIds,
        padTokenId: paddingId(first),
        stats,
      },
      options.tokenizer,
    )
    const padId = paddingId(first)
    return {
      vocabSize: V,
      stepSession,
      loopSession,
      scoringSession,
      generate: (requests, opts) => Effect.map(generate(requests, opts), (gens) => gens.map((g) => ({ ...g, ...unpack(g.stats, members, klPairs) }))),
      score: (requests) =>
        Effect.map(scoreContinuations(scoringSession, requests, { padId, stats }), (scores) =>
          scores.map((s) => ({ logProbs: s.logProbs, entropies: s.entropies, sum: s.sum, ...unpack(s.stats, members, klPairs) })),
        ),
    }
  })

/** makeEnsemble whose sessions are released when the enclosing Scope closes. */
export const scopedEnsemble = (options: EnsembleOptions): Effect.Effect<Ensemble, EnsembleError, Scope.Scope> =>
  Effect.acquireRelease(makeEnsemble(options), (e) =>
    Effect.forEach([e.stepSession, e.loopSession, e.scoringSession], (s) => (s === undefined ? Effect.void : releaseSession(s)), { discard: true }),
  )
