// The navigator: tiny-base-s tuned on grid paths, the frozen model of the pathfinding objective.
// The family never saw a grid, and a soft prompt on a frozen model does not teach it to read walls
// (on tiny-base-s itself the conditional prompt's loss fell 16.2 -> 1.9 nats, but no rollout
// reached its goal). The seed's premise is a model that can already do the task and a prompt that
// conditions how: so the navigator learns paths of mixed quality with no label (half shortest
// paths, half detours, pathfinding.ts), and the conditional soft prompt has to pick the quality.
//
//   pathfinding-corpus (grids and paths as plain documents, genre "pathfinding")
//     -> tune-domain (train-text.ts, from models/tiny-base-s)
//     -> evaluate-navigator (rollouts on held-out grids, greedy and sampled)
//     -> write-navigator (models/tiny-navigator-s with a README of those figures)
// pipelines/tiny-navigator.ts runs it.
import { Effect, Schema } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import { Artifact, decodeArtifact, stage } from "../../src/engine/index.ts"
import { percent } from "../../src/engine/table.ts"
import { makeGenerator } from "../../src/models/generate.ts"
import { scopedSessions } from "../../src/runtime/session.ts"
import { LlamaWeights, materializeModel, TokenizerJson } from "../tiny-chat/artifacts.ts"
import { epochLossCurve, parameterCount, PublishedModel, publishModelDir, TrainedMetadata } from "../tiny-chat/write-model.ts"
import { PlainCorpusFile, type PlainTexts } from "../tiny-family/plain-corpus.ts"
import { gridPrompt, PathfindingParams } from "./data.ts"
import { rolloutTask } from "./examples.ts"
import { gridText, movesText, pathTasks } from "./pathfinding.ts"
import { Decoding, decodingLabel, describeRollouts, rollOut, RolloutStats } from "./rollouts.ts"

const PositiveInt = Schema.Int.check(Schema.isGreaterThan(0))

/** A set of grids: the generator's options, how many and from which seed. */
const GridSet = { ...PathfindingParams, count: PositiveInt, seed: Schema.Int.check(Schema.isGreaterThanOrEqualTo(0)) }

export const pathfindingCorpus = stage({
  name: "pathfinding-corpus",
  version: 1,
  params: Schema.Struct(GridSet),
  inputs: {},
  output: PlainCorpusFile,
  run: ({ params, ctx }) =>
    Effect.sync(() => {
      const tasks = pathTasks(params, params.count, params.seed)
      // the document is the grid and its moves, as pathfinding-examples writes them (bos + grid + moves + eos)
      const train = tasks.map((t, i) => ({ id: `path-${i}`, genre: "pathfinding" as const, text: gridText(t.grid) + movesText(t.path) }))
      const optimal = tasks.filter((t) => t.ratio === 1).length
      ctx.log(`${tasks.length} ${params.size}x${params.size} grids (seed ${params.seed}): ${optimal} shortest paths, ${tasks.length - optimal} detours`)
      const file = path.join(ctx.workDir, "paths.json")
      fs.writeFileSync(file, JSON.stringify({ train, heldOut: [] } satisfies PlainTexts))
      return { path: file }
    }),
})

export const NavigatorEvaluation = Artifact.json(
  "NavigatorEvaluation",
  Schema.Struct({
    /** the held-out grids rolled out */
    grids: Schema.Struct(GridSet),
    rollouts: Schema.Array(RolloutStats),
  }),
)

export const evaluateNavigator = stage({
  name: "evaluate-navigator",
  version: 1,
  params: Schema.Struct({
    /** held-out grids: a seed the training corpus does not use */
    ...GridSet,
    decodings: Schema.Array(Decoding),
    maxNewTokens: PositiveInt,
    batchSize: PositiveInt,
    threads: Schema.Int.check(Schema.isGreaterThanOrEqualTo(0)),
  }),
  unkeyed: ["batchSize", "threads"],
  inputs: { model: LlamaWeights, tokenizer: TokenizerJson },
  output: NavigatorEvaluation,
  resources: { gpu: 1, isolate: "process" },
  run: ({ params, inputs, ctx }) =>
    Effect.gen(function* () {
      const { checkpoint, tokenizer } = yield* materializeModel(path.join(ctx.workDir, "model"), inputs.model, inputs.tokenizer)
      const tasks = pathTasks(params, params.count, params.seed).map((t) => rolloutTask(t, gridPrompt(tokenizer, checkpoint.config.bosTokenId, t.grid)))
      const generator = yield* scopedSessions(makeGenerator(checkpoint, { graphDir: path.join(ctx.workDir, "generate"), device: ctx.device, tokenizer, ...(params.threads > 0 ? { intraOpThreads: params.threads } : {}) }))
      const rollouts = []
      for (const decoding of params.decodings) {
        const r = yield* rollOut(generator, tasks, decoding, { maxNewTokens: params.maxNewTokens, batchSize: params.batchSize, seed: params.seed })
        ctx.log(`${describeRollouts(r.stats)}; first rollout ${JSON.stringify(r.first.text)} (${r.first.finishReason})`)
        rollouts.push(r.stats)
      }
      const { decodings: _, maxNewTokens: __, batchSize: ___, threads: ____, ...grids } = params
      return { grids, rollouts }
    }).pipe(Effect.scoped),
})

