// The artifacts the prompt-baking stages pass between each other, and their codecs.
//
//   Questions       JSON: the question set (id, text, reference answers) a stage samples on.
//   Trajectories    tensors: per question the chat prompt with the system prompt (teacher) and
//                   without it (student), per trajectory its question and response tokens; the
//                   texts and sampling settings in the metadata.
//   TeacherLogits   tensors: the prompted model's distribution at every response token of a
//                   Trajectories artifact, as top-k log-probs + tail mass; or, in "recompute"
//                   mode, no tensors (the training graph runs the prompted model itself).
//   BakedAdapter    tensors: a LoRA adapter under PEFT tensor names, adapter_config.json in the
//                   metadata, so `pipe export` and the run folder's adapter/ are directories PEFT loads.
//   BakeEvaluation  JSON: one named model variant's KL to a reference variant, behaviour rate,
//                   accuracy and samples.
//   BakeComparison  JSON: any number of evaluations side by side, with the Markdown report.
//
// Ragged lists (prompts, responses) are stored flat with offsets: `<name>_ids` I32 [total] and
// `<name>_offsets` I64 [count + 1]. Response tokens include the stop token when a trajectory
// ended on one, so the student learns where the prompted model stops.
import { Effect, Schema } from "effect"
import { ArtifactError, Artifact, decodeArtifact, errorMessage, type TensorsOutput, type TensorsValue } from "../../src/engine/index.ts"
import { ADAPTER_CONFIG_METADATA, adapterConfigJson, adapterTensors, type LoraAdapter, readAdapterFile } from "../../src/models/peft.ts"
import { fromNumbers, type Tensor, toFloat32, toFloat64 } from "../../src/core/safetensors.ts"

// ------------------------------------------------------------------------------ questions

export const Question = Schema.Struct({
  id: Schema.String,
  text: Schema.String,
  /** reference answers (SQuAD `answers.text`); empty when the set has none */
  answers: Schema.Array(Schema.String),
})
export type Question = typeof Question.Type

export const Questions = Artifact.json(
  "Questions",
  Schema.Struct({
    /** the file the questions came from, as given */
    source: Schema.String,
    items: Schema.Array(Question),
  }),
)
export type Questions = typeof Questions.schema.Type

// ------------------------------------------------------------------------------ ragged tensors

export const packRagged = (name: string, lists: ReadonlyArray<ReadonlyArray<number>>): Array<[string, Tensor]> => {
  const offsets = [0]
  for (const l of lists) offsets.push(offsets[offsets.length - 1] + l.length)
  return [
    [`${name}_ids`, fromNumbers(lists.flat(), "I32", [offsets[offsets.length - 1]])],
    [`${name}_offsets`, fromNumbers(offsets, "I64", [offsets.length])],
  ]
}

export const unpackRagged = (value: TensorsValue, name: string): number[][] => {
  const ids = Array.from(toFloat64(value.read(`${name}_ids`)))
  const offsets = Array.from(toFloat64(value.read(`${name}_offsets`)))
  return offsets.slice(0, -1).map((start, i) => ids.slice(start, offsets[i + 1]))
}

/** Runs `read` on the payload's tensors; a missing or malformed tensor fails naming the file and what it should be. */
export const readTensors = <T>(value: TensorsValue, what: string, read: () => T): Effect.Effect<T, ArtifactError> =>
  Effect.try({ try: read, catch: (e) => new ArtifactError({ path: value.path, field: "tensors", message: `${value.path}: not ${what}: ${errorMessage(e)}` }) })

/** A metadata count: written with String(n). */
export const Count = Schema.NumberFromString.check(Schema.isInt(), Schema.isGreaterThanOrEqualTo(0))

// ------------------------------------------------------------------------------ trajectories

export const Trajectories = Artifact.tensors("Trajectories")

export interface Trajectory {
  /** index into `questions` */
  readonly question: number
  readonly tokens: ReadonlyArray<number>
  /** decoded response, without the stop token */
  readonly text: string
  readonly finishReason: string
}

