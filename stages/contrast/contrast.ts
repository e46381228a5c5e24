// Contrastive decoding between two model variants (seed 004), the part the contrastive-decode and
// divergence-search stages share: open the two members as one ensemble (src/models/ensemble.ts),
// decode from their weighted combination, and describe every text token by token.
//
// The two variants: a checkpoint each (they may be the same directory) and a text prefix each that
// only that model sees (e.g. a chat system turn, "<|system|>...<|eos|>"; special-token strings in it
// are parsed as the tokenizer parses them). Every model sees [BOS] + its own prefix + the shared
// tokens: BOS belongs to the members' prefixes, not to the shared stream, so a prefix can sit
// between BOS and the text as a chat system turn does.
//
// Shared tokens of a prompt: "text" format, the prompt encoded without special tokens; "chat", the
// starting model's chat template of one user turn with the generation prompt, its leading BOS
// dropped (the members' prefixes carry it).
//
// Per generated token: KL(P_s || P_c) of the two members' own distributions (temperature 1,
// unfiltered: what the models believe, not what the combination sampled from), each member's
// log-prob of the token (so each model's perplexity of the text), and each member's top tokens
// (teacher-forced scoring of the finished text with the member alone: the hover of the HTML view).
import { Effect, type Scope } from "effect"
import * as path from "node:path"
import { StageError } from "../../src/engine/index.ts"
import { Graph } from "../../src/graph/index.ts"
import { loadCheckpoint } from "../../src/models/checkpoint.ts"
import { type CombinationRule, type EnsembleMember, makeEnsemble } from "../../src/models/ensemble.ts"
import { forwardNames } from "../../src/models/forward.ts"
import type { GenerationRequest } from "../../src/models/generate.ts"
import { externalWeights, placeWeights, writeGraph } from "../../src/models/graph-weights.ts"
import { perplexity, positionStats, scoreContinuations, scoringNames } from "../../src/models/scoring.ts"
import { prepareVariant, type Variant } from "../../src/models/variant.ts"
import { createSession, type Device, releaseSession, type Session } from "../../src/runtime/session.ts"
import { type ContrastText, type DivergenceSummary, type TopToken } from "./artifacts.ts"
import { chatPromptIds } from "../../src/text/chat-template.ts"
import type { TextTokenizer } from "../../src/text/tokenizer.ts"
import { openModel } from "../baking/model.ts"

const START = "start"
const COMPARE = "compare"

export interface ModelSide {
  readonly dir: string
  /** text only this model sees, after BOS and before the shared tokens */
  readonly prefix: string
  readonly weight: number
}

export interface ContrastSetup {
  readonly start: ModelSide
  readonly compare: ModelSide
  /** "logits": log_softmax(w_s log p_s + w_c log p_c); "probs": max(w_s p_s + w_c p_c, 0) + eps, renormalised */
  readonly space: "logits" | "probs"
  readonly eps: number
  /** top tokens of each model recorded per generated token (0: none) */
  readonly topTokens: number
  readonly graphDir: string
  readonly device: Device
  readonly threads: number
}

export interface DecodeRequest {
  readonly prompt: string
  readonly promptIndex: number
  readonly sample: number
  readonly seed: number
}

export interface Sampling {
  /** 0 = greedy */
  readonly temperature: number
  readonly topP: number
  readonly topK: number
  readonly maxNewTokens: number
  readonly format: "text" | "chat"
  readonly batchSize: number
}

export interface Contraster {
  readonly tokenizer: TextTokenizer
  readonly decode: (requests: ReadonlyArray<DecodeRequest>, sampling: Sampling) => Effect.Effect<ContrastText[], StageError>
  /**
   * KL(P_start || P_compare) at each of a prompt's own shared tokens after the first (the first has
   * no shared context to be scored in), teacher-forced: the seed's divergences over the prefix.
   */
  readonly promptKl: (prompts: ReadonlyArray<string>, format: Sampling["format"]) => Effect.Effect<number[][], StageError>
}

const stageError = (what: string) => (e: { readonly message: string }) => new StageError({ message: `${what}: ${e.message}` })

const topName = (i: number, what: "id" | "logprob") => `top.${i}.${what}`

/**
 * A teacher-forcing session for one member: scoring.ts's positionStats with its top-k split into
 * [B, T] outputs (ids as float32, exact below 2^24), so scoreContinuations reads them as stats.
 */