export const navigatorReadme = (r: {
  readonly name: string
  readonly startedFrom: string
  readonly command: string
  readonly parameters: number
  readonly trained: TrainedMetadata
  readonly evaluation: typeof NavigatorEvaluation.schema.Type
}) => {
  const rows = r.evaluation.rollouts.map(
    (s) =>
      `| ${decodingLabel(s)} | ${percent(s.validity)} | ${percent(s.legal)} | ${s.lengthRatio.toFixed(3)} | ${s.meanMoves.toFixed(1)} (${s.meanOptimal.toFixed(1)}) |`,
  )
  const g = r.evaluation.grids
  return `# ${r.name}

\`${r.startedFrom}\` (${(r.parameters / 1e6).toFixed(2)}M parameters, same architecture and tokenizer) tuned by \`pipe\` on grid
pathfinding written as text: the frozen model of the soft-prompt experiment's pathfinding objective
(\`pipelines/soft-prompts.ts\`, seed 002). The family never saw a grid; this model has, with paths of
mixed quality and no label saying which: half shortest paths, half detours (random walks that step
towards the goal with probability ${g.greed}; the held-out grids below are drawn with the same options). A conditional soft prompt then has to pick the quality.

A document is the grid, one row per line ("#" wall, "." free, "S" start, "G" goal), then the moves
(" north", " east", " south", " west"), framed bos ... eos:

    #.#..
    .S#..
    ...G#
    ..#..
    .....
     south east east

## Evaluation

Rollouts on ${g.count} held-out grids (${g.size}x${g.size}, wall density ${g.wallDensity}, seed ${g.seed}, which the training corpus does not
use). A rollout is valid when it is moves only, never enters a wall or leaves the grid, ends on G and
the model stops by itself; length ratio = shortest length / path length, over the valid paths.

| decoding | valid | legal moves only | length ratio | moves (shortest) |
| --- | --- | --- | --- | --- |
${rows.join("\n")}

Sampled paths are the model's distribution over its two kinds of path: a detour has no likeliest move
of its own, so greedy decoding gives (mostly) shortest paths.

## Training

Command (on a fresh clone; cached stages are reused):

    ${r.command}

${r.trained.train_steps} AdamW steps (${JSON.stringify(r.trained.train_params)}), loss on every token of each document, ${r.trained.train_params.pack === true ? "documents packed several to a row" : "one document per row"}.
Training loss (mean per epoch): ${epochLossCurve(r.trained)}.
`
}

export const writeNavigator = stage({
  name: "write-navigator",
  version: 1,
  params: Schema.Struct({ outDir: Schema.String, name: Schema.String, startedFrom: Schema.String, command: Schema.String }),
  inputs: { model: LlamaWeights, tokenizer: TokenizerJson, evaluation: NavigatorEvaluation },
  output: PublishedModel,
  run: ({ params, inputs, ctx }) =>
    Effect.gen(function* () {
      const trained = yield* decodeArtifact(TrainedMetadata, inputs.model.path, "a trained LlamaWeights artifact", inputs.model.metadata)
      const text = navigatorReadme({ ...params, parameters: parameterCount(inputs.model), trained, evaluation: inputs.evaluation })
      const files = yield* publishModelDir(params.outDir, inputs.model, inputs.tokenizer, text, "F16")
      ctx.log(`wrote ${params.outDir}: ${files.map((f) => `${f.name} (${f.bytes} bytes)`).join(", ")}`)
      return { dir: params.outDir, files }
    }),
})