export interface TrajectorySet {
  readonly systemPrompt: string
  readonly questions: ReadonlyArray<Question>
  /** per question: chat prompt ids with the system prompt (what the prompted model saw) */
  readonly teacherPrompts: ReadonlyArray<ReadonlyArray<number>>
  /** per question: chat prompt ids without it (what the baked model sees) */
  readonly studentPrompts: ReadonlyArray<ReadonlyArray<number>>
  readonly trajectories: ReadonlyArray<Trajectory>
  /** the sampling settings, recorded for `pipe show` */
  readonly sampling: Readonly<Record<string, unknown>>
}

export const trajectoriesOutput = (t: TrajectorySet): TensorsOutput => ({
  tensors: new Map<string, Tensor>([
    ...packRagged("teacher_prompt", t.teacherPrompts),
    ...packRagged("student_prompt", t.studentPrompts),
    ...packRagged("response", t.trajectories.map((x) => x.tokens)),
    ["question_index", fromNumbers(t.trajectories.map((x) => x.question), "I32", [t.trajectories.length])],
  ]),
  metadata: {
    system_prompt: t.systemPrompt,
    questions: JSON.stringify(t.questions),
    texts: JSON.stringify(t.trajectories.map((x) => x.text)),
    finish_reasons: JSON.stringify(t.trajectories.map((x) => x.finishReason)),
    sampling: JSON.stringify(t.sampling),
  },
})

const TrajectoriesMetadata = Schema.Struct({
  system_prompt: Schema.String,
  questions: Schema.fromJsonString(Schema.Array(Question)),
  texts: Schema.fromJsonString(Schema.Array(Schema.String)),
  finish_reasons: Schema.fromJsonString(Schema.Array(Schema.String)),
  sampling: Schema.fromJsonString(Schema.Record(Schema.String, Schema.Unknown)),
})

export const readTrajectories = (value: TensorsValue): Effect.Effect<TrajectorySet, ArtifactError> =>
  Effect.gen(function* () {
    const what = "a Trajectories artifact"
    const meta = yield* decodeArtifact(TrajectoriesMetadata, value.path, what, value.metadata)
    const t = yield* readTensors(value, what, () => ({
      responses: unpackRagged(value, "response"),
      questionIndex: Array.from(toFloat64(value.read("question_index"))),
      teacherPrompts: unpackRagged(value, "teacher_prompt"),
      studentPrompts: unpackRagged(value, "student_prompt"),
    }))
    const n = t.responses.length
    const wrong = (field: string, message: string) => Effect.fail(new ArtifactError({ path: value.path, field, message: `${value.path}: not ${what}: ${message}` }))
    for (const [field, length] of [["texts", meta.texts.length], ["finish_reasons", meta.finish_reasons.length], ["question_index", t.questionIndex.length]] as const)
      if (length !== n) return yield* wrong(field, `${field} has ${length} entries for ${n} responses`)
    const q = meta.questions.length
    if (t.teacherPrompts.length !== q || t.studentPrompts.length !== q)
      return yield* wrong("teacher_prompt", `${t.teacherPrompts.length} teacher and ${t.studentPrompts.length} student prompts for ${q} questions`)
    const bad = t.questionIndex.findIndex((i) => !Number.isInteger(i) || i < 0 || i >= q)
    if (bad >= 0) return yield* wrong("question_index", `question_index[${bad}] is ${t.questionIndex[bad]}, not one of the ${q} questions`)
    return {
      systemPrompt: meta.system_prompt,
      questions: meta.questions,
      teacherPrompts: t.teacherPrompts,
      studentPrompts: t.studentPrompts,
      trajectories: t.responses.map((tokens, i) => ({ question: t.questionIndex[i], tokens, text: meta.texts[i], finishReason: meta.finish_reasons[i] })),
      sampling: meta.sampling,
    }
  })

/** Response tokens over all trajectories (the rows of a TeacherLogits artifact). */
export const responseTokenCount = (t: TrajectorySet): number => t.trajectories.reduce((n, x) => n + x.tokens.length, 0)

// ------------------------------------------------------------------------------ teacher logits

export const TeacherLogits = Artifact.tensors("TeacherLogits")