const topTokensSession = (variant: Variant, k: number, graphDir: string, options: { device: Device; threads: number }) =>
  Effect.gen(function* () {
    const placement = yield* placeWeights([variant.checkpoint], graphDir)
    const g = new Graph("contrast_top_tokens")
    const ids = g.input(forwardNames.ids, "int64", ["batch", "seq"])
    const mask = g.input(forwardNames.mask, "int64", ["batch", "seq"])
    const targets = g.input(scoringNames.targets, "int64", ["batch", "seq"])
    const out = prepareVariant(g, variant, externalWeights(g, placement))(g, { ids, mask })
    const s = positionStats(g, g.reshape(out.hidden, [-1, variant.checkpoint.config.hiddenSize]), out.lmHead, g.reshape(targets, [-1]), { topK: k }, out.logitSoftcap)
    g.outputAs(scoringNames.targetLogProb, g.reshapeLike(s.targetLogProb, targets))
    g.outputAs(scoringNames.entropy, g.reshapeLike(s.entropy, targets))
    for (let i = 0; i < k; i++) {
      const column = (x: typeof s.topIds) => g.reshapeLike(g.squeeze(g.slice(x, g.ints([i]), g.ints([i + 1]), [1]), [1]), targets)
      g.outputAs(topName(i, "id"), column(g.cast(s.topIds, "float32")))
      g.outputAs(topName(i, "logprob"), column(s.topLogProbs))
    }
    const file = yield* writeGraph(g, placement, "contrast-top-tokens")
    return yield* createSession(file, { device: options.device, ...(options.threads > 0 ? { intraOpThreads: options.threads } : {}) })
  })

/** Each token's text within the whole decoded text (see ContrastText.pieces). */
const tokenPieces = (tokenizer: Pick<TextTokenizer, "decode">, tokens: ReadonlyArray<number>): string[] => {
  const pieces: string[] = []
  let before = ""
  for (let i = 0; i < tokens.length; i++) {
    const now = tokenizer.decode(tokens.slice(0, i + 1))
    pieces.push(now.startsWith(before) ? now.slice(before.length) : tokenizer.decode([tokens[i]]))
    before = now
  }
  return pieces
}

const mean = (xs: ReadonlyArray<number>) => (xs.length === 0 ? 0 : xs.reduce((a, b) => a + b, 0) / xs.length)

/** The shared tokens of a prompt (see the file header). */
export const sharedPromptIds = (tokenizer: TextTokenizer, prompt: string, format: Sampling["format"]): Effect.Effect<number[], StageError> =>
  format === "text"
    ? Effect.succeed(tokenizer.encode(prompt, { addSpecialTokens: false }))
    : Effect.map(Effect.mapError(chatPromptIds(tokenizer, [{ role: "user", content: prompt }], { addGenerationPrompt: true }), stageError("chat prompt")), (ids) =>
        tokenizer.bos !== undefined && ids[0] === tokenizer.bos.id ? ids.slice(1) : ids,
      )

