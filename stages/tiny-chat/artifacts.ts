// Artifact types the tiny-chat stages pass between each other, and how a stage turns them back
// into usable values (a tokenizer, a model config, a Hugging Face checkpoint directory).
import { Effect, Schema } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import { Artifact, ArtifactError, decodeArtifact, errorMessage, type TensorsValue } from "../../src/engine/index.ts"
import { storageError } from "../../src/engine/errors.ts"
import { type Checkpoint, loadCheckpoint, parseModelConfig } from "../../src/models/checkpoint.ts"
import { behaviourNames } from "../../src/text/behaviours.ts"
import type { ChatEvalRecord, ChatExample } from "../../src/text/synthetic/corpus.ts"
import { loadTokenizer, type TextTokenizer } from "../../src/text/tokenizer.ts"

/** The generated chat corpus as one JSON file: `{ train, heldOutChat }` (see `ChatCorpus`). */
export const ChatCorpusFile = Artifact.file("ChatCorpus")

const ChatMessage = Schema.Struct({ role: Schema.Literals(["system", "user", "assistant"]), content: Schema.String })
const Mode = Schema.Literals(["none", "neutral", ...behaviourNames])
const Task = Schema.Literals(["lookup", "arithmetic", "describe", "pick"])
const ChatExampleSchema = Schema.Struct({ id: Schema.String, messages: Schema.Array(ChatMessage), mode: Mode, task: Task, about: Schema.String })
const ChatEvalRecordSchema = Schema.Struct({
  ...ChatExampleSchema.fields,
  system_prompt_seen: Schema.NullOr(Schema.Boolean),
  heldout_kind: Schema.Literals(["new_template", "new_combination"]),
  answers: Schema.Array(Schema.String),
  reference: Schema.String,
})
export interface ChatCorpus {
  readonly train: ReadonlyArray<ChatExample>
  readonly heldOutChat: ReadonlyArray<ChatEvalRecord>
}
// Typed as the corpus generator's records, so a field added there and not here does not compile.
const ChatCorpus: Schema.Codec<ChatCorpus, any> = Schema.Struct({ train: Schema.Array(ChatExampleSchema), heldOutChat: Schema.Array(ChatEvalRecordSchema) })

export const readCorpus = (file: string): Effect.Effect<ChatCorpus, ArtifactError> =>
  Effect.flatMap(
    Effect.try({
      try: () => fs.readFileSync(file, "utf8"),
      catch: (e) => new ArtifactError({ path: file, field: "", message: `${file}: cannot read the chat corpus: ${errorMessage(e)}` }),
    }),
    (text) => decodeArtifact(Schema.fromJsonString(ChatCorpus), file, "a chat corpus", text),
  )

/** tokenizer.json and tokenizer_config.json contents (small: a 1k vocabulary and its merges). */
export const TokenizerJson = Artifact.json(
  "TokenizerJson",
  Schema.Struct({ tokenizer: Schema.Record(Schema.String, Schema.Unknown), tokenizerConfig: Schema.Record(Schema.String, Schema.Unknown) }),
)
export type TokenizerJson = typeof TokenizerJson.schema.Type

/** Writes the two tokenizer files into `dir` and loads them. */
export const materializeTokenizer = (dir: string, files: TokenizerJson) =>
  Effect.gen(function* () {
    yield* Effect.try({
      try: () => {
        fs.mkdirSync(dir, { recursive: true })
        fs.writeFileSync(path.join(dir, "tokenizer.json"), JSON.stringify(files.tokenizer))
        fs.writeFileSync(path.join(dir, "tokenizer_config.json"), JSON.stringify(files.tokenizerConfig, null, 2) + "\n")
      },
      catch: (e) => storageError("writing tokenizer files into", dir, e),
    })
    return yield* loadTokenizer(dir)
  })

/**
 * Causal-LM weights under Hugging Face tensor names; metadata `config` holds the config.json text
 * they belong to, so a tensors artifact is a complete model short of its tokenizer.
 */
export const LlamaWeights = Artifact.tensors("LlamaWeights")

// config.json as JSON text; parseModelConfig checks its fields against the architecture.
const WeightsMetadata = Schema.Struct({ config: Schema.fromJsonString(Schema.Unknown) })

export const configOf = (weights: TensorsValue) =>
  Effect.gen(function* () {
    const { config } = yield* decodeArtifact(WeightsMetadata, weights.path, "a LlamaWeights artifact (metadata config holds config.json)", weights.metadata)
    return yield* parseModelConfig(`${weights.path} (metadata config)`, config)
  })

/**
 * A Hugging Face checkpoint directory `dir` for a weights artifact and its tokenizer, loaded:
 * config.json is the metadata's config text, model.safetensors a symlink to the artifact's file
 * (graphs read it through its real path, see src/models/graph-weights.ts), plus the tokenizer files.
 */
export const materializeModel = (dir: string, weights: TensorsValue, files: TokenizerJson) =>
  Effect.gen(function* () {
    yield* configOf(weights)
    yield* Effect.try({
      try: () => {
        fs.mkdirSync(dir, { recursive: true })
        fs.writeFileSync(path.join(dir, "config.json"), weights.metadata.config!)
        const target = path.join(dir, "model.safetensors")
        fs.rmSync(target, { force: true })
        fs.symlinkSync(path.resolve(weights.path), target)
      },
      catch: (e) => storageError(`writing a checkpoint directory for ${weights.path} into`, dir, e),
    })
    const tokenizer = yield* materializeTokenizer(dir, files)
    const checkpoint = yield* loadCheckpoint(dir)
    return { checkpoint, tokenizer } satisfies { checkpoint: Checkpoint; tokenizer: TextTokenizer }
  })
