// Data preparation of the soft-prompt experiment, one stage per source; each writes an Examples
// artifact (examples.ts) with train / validation / test splits, tokenized with the model's own
// tokenizer. They depend on the objective and the model's tokenizer only, so a sweep over k shares
// them.
//
//   text-examples         next-token (skip = 0) or skip-s targets on a JSON Lines text set: lines
//                         {"text"} (BOS + text, every token after BOS scored; or, with `bos: false`, the
//                         text alone, every token after its first scored; other fields ignored, so the
//                         family's corpus datasets/tiny-world/*.jsonl reads as is) or
//                         {"prompt", "completion"} (the completion scored, the prompt context)
//   repetition-examples   a fixed string repeated to the sample length, windows at every phase
//   pathfinding-examples  generated grids and paths (pathfinding.ts), condition = length ratio
import { Effect, Schema } from "effect"
import * as fs from "node:fs"
import { Directory, File, StageError, stage } from "../../src/engine/index.ts"
import { hash32 } from "../../src/core/random.ts"
import { makeRng } from "../../src/text/synthetic/random.ts"
import type { TextTokenizer } from "../../src/text/tokenizer.ts"
import { openModel } from "../baking/model.ts"
import { type Example, type ExampleSet, Examples, examplesOutput, rolloutTask, type RolloutTask, shiftedTargets, type Split } from "./examples.ts"
import { type Grid, gridText, movesText, type PathfindingOptions, pathTasks } from "./pathfinding.ts"

const PositiveInt = Schema.Int.check(Schema.isGreaterThan(0))
const NonNegativeInt = Schema.Int.check(Schema.isGreaterThanOrEqualTo(0))
const Probability = Schema.Finite.check(Schema.isBetween({ minimum: 0, maximum: 1 }))

const SplitSizes = {
  train: PositiveInt,
  validation: PositiveInt,
  test: PositiveInt,
  /** split assignment and generation */
  seed: NonNegativeInt,
}

const cut = <T>(items: ReadonlyArray<T>, p: { train: number; validation: number; test: number }): Record<Split, T[]> => ({
  train: items.slice(0, p.train),
  validation: items.slice(p.train, p.train + p.validation),
  test: items.slice(p.train + p.validation, p.train + p.validation + p.test),
})

// ------------------------------------------------------------------------------ text-examples

const TextLine = Schema.Union([Schema.Struct({ text: Schema.String }), Schema.Struct({ prompt: Schema.String, completion: Schema.String })])
const decodeLine = Schema.decodeUnknownResult(Schema.fromJsonString(TextLine))

export const textExamples = stage({
  name: "text-examples",
  version: 4, // 4: `bos`
  params: Schema.Struct({
    /** 0: next-token targets; s > 0: the token s + 1 ahead */
    skip: NonNegativeInt,
    /**
     * a {"text"} line starts with the model's BOS (true), as pretraining framed each document, or is
     * the text alone (false): a soft prompt then sits right before the text's first token, where
     * BOS would be, with nothing between them (the first token, predicted by neither, is not scored)
     */
    bos: Schema.Boolean,
    /** longest sample in tokens (longer texts are cut) */
    length: PositiveInt,
    ...SplitSizes,
  }),
  inputs: { model: Directory, texts: File },
  output: Examples,
  run: ({ params, inputs, ctx }) =>
    Effect.gen(function* () {
      const { checkpoint, tokenizer } = yield* openModel(inputs.model.path)
      const file = inputs.texts.path
      const text = yield* Effect.try({ try: () => fs.readFileSync(file, "utf8"), catch: (e) => new StageError({ message: `${file}: cannot read: ${String(e)}` }) })
      const bos = checkpoint.config.bosTokenId
      const examples: Example[] = []
      for (const [i, line] of text.split("\n").entries()) {
        if (line.trim() === "") continue
        const r = decodeLine(line)
        if (r._tag === "Failure") return yield* Effect.fail(new StageError({ message: `${file}:${i + 1}: expected {"text": ...} or {"prompt": ..., "completion": ...}: ${r.failure.message}` }))
        const v = r.success
        // with `bos`, a plain text starts with the model's BOS whether or not the tokenizer adds one
        // itself (the first family's did not: without BOS tiny-base-s's loss on its own corpus rose
        // and one soft-prompt vector won 10% back by standing in for it); a prompt is taken as
        // written (a rendered chat prompt carries its own special tokens)
        const [context, scored] =
          "text" in v
            ? [[], [...(params.bos && bos !== undefined ? [bos] : []), ...tokenizer.encode(v.text, { addSpecialTokens: false })]]
            : [tokenizer.encode(v.prompt, { addSpecialTokens: false }), tokenizer.encode(v.completion, { addSpecialTokens: false })]
        const ids = [...context, ...scored].slice(0, params.length)
        // "text": the first token has no context to be predicted from
        const scoredFrom = "text" in v ? 1 : context.length
        const targets = shiftedTargets(ids, params.skip, scoredFrom)
        if (targets.some((t) => t >= 0)) examples.push({ ids, targets })
      }
      const need = params.train + params.validation + params.test
      if (examples.length < need)
        return yield* Effect.fail(new StageError({ message: `${file}: ${examples.length} usable lines (with a scored token within ${params.length} tokens at skip ${params.skip}), ${need} needed for train + validation + test` }))
      const shuffled = makeRng(hash32("text-examples", params.seed)).shuffle(examples)
      const set: ExampleSet = { objective: params.skip === 0 ? "next token" : `skip ${params.skip}`, conditionSize: 0, splits: cut(shuffled, params), tasks: [] }
      ctx.log(`${examples.length} texts from ${file}; ${set.objective} targets, ${params.train}/${params.validation}/${params.test} train/validation/test`)
      return examplesOutput(set, checkpoint)
    }),
})