/**
 * Row r is the prompted model's next-token distribution before response token r (trajectories in
 * order, tokens in order). `stored`: top-k log-probs (descending), their ids and the tail mass
 * 1 - Σ top-k probabilities. `recompute`: nothing stored; a consumer runs the prompted model.
 */
export type TeacherLogitsSet =
  | { readonly mode: "recompute"; readonly rows: number }
  | {
      readonly mode: "stored"
      readonly rows: number
      readonly topK: number
      /** storage dtype of the log-probs ("F16" or "F32"); read back as float32 */
      readonly dtype: "F16" | "F32"
      /** [rows, topK] row-major */
      readonly topLogProbs: Float32Array
      readonly topIds: Int32Array
      /** [rows] */
      readonly tailMass: Float32Array
    }

export const teacherLogitsOutput = (t: TeacherLogitsSet): TensorsOutput =>
  t.mode === "recompute"
    ? { tensors: new Map(), metadata: { mode: "recompute", rows: String(t.rows) } }
    : {
        tensors: new Map<string, Tensor>([
          ["top_logprobs", fromNumbers(t.topLogProbs, t.dtype, [t.rows, t.topK])],
          ["top_ids", fromNumbers(t.topIds, "I32", [t.rows, t.topK])],
          // the tail is often tiny: float16's 6e-8 resolution would round it to 0, so always F32
          ["tail_mass", fromNumbers(t.tailMass, "F32", [t.rows])],
        ]),
        metadata: { mode: "stored", rows: String(t.rows), top_k: String(t.topK), dtype: t.dtype },
      }

const TeacherLogitsMode = Schema.Struct({ mode: Schema.Literals(["stored", "recompute"]), rows: Count })
const StoredTeacherMetadata = Schema.Struct({ top_k: Count.check(Schema.isGreaterThan(0)) })

export const readTeacherLogits = (value: TensorsValue): Effect.Effect<TeacherLogitsSet, ArtifactError> =>
  Effect.gen(function* () {
    const what = "a TeacherLogits artifact"
    const { mode, rows } = yield* decodeArtifact(TeacherLogitsMode, value.path, what, value.metadata)
    if (mode === "recompute") return { mode, rows }
    const { top_k: topK } = yield* decodeArtifact(StoredTeacherMetadata, value.path, what, value.metadata)
    const t = yield* readTensors(value, what, () => {
      const logProbs = value.read("top_logprobs")
      return {
        dtype: logProbs.dtype === "F16" ? ("F16" as const) : ("F32" as const),
        topLogProbs: toFloat32(logProbs),
        topIds: Int32Array.from(toFloat64(value.read("top_ids"))),
        tailMass: toFloat32(value.read("tail_mass")),
      }
    })
    for (const [field, length, want] of [["top_logprobs", t.topLogProbs.length, rows * topK], ["top_ids", t.topIds.length, rows * topK], ["tail_mass", t.tailMass.length, rows]] as const)
      if (length !== want)
        return yield* Effect.fail(
          new ArtifactError({ path: value.path, field, message: `${value.path}: not ${what}: ${field} has ${length} values, expected ${want} (rows ${rows}, top_k ${topK})` }),
        )
    return { mode, rows, topK, ...t }
  })

// ------------------------------------------------------------------------------ adapters

export const BakedAdapter = Artifact.tensors("BakedAdapter")

/** The adapter's PEFT tensors, with adapter_config.json and `extra` (e.g. training figures) as metadata. */
export const adapterOutput = (adapter: LoraAdapter, extra: Readonly<Record<string, string>> = {}) =>
  Effect.map(adapterTensors(adapter), (tensors): TensorsOutput => ({
    tensors,
    metadata: { ...extra, [ADAPTER_CONFIG_METADATA]: JSON.stringify(adapterConfigJson(adapter.config)) },
  }))

export const readAdapterArtifact = (value: TensorsValue) => readAdapterFile(value.path)

// ------------------------------------------------------------------------------ evaluation

export const Rate = Schema.Struct({ rate: Schema.Number, hits: Schema.Int, n: Schema.Int })
export type Rate = typeof Rate.Type

export const rateOf = (oks: ReadonlyArray<boolean>): Rate => {
  const hits = oks.filter(Boolean).length
  return { rate: oks.length === 0 ? 0 : hits / oks.length, hits, n: oks.length }
}

