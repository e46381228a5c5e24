// The blending experiments of seed 003 wired as one DAG, shared by pipelines/blend.ts (domain
// blending) and pipelines/proxy-tune.ts (proxy tuning):
//
//   held-out ─► score-members (validation) ─► blend-search (full vocabulary) ─┬─► evaluate-blend ─► report-blend
//           └─► score-members (test) ──────► blend-search (top-k) ───────────┘   generate-blend ──┘
//
// big and untuned are directory nodes (`external.dir(..., { name: "big" })`, so `--set big.path=DIR`
// points them at any local HF checkpoints that share a tokenizer); the small tuned member is weights
// and tokenizer files, tuned by the pipeline (tuneDomain) or imported from a directory.
import type { Directory, FileArtifact, Source } from "../../src/engine/index.ts"
import type { BlendKind } from "../../src/models/blend.ts"
import { checkpointTokenizer, importCheckpoint } from "../tiny-family/import-checkpoint.ts"
import type { LlamaWeights, TokenizerJson } from "../tiny-chat/artifacts.ts"
import { blendSearch } from "./blend-search.ts"
import { evaluateBlend } from "./evaluate.ts"
import { generateBlend } from "./generate.ts"
import { heldOut } from "./held-out.ts"
import { reportBlend } from "./report.ts"
import { scoreMembers } from "./score-members.ts"

type ParamsOf<S extends (params: any, ...rest: any[]) => unknown> = Parameters<S>[0]

export const blendDefaults = {
  heldOut: { format: "text", field: "text", genre: "", maxTokens: 128, limit: 0, validationFraction: 0.5, seed: 0 },
  score: { dtype: "float16", batchSize: 16, threads: 0 },
  // seed 003 ran Optuna for 100 trials
  search: { topK: 0, trials: 100, startup: 10, seed: 0, temperatureLow: 0.25, temperatureHigh: 8, alphaLow: 0, alphaHigh: 3 },
  // the top-k the seed's API returned
  topK: 5,
  evaluate: { maxTokensBack: 32, positionsPerBucket: 1000, batchSize: 64, threads: 0 },
  generate: { chat: false, samplesPerPrompt: 2, maxNewTokens: 48, temperature: 0.8, topP: 0.95, seed: 0, threads: 0 },
} as const satisfies {
  readonly heldOut: ParamsOf<typeof heldOut>
  readonly score: Omit<ParamsOf<typeof scoreMembers>, "split">
  readonly search: Omit<ParamsOf<typeof blendSearch>, "kind">
  readonly evaluate: ParamsOf<typeof evaluateBlend>
  readonly generate: Omit<ParamsOf<typeof generateBlend>, "prompts">
  readonly topK: number
}

export interface BlendOptions {
  readonly kind: BlendKind
  /** `tuned` as weights and tokenizer files: tuneDomain's output, or tunedFromDirectory(dir) */
  readonly models: { readonly big: Source<typeof Directory>; readonly tuned: TunedMember; readonly untuned: Source<typeof Directory> }
  /** the held-out texts (any file node; see stages/blend/held-out.ts for the formats) */
  readonly texts: Source<FileArtifact<string>>
  readonly prompts: ReadonlyArray<string>
  readonly heldOut?: Partial<ParamsOf<typeof heldOut>>
  readonly search?: Partial<Omit<ParamsOf<typeof blendSearch>, "kind" | "topK">>
  readonly evaluate?: Partial<ParamsOf<typeof evaluateBlend>>
  readonly generate?: Partial<Omit<ParamsOf<typeof generateBlend>, "prompts">>
}

export interface TunedMember {
  readonly weights: Source<typeof LlamaWeights>
  readonly tokenizer: Source<typeof TokenizerJson>
}

/** The small tuned member from a checkpoint directory (an already tuned model, e.g. a chat model). */
export const tunedFromDirectory = (dir: Source<typeof Directory>): TunedMember => ({
  weights: importCheckpoint({}, { model: dir }, { name: "tuned-import" }),
  tokenizer: checkpointTokenizer({}, { model: dir }, { name: "tuned-tokenizer" }),
})

/** The inputs of the stages taking the three members (blendMemberInputs in members.ts). */
export const memberInputs = (m: BlendOptions["models"]) => ({ big: m.big, tuned: m.tuned.weights, tunedTokenizer: m.tuned.tokenizer, untuned: m.untuned })

export const blendExperiment = (o: BlendOptions) => {
  const d = blendDefaults
  const members = memberInputs(o.models)
  const split = heldOut({ ...d.heldOut, ...o.heldOut }, { texts: o.texts, model: o.models.big })
  const validation = scoreMembers({ ...d.score, split: "validation" }, { ...members, heldOut: split }, { name: "score_validation" })
  const test = scoreMembers({ ...d.score, split: "test" }, { ...members, heldOut: split }, { name: "score_test" })
  const search = blendSearch({ ...d.search, ...o.search, kind: o.kind }, { validation }, { name: "search" })
  const searchTopK = blendSearch({ ...d.search, ...o.search, kind: o.kind, topK: d.topK }, { validation }, { name: "search_topk" })
  const evaluation = evaluateBlend({ ...d.evaluate, ...o.evaluate }, { ...members, heldOut: split, test, search, searchTopK })
  const samples = generateBlend({ ...d.generate, ...o.generate, prompts: [...o.prompts] }, { ...members, search })
  const report = reportBlend({}, { search, searchTopK, evaluation, samples })
  return { search, searchTopK, evaluation, samples, report }
}

/** The run folder's files: `<name>.md` (printed at the end), the two plots, and the JSON behind them. */
export const publishBlend = <N extends string>(name: N, e: ReturnType<typeof blendExperiment>) => ({
  publish: {
    ...({ [`${name}.md`]: { from: e.report, as: (r: { markdown: string }) => r.markdown } } as Record<`${N}.md`, { from: typeof e.report; as: (r: { markdown: string }) => string }>),
    "perplexity-vs-tokens-back.svg": { from: e.report, as: (r: { tokensBackSvg: string }) => r.tokensBackSvg },
    "validation-perplexity-over-trials.svg": { from: e.report, as: (r: { trialsSvg: string }) => r.trialsSvg },
    "evaluation.json": e.evaluation,
    "search.json": e.search,
    "search-topk.json": e.searchTopK,
    "samples.json": e.samples,
  },
  print: [`${name}.md` as const],
})