// ------------------------------------------------------------------------------ repetition-examples

export const repetitionExamples = stage({
  name: "repetition-examples",
  version: 2,
  params: Schema.Struct({
    /** the string to repeat ("meowster jones" in the seed) */
    text: Schema.String.check(Schema.isMinLength(1)),
    /** sample length in tokens */
    length: PositiveInt,
    ...SplitSizes,
  }),
  inputs: { model: Directory },
  output: Examples,
  run: ({ params, inputs, ctx }) =>
    Effect.gen(function* () {
      const { checkpoint, tokenizer } = yield* openModel(inputs.model.path)
      const unit = tokenizer.encode(` ${params.text.trim()}`, { addSpecialTokens: false }).length
      // enough repeats for a window of `length` tokens at every phase; tokenized once, so a window
      // has the tokens the repetition has in running text
      const stream = tokenizer.encode(Array.from({ length: Math.ceil((2 * params.length) / unit) + 2 }, () => params.text.trim()).join(" "), { addSpecialTokens: false })
      const bos = checkpoint.config.bosTokenId
      const count = params.train + params.validation + params.test
      const rand = makeRng(hash32("repetition-examples", params.seed))
      const examples = Array.from({ length: count }, (): Example => {
        const start = rand.int(unit, 2 * unit - 1)
        const ids = [...(bos === undefined ? [] : [bos]), ...stream.slice(start, start + params.length)]
        return { ids, targets: shiftedTargets(ids, 0, 1) }
      })
      ctx.log(`"${params.text}" repeated: ${unit} tokens per repeat, ${params.length}-token windows`)
      return examplesOutput({ objective: `repeat "${params.text}"`, conditionSize: 0, splits: cut(examples, params), tasks: [] }, checkpoint)
    }),
})

// ------------------------------------------------------------------------------ pathfinding-examples

/** The grid generator's options as stage params (pathfinding.ts PathfindingOptions). */
export const PathfindingParams = {
  size: Schema.Int.check(Schema.isBetween({ minimum: 2, maximum: 16 })),
  wallDensity: Probability,
  minOptimal: PositiveInt,
  maxMoves: PositiveInt,
  detourFraction: Probability,
  greed: Probability,
}

/** What a model reads before it writes the moves: bos (when it has one) and the grid's text. */
export const gridPrompt = (tokenizer: TextTokenizer, bos: number | undefined, grid: Grid): number[] => [
  ...(bos === undefined ? [] : [bos]),
  ...tokenizer.encode(gridText(grid), { addSpecialTokens: false }),
]

export const pathfindingExamples = stage({
  name: "pathfinding-examples",
  version: 2,
  params: Schema.Struct({ ...PathfindingParams, ...SplitSizes }),
  inputs: { model: Directory },
  output: Examples,
  run: ({ params, inputs, ctx }) =>
    Effect.gen(function* () {
      const { checkpoint, tokenizer } = yield* openModel(inputs.model.path)
      const c = checkpoint.config
      if (c.eosTokenIds.length === 0) return yield* Effect.fail(new StageError({ message: `${inputs.model.path}: config.json has no eos_token_id (a path ends with it)` }))
      const options: PathfindingOptions = params
      const tasks = pathTasks(options, params.train + params.validation + params.test, params.seed)
      const testTasks: RolloutTask[] = []
      const examples = tasks.map((task, i): Example => {
        const prompt = gridPrompt(tokenizer, c.bosTokenId, task.grid)
        const ids = [...prompt, ...tokenizer.encode(movesText(task.path), { addSpecialTokens: false }), c.eosTokenIds[0]]
        if (i >= params.train + params.validation) testTasks.push(rolloutTask(task, prompt))
        return { ids, targets: shiftedTargets(ids, 0, prompt.length), condition: [task.ratio] }
      })
      const longest = examples.reduce((m, x) => Math.max(m, x.ids.length), 0)
      const ratios = tasks.map((t) => t.ratio)
      ctx.log(
        `${tasks.length} ${params.size}x${params.size} grids, longest example ${longest} tokens; ` +
          `${ratios.filter((r) => r === 1).length} optimal paths, mean length ratio ${(ratios.reduce((a, b) => a + b, 0) / ratios.length).toFixed(3)}`,
      )
      return examplesOutput({ objective: "pathfinding", conditionSize: 1, splits: cut(examples, params), tasks: testTasks }, checkpoint)
    }),
})
