// Stage `held-out`: the held-out texts a blend is tuned and tested on, tokenized (BOS first, cut to
// maxTokens) and split into validation and test by a seeded shuffle, as seed 003 split its test
// texts once more so that tuning never sees the final test set.
//
// Input: a file named with --set texts.path=FILE (or any file node), told apart by its content: a
// JSON array of records or object with a `heldOut` array of records (the tiny family's plain
// corpus), or JSONL with one record per line (it starts with "{"), the text
// under `field`, optionally filtered on a "genre" field (e.g. "story"); or plain text whose texts
// are separated by blank lines (seed 003's fairytales.txt). With format "chat" a record is a chat
// (`messages` and the answer under `field`, as datasets/tiny-chat/heldout-chat.jsonl) rendered
// with the model's chat template, and only the answer's tokens (through the end-of-turn token) are
// scored: the system and user turns are the question, not what a chat model is tuned to write, and a
// base model is lost on them, so a search over every token would tune the blend for the prompt.
// Plain texts are scored on every token after BOS. Sequences with no scored target left after the
// cut to maxTokens are dropped.
import { Effect, Schema } from "effect"
import * as fs from "node:fs"
import { mulberry32 } from "../../src/core/random.ts"
import { Directory, File, StageError, stage } from "../../src/engine/index.ts"
import { openModel } from "../baking/model.ts"
import { type ChatMessage, chatPromptIds } from "../../src/text/chat-template.ts"
import type { TextTokenizer } from "../../src/text/tokenizer.ts"
import { type HeldOutSplit, type HeldOutSplits, HeldOutTokens, heldOutOutput, scoredCount } from "./artifacts.ts"

const PositiveInt = Schema.Int.check(Schema.isGreaterThan(0))

export const HeldOutParams = Schema.Struct({
  /** "text": the record's `field` is the text; "chat": the record's `messages` then `field` as the
   *  assistant's answer, rendered with the model's chat template (proxy tuning on chat data) */
  format: Schema.Literals(["text", "chat"]),
  /** the field holding the text (or the answer) */
  field: Schema.String,
  /** JSON / JSONL: keep only records whose "genre" field is this ("" for all) */
  genre: Schema.String,
  /** tokens per sequence, BOS included (at most the members' max_position_embeddings) */
  maxTokens: PositiveInt.check(Schema.isGreaterThan(1)),
  /** texts used, after dropping empty ones (0: all) */
  limit: Schema.Int.check(Schema.isGreaterThanOrEqualTo(0)),
  validationFraction: Schema.Finite.check(Schema.isGreaterThan(0), Schema.isLessThan(1)),
  seed: Schema.Int,
})
export type HeldOutParams = typeof HeldOutParams.Type

const fail = (file: string, message: string) => new StageError({ message: `held-out texts ${file}: ${message}` })
const describe = (v: unknown) => (v === undefined ? "missing" : `${JSON.stringify(v)?.slice(0, 40)}`)
type Rec = Readonly<Record<string, unknown>>

const parseJson = (text: string): unknown => {
  try {
    return JSON.parse(text) as unknown
  } catch {
    return undefined
  }
}

/** The records of `file` (see the file header; a plain text becomes { text }), genre-filtered. */
export const readRecords = (file: string, genre: string): Effect.Effect<Rec[], StageError> =>
  Effect.gen(function* () {
    const text = yield* Effect.try({ try: () => fs.readFileSync(file, "utf8"), catch: (e) => fail(file, `cannot read: ${e instanceof Error ? e.message : String(e)}`) })
    const records: Array<[unknown, string]> = []
    const whole = parseJson(text)
    if (whole !== undefined) {
      // a one-line JSONL file is a whole JSON object: one record
      const heldOut = (whole as { heldOut?: unknown } | null)?.heldOut
      const list: unknown[] = Array.isArray(whole) ? whole : Array.isArray(heldOut) ? heldOut : [whole]
      list.forEach((r, i) => records.push([r, `record ${i}`]))
    } else if (text.trimStart().startsWith("{")) {
      for (const [i, line] of text.split("\n").entries())
        if (line.trim().length > 0) records.push([yield* Effect.try({ try: () => JSON.parse(line) as unknown, catch: () => fail(file, `line ${i + 1}: not JSON`) }), `line ${i + 1}`])
    } else text.split(/\n\s*\n/).forEach((t, i) => records.push([{ text: t.trim() }, `text ${i + 1}`]))
    const out: Rec[] = []
    for (const [r, where] of records) {
      if (typeof r !== "object" || r === null || Array.isArray(r)) return yield* Effect.fail(fail(file, `${where}: expected an object, got ${describe(r)}`))
      const rec = r as Rec
      if (genre === "" || rec.genre === undefined || rec.genre === genre) out.push(rec)
    }
    return out
  })

