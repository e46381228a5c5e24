// Prompt sets of the diffuse-distributions experiment (seed 001), in the seed's format: one prompt
// per JSON file,
//   { "request": "...", "response": ["", ...], "targets": ["{1}", ...], "weights": [0.1, ...]? }
// `response` holds response prefixes (the assistant turn starts with one; every prefix is a context
// of its own), `targets` the strings whose distribution is trained, `weights` the desired
// probabilities (uniform when absent). A set is one such file or a directory of them (its *.json
// files in name order, not recursive), as the seed's train_prompts / test_prompts take either.
//
// Validation fails with the file, the field and the reason: a request that is not a non-empty
// string, a response list that is empty or holds a non-string, empty or duplicate targets, weights
// of another length than targets, negative or non-finite weights, or weights not summing to 1
// within 1e-6.
import { Effect, Schema } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import { Artifact, Directory, errorMessage, ExternalInputError, File, type FileRef, stage } from "../../src/engine/index.ts"

export const DiffusePrompt = Schema.Struct({
  /** the file name without .json; unique within a set */
  id: Schema.String,
  file: Schema.String,
  request: Schema.String,
  /** response prefixes, at least one ("" for none) */
  responses: Schema.Array(Schema.String),
  targets: Schema.Array(Schema.String),
  /** the desired probability of each target (uniform when the file has none) */
  weights: Schema.Array(Schema.Number),
})
export type DiffusePrompt = typeof DiffusePrompt.Type

export const DiffusePrompts = Artifact.json(
  "DiffusePrompts",
  Schema.Struct({
    /** the file or directory the set came from, as given */
    source: Schema.String,
    prompts: Schema.Array(DiffusePrompt),
  }),
)
export type DiffusePrompts = typeof DiffusePrompts.schema.Type

/** How far the weights may sum from 1 (the seed's binomial example sums to 1 + 2e-10). */
export const WEIGHT_SUM_TOLERANCE = 1e-6

const kindOf = (v: unknown) => (v === null ? "null" : Array.isArray(v) ? "an array" : typeof v)

/** One prompt file's content as a DiffusePrompt; throws a message naming the field and the reason. */
export const parsePrompt = (id: string, file: string, text: string): DiffusePrompt => {
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch (e) {
    throw new Error(`not valid JSON (${errorMessage(e)})`)
  }
  if (typeof json !== "object" || json === null || Array.isArray(json)) throw new Error(`expected a JSON object {"request", "response", "targets", "weights"?}, got ${kindOf(json)}`)
  const o = json as Record<string, unknown>
  const { request, response, targets, weights } = o
  if (typeof request !== "string" || request.trim() === "") throw new Error(`field "request": ${request === undefined ? "missing" : `is ${kindOf(request)}${typeof request === "string" ? " (empty)" : ""}`}, expected a non-empty string`)
  const responses = response === undefined ? [""] : response
  if (!Array.isArray(responses) || responses.length === 0) throw new Error(`field "response": is ${kindOf(responses)}${Array.isArray(responses) ? " (empty)" : ""}, expected a non-empty list of response prefixes (use [""] for none)`)
  responses.forEach((r, i) => {
    if (typeof r !== "string") throw new Error(`field "response[${i}]": is ${kindOf(r)}, expected a string`)
  })
  if (!Array.isArray(targets) || targets.length === 0) throw new Error(`field "targets": ${targets === undefined ? "missing" : `is ${kindOf(targets)}${Array.isArray(targets) ? " (empty)" : ""}`}, expected a non-empty list of strings`)
  const seen = new Map<string, number>()
  targets.forEach((t, i) => {
    if (typeof t !== "string" || t === "") throw new Error(`field "targets[${i}]": is ${typeof t === "string" ? "an empty string" : kindOf(t)}, expected a non-empty string`)
    const first = seen.get(t)
    if (first !== undefined) throw new Error(`field "targets[${i}]": duplicate target ${JSON.stringify(t)} (also targets[${first}]); each target must appear once (use weights for a non-uniform distribution)`)
    seen.set(t, i)
  })
  let ws: number[]
  if (weights === undefined) ws = targets.map(() => 1 / targets.length)
  else {
    if (!Array.isArray(weights)) throw new Error(`field "weights": is ${kindOf(weights)}, expected a list of numbers`)
    if (weights.length !== targets.length) throw new Error(`field "weights": has ${weights.length} values but "targets" has ${targets.length}; give one weight per target`)
    weights.forEach((w, i) => {
      if (typeof w !== "number" || !Number.isFinite(w) || w < 0) throw new Error(`field "weights[${i}]": is ${JSON.stringify(w)}, expected a finite number >= 0`)
    })
    const sum = (weights as number[]).reduce((a, b) => a + b, 0)
    if (Math.abs(sum - 1) > WEIGHT_SUM_TOLERANCE) throw new Error(`field "weights": sums to ${sum}, expected 1 (within ${WEIGHT_SUM_TOLERANCE})`)
    ws = weights as number[]
  }
  return { id, file, request, responses: responses as string[], targets: targets as string[], weights: ws }
}

/** The prompt files of a set: the file itself, or a directory's *.json files in name order. */
const promptFiles = (source: string): string[] => {
  if (!fs.statSync(source).isDirectory()) return [source]
  const files = fs
    .readdirSync(source)
    .filter((f) => f.endsWith(".json"))
    .sort()
    .map((f) => path.join(source, f))
  if (files.length === 0) throw new Error(`${source}: no prompt files (*.json) in this directory`)
  return files
}

/** Reads and validates a prompt set (see the file header); errors name the file and the field. */
export const readPromptSet = (source: string): Effect.Effect<DiffusePrompts, ExternalInputError> =>
  Effect.gen(function* () {
    const files = yield* Effect.try({ try: () => promptFiles(source), catch: (e) => new ExternalInputError({ path: source, message: errorMessage(e) }) })
    const prompts = yield* Effect.forEach(files, (file) =>
      Effect.try({
        try: () => parsePrompt(path.basename(file, ".json"), file, fs.readFileSync(file, "utf8")),
        catch: (e) => new ExternalInputError({ path: file, message: `prompt file ${file}: ${errorMessage(e)}` }),
      }),
    )
    return { source, prompts }
  })

/** Σ_y p*(y) (−log p*(y)), nats: the lowest expected loss of a prompt (zero-weight targets add nothing). */
export const targetEntropy = (weights: ReadonlyArray<number>): number => weights.reduce((h, w) => (w > 0 ? h - w * Math.log(w) : h), 0)

const run = (set: FileRef, log: (line: string) => void) =>
  Effect.tap(readPromptSet(set.path), (s) =>
    Effect.sync(() => log(`${set.path}: ${s.prompts.length} prompts, ${s.prompts.reduce((n, p) => n + p.targets.length, 0)} targets, Σ H(p*) = ${s.prompts.reduce((h, p) => h + targetEntropy(p.weights), 0).toFixed(4)} nats`)),
  )

/** A directory of prompt files. */
export const diffusePrompts = stage({
  name: "diffuse-prompts",
  version: 1,
  params: Schema.Struct({}),
  inputs: { prompts: Directory },
  output: DiffusePrompts,
  run: ({ inputs, ctx }) => run(inputs.prompts, ctx.log),
})

/** One prompt file. */
export const diffusePromptFile = stage({
  name: "diffuse-prompt-file",
  version: 1,
  params: Schema.Struct({}),
  inputs: { prompts: File },
  output: DiffusePrompts,
  run: ({ inputs, ctx }) => run(inputs.prompts, ctx.log),
})
