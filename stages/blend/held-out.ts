// Stage `held-out`: the held-out texts a blend is tuned and tested on, tokenized (BOS first, cut to
// maxTokens) and split into validation and test by a seeded shuffle, as seed 003 split its test
// texts once more so that tuning never sees the final test set.
//
// Input: a text file named with --set texts.path=FILE: JSONL with one text per line under `field`
// (e.g. {"text": "..."}), or a plain .txt whose texts are separated by blank lines (seed 003's
// fairytales.txt). Texts of fewer than 2 tokens are dropped (nothing to predict).
import { Effect, Schema } from "effect"
import * as fs from "node:fs"
import { mulberry32 } from "../../src/core/random.ts"
import { Directory, File, StageError, stage } from "../../src/engine/index.ts"
import { openModel } from "../baking/model.ts"
import { type HeldOutSplits, HeldOutTokens, heldOutOutput } from "./artifacts.ts"

const PositiveInt = Schema.Int.check(Schema.isGreaterThan(0))

export const HeldOutParams = Schema.Struct({
  /** JSONL: the field holding the text */
  field: Schema.String,
  /** tokens per sequence, BOS included (at most the members' max_position_embeddings) */
  maxTokens: PositiveInt.check(Schema.isGreaterThan(1)),
  /** texts used, after dropping empty ones (0: all) */
  limit: Schema.Int.check(Schema.isGreaterThanOrEqualTo(0)),
  validationFraction: Schema.Finite.check(Schema.isGreaterThan(0), Schema.isLessThan(1)),
  seed: Schema.Int,
})
export type HeldOutParams = typeof HeldOutParams.Type

/** The texts of `file` (see the file header); a malformed line fails naming the file and line. */
export const readTexts = (file: string, field: string) =>
  Effect.gen(function* () {
    const text = yield* Effect.try({ try: () => fs.readFileSync(file, "utf8"), catch: (e) => new StageError({ message: `held-out texts ${file}: cannot read: ${e instanceof Error ? e.message : String(e)}` }) })
    if (!file.endsWith(".jsonl"))
      return text
        .split(/\n\s*\n/)
        .map((t) => t.trim())
        .filter((t) => t.length > 0)
    return yield* Effect.forEach(
      text.split("\n").map((line, i) => [line, i] as const).filter(([line]) => line.trim().length > 0),
      ([line, i]) =>
        Effect.try({
          try: () => {
            const v = (JSON.parse(line) as Record<string, unknown>)[field]
            if (typeof v !== "string") throw new Error(`field "${field}" is ${v === undefined ? "missing" : `not a string (${JSON.stringify(v)?.slice(0, 40)})`}`)
            return v
          },
          catch: (e) => new StageError({ message: `held-out texts ${file}, line ${i + 1}: ${e instanceof Error ? e.message : String(e)}` }),
        }),
    )
  })

export const heldOut = stage({
  name: "held-out",
  version: 1,
  params: HeldOutParams,
  inputs: { texts: File, model: Directory },
  output: HeldOutTokens,
  run: ({ params, inputs, ctx }) =>
    Effect.gen(function* () {
      const { checkpoint, tokenizer } = yield* openModel(inputs.model.path)
      const bos = checkpoint.config.bosTokenId
      const texts = yield* readTexts(inputs.texts.path, params.field)
      const seqs = texts
        .map((t) => [...(bos === undefined ? [] : [bos]), ...tokenizer.encode(t, { addSpecialTokens: false })].slice(0, params.maxTokens))
        .filter((s) => s.length >= 2)
      // Fisher-Yates with the seed, then the first share is validation
      const rand = mulberry32(params.seed)
      for (let i = seqs.length - 1; i > 0; i--) {
        const j = Math.floor(rand() * (i + 1))
        ;[seqs[i], seqs[j]] = [seqs[j], seqs[i]]
      }
      const used = params.limit > 0 ? seqs.slice(0, params.limit) : seqs
      const nVal = Math.round(used.length * params.validationFraction)
      if (nVal === 0 || nVal === used.length)
        return yield* Effect.fail(new StageError({ message: `held-out texts ${inputs.texts.path}: ${used.length} usable texts cannot be split ${params.validationFraction} / ${1 - params.validationFraction} into two non-empty sets` }))
      const splits: HeldOutSplits = { validation: used.slice(0, nVal), test: used.slice(nVal) }
      const count = (s: number[][]) => s.reduce((n, x) => n + x.length - 1, 0)
      ctx.log(`${texts.length} texts; validation ${splits.validation.length} (${count(splits.validation)} scored tokens), test ${splits.test.length} (${count(splits.test)})`)
      return heldOutOutput(splits)
    }),
})