/** A record's token ids and the index of its first scored target (see HeldOutParams.format); fails naming the field. */
const recordIds = (rec: Rec, params: HeldOutParams, tokenizer: TextTokenizer, bos: number | undefined, file: string, i: number) =>
  Effect.gen(function* () {
    const value = rec[params.field]
    if (typeof value !== "string") return yield* Effect.fail(fail(file, `record ${i}: field "${params.field}" should be a string, got ${describe(value)}`))
    if (params.format === "text") return { ids: [...(bos === undefined ? [] : [bos]), ...tokenizer.encode(value, { addSpecialTokens: false })], scoredFrom: 1 }
    const messages = rec.messages
    if (!Array.isArray(messages) || !messages.every((m) => typeof m?.role === "string" && typeof m?.content === "string"))
      return yield* Effect.fail(fail(file, `record ${i}: field "messages" should be a list of { role, content }, got ${describe(messages)}`))
    const render = (chat: ChatMessage[], addGenerationPrompt: boolean) => Effect.mapError(chatPromptIds(tokenizer, chat, { addGenerationPrompt }), (e) => fail(file, `record ${i}: ${e.message}`))
    const prompt = yield* render(messages as ChatMessage[], true)
    const ids = yield* render([...(messages as ChatMessage[]), { role: "assistant", content: value }], false)
    // the answer starts where the generation prompt ends; a template or tokenizer that renders the
    // prompt differently inside the whole chat leaves no such boundary, so it is refused
    if (!prompt.every((t, k) => ids[k] === t))
      return yield* Effect.fail(fail(file, `record ${i}: the rendered chat does not start with its generation prompt's ${prompt.length} tokens, so the answer's first token cannot be found`))
    return { ids, scoredFrom: prompt.length }
  })

export const heldOut = stage({
  name: "held-out",
  version: 2,
  params: HeldOutParams,
  inputs: { texts: File, model: Directory },
  output: HeldOutTokens,
  run: ({ params, inputs, ctx }) =>
    Effect.gen(function* () {
      const { checkpoint, tokenizer } = yield* openModel(inputs.model.path)
      const bos = checkpoint.config.bosTokenId
      const records = yield* readRecords(inputs.texts.path, params.genre)
      const all = (yield* Effect.forEach(records, (r, i) => recordIds(r, params, tokenizer, bos, inputs.texts.path, i))).map((s) => ({ ids: s.ids.slice(0, params.maxTokens), scoredFrom: s.scoredFrom }))
      const seqs = all.filter((s) => s.ids.length > s.scoredFrom)
      if (seqs.length < all.length) ctx.log(`${all.length - seqs.length} texts dropped: nothing left to score within maxTokens ${params.maxTokens}`)
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
      const split = (s: typeof used): HeldOutSplit => ({ ids: s.map((x) => x.ids), scoredFrom: s.map((x) => x.scoredFrom) })
      const splits: HeldOutSplits = { validation: split(used.slice(0, nVal)), test: split(used.slice(nVal)) }
      ctx.log(`${records.length} texts; validation ${nVal} (${scoredCount(splits.validation)} scored tokens), test ${used.length - nVal} (${scoredCount(splits.test)})`)
      return heldOutOutput(splits)
    }),
})
