// Stage `questions`: a question set read from an external JSON or JSONL file, split into train and
// validation, shuffled with a seed, the first n taken.
//
// Formats (detected from the content, not the file name):
//   JSONL         one JSON object per line (blank lines skipped); errors name the line number.
//   JSON array    `[{...}, ...]`; errors name the item number (1-based).
//   SQuAD         the official nested `{data: [{title, paragraphs: [{context, qas: [{id,
//                 question, answers: [{text, answer_start}]}]}]}]}` (squad_train.json): each qa is a
//                 record with its paragraph's `context` and article's `title` added.
// `field`, `answersField` and `idField` are dotted paths into a record ("q.text"). Answers may be a
// string, a string[], SQuAD's `{text: string[]}` or an array of `{text}` objects.
//
// Split: validation is the round(validationFraction x N) ids with the smallest hash32(id) (ties by
// id), a function of the ids and the fraction alone, so train and validation never overlap
// whatever n and seed are. Then the chosen split is shuffled with `seed` and its first n are taken
// (a larger n extends a smaller one's list).
import { Effect, Schema } from "effect"
import * as fs from "node:fs"
import { errorMessage, ExternalInputError, File, stage } from "../../src/engine/index.ts"
import { hash32 } from "../../src/core/random.ts"
import { deriveRng } from "../../src/text/synthetic/random.ts"
import { type Question, Questions } from "./artifacts.ts"

export const QuestionsParams = Schema.Struct({
  /** dotted path of the question text in a record ("question" for SQuAD) */
  field: Schema.String.check(Schema.isMinLength(1)),
  /** dotted path of the reference answers ("answers" for SQuAD); "" for none */
  answersField: Schema.String,
  /** dotted path of the id; "" to use the line number (JSONL) or item number (JSON) */
  idField: Schema.String,
  split: Schema.Literals(["all", "train", "validation"]),
  /** share of the ids held out as the validation split */
  validationFraction: Schema.Finite.check(Schema.isBetween({ minimum: 0, maximum: 1 })),
  /** shuffle seed */
  seed: Schema.Int.check(Schema.isGreaterThanOrEqualTo(0)),
  /** questions taken after shuffling; 0 = all of the split */
  n: Schema.Int.check(Schema.isGreaterThanOrEqualTo(0)),
})
export type QuestionsParams = typeof QuestionsParams.Type

/** A record of the file and where it is, for error messages ("line 5", "data[0].paragraphs[2].qas[1]"). */
interface Located {
  readonly at: string
  /** 1-based line or item number, the id when idField is "" */
  readonly number: number
  readonly record: unknown
}

const SPLIT_SALT = 0x9e3779b9

const kindOf = (v: unknown) => (v === null ? "null" : Array.isArray(v) ? "an array" : typeof v)

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v)

/** The value at a dotted path, or undefined when a step is missing. */
const lookup = (record: unknown, dotted: string): unknown =>
  dotted.split(".").reduce<unknown>((v, key) => (isObject(v) ? v[key] : undefined), record)

const squadRecords = (json: Record<string, unknown>): Located[] => {
  const data = json.data
  if (!Array.isArray(data)) throw new Error(`a JSON object must be SQuAD's {"data": [...]}, but "data" is ${kindOf(data)}`)
  const out: Located[] = []
  data.forEach((article, a) => {
    const paragraphs = isObject(article) ? article.paragraphs : undefined
    if (!Array.isArray(paragraphs)) throw new Error(`data[${a}].paragraphs is ${kindOf(paragraphs)}, expected an array`)
    paragraphs.forEach((p, pi) => {
      const qas = isObject(p) ? p.qas : undefined
      if (!Array.isArray(qas)) throw new Error(`data[${a}].paragraphs[${pi}].qas is ${kindOf(qas)}, expected an array`)
      qas.forEach((qa, qi) => {
        const at = `data[${a}].paragraphs[${pi}].qas[${qi}]`
        if (!isObject(qa)) throw new Error(`${at} is ${kindOf(qa)}, expected an object`)
        out.push({ at, number: out.length + 1, record: { title: (article as Record<string, unknown>).title, context: (p as Record<string, unknown>).context, ...qa } })
      })
    })
  })
  return out
}

const jsonlRecords = (text: string): Located[] =>
  text.split("\n").flatMap((line, i): Located[] => {
    if (line.trim() === "") return []
    try {
      return [{ at: `line ${i + 1}`, number: i + 1, record: JSON.parse(line) }]
    } catch (e) {
      throw new Error(`line ${i + 1}: not valid JSON (${e instanceof Error ? e.message : String(e)})`)
    }
  })

/** The records of a JSON array, a SQuAD JSON file or a JSONL file (see the file header). */
export const parseRecords = (text: string): Located[] => {
  const start = text.trimStart()[0]
  if (start === "[") {
    let json: unknown
    try {
      json = JSON.parse(text)
    } catch (e) {
      throw new Error(`not valid JSON (${e instanceof Error ? e.message : String(e)})`)
    }
    return (json as unknown[]).map((record, i) => ({ at: `item ${i + 1}`, number: i + 1, record }))
  }
  if (start === "{") {
    // a whole-file object with "data" is SQuAD; anything else (one object per line) is JSONL
    let json: unknown
    try {
      json = JSON.parse(text)
    } catch {
      return jsonlRecords(text)
    }
    if (isObject(json) && "data" in json) return squadRecords(json)
  }
  return jsonlRecords(text)
}