/**
 * What a variant changes about the model. A tagged union, so soft prompts and ensembles join as new
 * tags; the tags are params of the evaluating stage (in its cache key), the data they refer to are
 * its inputs (content-hashed): the system prompt comes with the validation trajectories (x0, the one
 * they were sampled under), the LoRA matrices with the stage's adapter input.
 */
export const Intervention = Schema.Union([
  /** the chat prompt carries x0 as its system turn */
  Schema.TaggedStruct("SystemPrompt", {}),
  /** the LoRA adapter given as the evaluating stage's `adapter` input */
  Schema.TaggedStruct("Lora", {}),
])
export type Intervention = typeof Intervention.Type

/** A name usable as a stage input name and in a table path (`rows[variant=baked].kl`). */
export const VariantName = Schema.String.check(Schema.isPattern(/^[A-Za-z0-9_.+-]+$/, { expected: "a variant name of letters, digits and _ . + -" }))

/** A named model variant: the evaluated checkpoint plus its interventions, each tag at most once. */
export const Variant = Schema.Struct({
  name: VariantName,
  interventions: Schema.Array(Intervention).check(
    Schema.makeFilter((xs: ReadonlyArray<Intervention>) => new Set(xs.map((x) => x._tag)).size === xs.length || "each intervention at most once"),
  ),
})
export type Variant = typeof Variant.Type

export const hasIntervention = (v: Variant, tag: Intervention["_tag"]): boolean => v.interventions.some((x) => x._tag === tag)

/** "system prompt + LoRA", "no interventions": the variant in words, for reports. */
export const describeInterventions = (interventions: ReadonlyArray<Intervention>): string =>
  interventions.length === 0 ? "no interventions" : interventions.map((x) => ({ SystemPrompt: "system prompt", Lora: "LoRA" })[x._tag]).join(" + ")

export const Sample = Schema.Struct({ questionId: Schema.String, question: Schema.String, text: Schema.String, ok: Schema.Boolean })

export const BakeEvaluation = Artifact.json(
  "BakeEvaluation",
  Schema.Struct({
    variant: Variant,
    /** the variant KL is measured against (the teacher of the KL) */
    reference: Variant,
    /** x0 of the experiment (variants with a SystemPrompt intervention ran with it) */
    systemPrompt: Schema.String,
    /** mean per-token KL(reference || variant) over the validation trajectories' response tokens, in nats */
    kl: Schema.Struct({ mean: Schema.Number, tokens: Schema.Int }),
    /** share of fresh samples on held-out questions that pass the checker */
    behaviour: Rate,
    /** greedy answers on the factual set containing a reference answer */
    accuracy: Rate,
    behaviourSamples: Schema.Array(Sample),
    answerSamples: Schema.Array(Sample),
  }),
)
export type BakeEvaluation = typeof BakeEvaluation.schema.Type

export const BakeComparison = Artifact.json(
  "BakeComparison",
  Schema.Struct({
    systemPrompt: Schema.String,
    /** the variant every row's KL is measured against */
    reference: Variant,
    /** one row per variant, in the order the comparison was wired */
    rows: Schema.Array(Schema.Struct({ variant: Schema.String, interventions: Variant.fields.interventions, kl: Schema.Number, behaviour: Rate, accuracy: Rate })),
    /** the pair "KL reduced Nx" compares: KL(reference || from) / KL(reference || to) */
    pair: Schema.Struct({ from: Schema.String, to: Schema.String }),
    klReduction: Schema.Number,
    /** behaviour rate of the reference minus the pair's `to`, in percentage points */
    behaviourGap: Schema.Number,
    /** plain statements of failure, e.g. the pair's `to` further from the reference than its `from` */
    warnings: Schema.Array(Schema.String),
    /** answers to the same held-out questions, one per variant: the reference first, then the rows' order */
    samples: Schema.Array(Schema.Struct({ question: Schema.String, answers: Schema.Array(Schema.Struct({ variant: Schema.String, text: Schema.String })) })),
    markdown: Schema.String,
  }),
)
export type BakeComparison = typeof BakeComparison.schema.Type