/** Opens both members (one ensemble graph, and one top-token scorer each); sessions close with the scope. */
export const openContrast = (setup: ContrastSetup): Effect.Effect<Contraster, StageError, Scope.Scope> =>
  Effect.gen(function* () {
    const { checkpoint: startCkpt, tokenizer } = yield* Effect.mapError(openModel(setup.start.dir), stageError(`start model ${setup.start.dir}`))
    const compareCkpt =
      setup.compare.dir === setup.start.dir ? startCkpt : yield* Effect.mapError(loadCheckpoint(setup.compare.dir), stageError(`comparison model ${setup.compare.dir}`))
    const bos = tokenizer.bos === undefined ? [] : [tokenizer.bos.id]
    const member = (name: string, side: ModelSide, checkpoint: typeof startCkpt): EnsembleMember => ({
      name,
      checkpoint,
      prefix: [...bos, ...tokenizer.encode(side.prefix, { addSpecialTokens: false })],
    })
    const members = [member(START, setup.start, startCkpt), member(COMPARE, setup.compare, compareCkpt)]
    const terms = [
      { member: START, weight: setup.start.weight },
      { member: COMPARE, weight: setup.compare.weight },
    ]
    const rule: CombinationRule = setup.space === "logits" ? { space: "logits", terms } : { space: "probs", terms, eps: setup.eps }
    const ensemble = yield* Effect.acquireRelease(
      Effect.mapError(
        makeEnsemble({
          members,
          rule,
          klPairs: [[START, COMPARE]],
          graphDir: path.join(setup.graphDir, "ensemble"),
          device: setup.device,
          tokenizer,
          ...(setup.threads > 0 ? { intraOpThreads: setup.threads } : {}),
        }),
        stageError("contrastive decoding"),
      ),
      (e) => Effect.forEach([e.stepSession, e.loopSession, e.scoringSession], (s) => (s ? releaseSession(s) : Effect.void), { discard: true }),
    )
    const k = setup.topTokens
    const scorers: ReadonlyArray<Session> =
      k === 0
        ? []
        : yield* Effect.forEach(members, (m) =>
            Effect.acquireRelease(
              Effect.mapError(topTokensSession(m, k, path.join(setup.graphDir, `top-${m.name}`), setup), stageError(`top-token scorer of the ${m.name} model`)),
              releaseSession,
            ),
          )
    const pieceOf = new Map<number, string>()
    const piece = (id: number) => {
      let p = pieceOf.get(id)
      if (p === undefined) pieceOf.set(id, (p = tokenizer.decode([id])))
      return p
    }

    const decode = (requests: ReadonlyArray<DecodeRequest>, s: Sampling) =>
      Effect.gen(function* () {
        const shared = yield* Effect.forEach(requests, (r) => sharedPromptIds(tokenizer, r.prompt, s.format))
        const empty = shared.findIndex((ids) => ids.length === 0)
        if (empty >= 0) return yield* Effect.fail(new StageError({ message: `prompt ${requests[empty].promptIndex} (${JSON.stringify(requests[empty].prompt)}) has no tokens` }))
        const gens = yield* Effect.mapError(
          ensemble.generate(
            requests.map((r, i): GenerationRequest => ({ prompt: shared[i], maxNewTokens: s.maxNewTokens, temperature: s.temperature, topP: s.topP, topK: s.topK, seed: r.seed })),
            { batchSize: s.batchSize },
          ),
          stageError("contrastive decoding"),
        )
        // the members' own top tokens along each text, context = the member's prefix is in its variant
        const tops = yield* Effect.forEach(scorers, (session) =>
          Effect.mapError(
            Effect.forEach(
              chunks(
                requests.map((_, i) => ({ context: shared[i], continuation: gens[i].tokens })),
                s.batchSize,
              ),
              (batch) => scoreContinuations(session, batch, { padId: 0, stats: Array.from({ length: k }, (_, j) => [topName(j, "id"), topName(j, "logprob")]).flat() }),
            ),
            stageError("top tokens"),
          ).pipe(Effect.map((parts) => parts.flat())),
        )
        const topsOf = (m: number, i: number): TopToken[][] =>
          m >= tops.length
            ? gens[i].tokens.map(() => [])
            : gens[i].tokens.map((_, t) =>
                Array.from({ length: k }, (_, j) => ({ piece: piece(tops[m][i].stats[topName(j, "id")][t]), logProb: tops[m][i].stats[topName(j, "logprob")][t] })),
              )
        return gens.map((g, i): ContrastText => {
          const kl = g.kl[0].values
          const start = g.members[START].logProbs
          const compare = g.members[COMPARE].logProbs
          return {
            prompt: requests[i].prompt,
            promptIndex: requests[i].promptIndex,
            sample: requests[i].sample,
            text: g.text ?? "",
            tokens: g.tokens,
            pieces: tokenPieces(tokenizer, g.tokens),
            kl,
            klSum: kl.reduce((a, b) => a + b, 0),
            klMean: mean(kl),
            logProbs: { start, compare },
            perplexity: { start: perplexity(start), compare: perplexity(compare) },
            top: { start: topsOf(0, i), compare: topsOf(1, i) },
          }
        })
      })
    const promptKl = (prompts: ReadonlyArray<string>, format: Sampling["format"]) =>
      Effect.gen(function* () {
        const shared = yield* Effect.forEach(prompts, (p) => sharedPromptIds(tokenizer, p, format))
        const scored = shared.filter((ids) => ids.length > 1)
        const scores = yield* Effect.mapError(ensemble.score(scored.map((ids) => ({ context: ids.slice(0, 1), continuation: ids.slice(1) }))), stageError("prompt divergence"))
        let next = 0
        return shared.map((ids) => (ids.length > 1 ? scores[next++].kl[0].values : []))
      })
    return { tokenizer, decode, promptKl }
  })

const chunks = <A>(xs: ReadonlyArray<A>, n: number): A[][] => Array.from({ length: Math.ceil(xs.length / n) }, (_, i) => xs.slice(i * n, (i + 1) * n))

/** Texts sorted by mean per-token divergence, largest first (stable: ties keep their order). */
export const byDivergence = (texts: ReadonlyArray<ContrastText>): ContrastText[] => [...texts].sort((a, b) => b.klMean - a.klMean)

export const summarize = (texts: ReadonlyArray<ContrastText>): DivergenceSummary => {
  const means = texts.map((t) => t.klMean).sort((a, b) => a - b)
  const n = means.length
  const median = n === 0 ? 0 : n % 2 === 1 ? means[(n - 1) / 2] : (means[n / 2 - 1] + means[n / 2]) / 2
  const top = means.slice(n - Math.max(1, Math.round(n / 10)))
  const all = texts.flatMap((t) => t.kl)
  const top10 = mean(top)
  return { texts: n, tokens: all.length, meanKl: mean(all), medianTextKl: median, top10TextKl: top10, top10OverMedian: median > 0 ? top10 / median : null }
}