const answersOf = (v: unknown): string[] | undefined => {
  if (typeof v === "string") return [v]
  if (isObject(v)) return answersOf(v.text)
  if (!Array.isArray(v)) return undefined
  const out = v.map((a) => (typeof a === "string" ? a : isObject(a) && typeof a.text === "string" ? a.text : undefined))
  return out.every((a) => a !== undefined) ? (out as string[]) : undefined
}

/** One record as a Question, or the reason it is not one. */
const toQuestion = (r: Located, p: Pick<QuestionsParams, "field" | "answersField" | "idField">): Question => {
  if (!isObject(r.record)) throw new Error(`${r.at}: expected a JSON object, got ${kindOf(r.record)}`)
  const text = lookup(r.record, p.field)
  if (text === undefined) throw new Error(`${r.at}: field "${p.field}" is missing`)
  if (typeof text !== "string") throw new Error(`${r.at}: field "${p.field}" is ${kindOf(text)}, expected a string`)
  if (text.trim() === "") throw new Error(`${r.at}: field "${p.field}" is empty`)
  let id = String(r.number)
  if (p.idField !== "") {
    const v = lookup(r.record, p.idField)
    if (v === undefined) throw new Error(`${r.at}: id field "${p.idField}" is missing`)
    if (typeof v !== "string" && !Number.isInteger(v)) throw new Error(`${r.at}: id field "${p.idField}" is ${kindOf(v)}, expected a string or an integer`)
    id = String(v)
  }
  let answers: string[] = []
  if (p.answersField !== "") {
    const v = lookup(r.record, p.answersField)
    if (v === undefined) throw new Error(`${r.at}: answers field "${p.answersField}" is missing`)
    const parsed = answersOf(v)
    if (parsed === undefined) throw new Error(`${r.at}: answers field "${p.answersField}" is ${kindOf(v)} of the wrong shape, expected a string, a string[], {text: string[]} or [{text: string}]`)
    answers = parsed
  }
  return { id, text, answers }
}

/** Every question of the file's records, ids checked unique. */
export const readQuestionRecords = (text: string, p: Pick<QuestionsParams, "field" | "answersField" | "idField">): Question[] => {
  const records = parseRecords(text)
  const seen = new Map<string, string>()
  return records.map((r) => {
    const q = toQuestion(r, p)
    const first = seen.get(q.id)
    if (first !== undefined) throw new Error(`${r.at}: duplicate id ${JSON.stringify(q.id)} (first at ${first})`)
    seen.set(q.id, r.at)
    return q
  })
}

/** The ids in the validation split: a function of the ids and the fraction only (see the header). */
export const validationIds = (ids: ReadonlyArray<string>, fraction: number): Set<string> => {
  const ranked = ids
    .map((id) => ({ id, h: hash32(id, SPLIT_SALT) }))
    .sort((a, b) => a.h - b.h || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0))
  return new Set(ranked.slice(0, Math.round(fraction * ids.length)).map((x) => x.id))
}

/** The split, shuffled with `seed`, its first n (all for 0); fails when the split has fewer than n. */
const selectQuestions = (
  file: string,
  all: ReadonlyArray<Question>,
  p: Pick<QuestionsParams, "split" | "validationFraction" | "seed" | "n">,
): Effect.Effect<Question[], ExternalInputError> => {
  const validation = validationIds(
    all.map((q) => q.id),
    p.validationFraction,
  )
  const inSplit = p.split === "all" ? all : all.filter((q) => validation.has(q.id) === (p.split === "validation"))
  if (p.n > inSplit.length)
    return Effect.fail(
      new ExternalInputError({
        path: file,
        message: `${file}: asked for n = ${p.n} questions, but split "${p.split}" has only ${inSplit.length} (of ${all.length} in the file, validationFraction ${p.validationFraction})`,
      }),
    )
  const shuffled = deriveRng(p.seed, "questions").shuffle(inSplit)
  return Effect.succeed(p.n === 0 ? shuffled : shuffled.slice(0, p.n))
}

export const questions = stage({
  name: "questions",
  version: 1,
  params: QuestionsParams,
  inputs: { file: File },
  output: Questions,
  run: ({ params, inputs, ctx }) =>
    Effect.gen(function* () {
      const file = inputs.file.path
      const all = yield* Effect.try({
        try: () => readQuestionRecords(fs.readFileSync(file, "utf8"), params),
        // the readers throw messages naming the line or JSON path and the field
        catch: (e) => new ExternalInputError({ path: file, message: `${file}: ${errorMessage(e)}` }),
      })
      const items = yield* selectQuestions(file, all, params)
      ctx.log(`${file}: ${all.length} questions, split "${params.split}" (validationFraction ${params.validationFraction}): took ${items.length}`)
      ctx.metric("questions", items.length)
      return { source: file, items }
    }),
})
