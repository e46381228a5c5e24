// Artifact types the tiny-chat stages pass between each other, and how a stage turns them back
// into usable values (a tokenizer, a model config, a Hugging Face checkpoint directory).
import { Effect, Schema } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import { Artifact } from "../../src/engine/index.ts"
import type { TensorsValue } from "../../src/engine/index.ts"
import { type Checkpoint, loadCheckpoint, type ModelConfig, parseModelConfig } from "../../src/models/checkpoint.ts"
import type { ChatEvalRecord, ChatExample } from "../../src/text/synthetic/corpus.ts"
import { loadTokenizer, type TextTokenizer } from "../../src/text/tokenizer.ts"

/** The generated chat corpus as one JSON file: `{ train, heldOutChat }` (see `ChatCorpus`). */
export const ChatCorpusFile = Artifact.file("ChatCorpus")
export interface ChatCorpus {
  readonly train: ReadonlyArray<ChatExample>
  readonly heldOutChat: ReadonlyArray<ChatEvalRecord>
}

export const readCorpus = (file: string): Effect.Effect<ChatCorpus, Error> =>
  Effect.try({
    try: () => JSON.parse(fs.readFileSync(file, "utf8")) as ChatCorpus,
    catch: (e) => new Error(`${file}: cannot read the chat corpus: ${e instanceof Error ? e.message : String(e)}`),
  })

/** tokenizer.json and tokenizer_config.json contents (small: a 1k vocabulary and its merges). */
export const TokenizerJson = Artifact.json(
  "TokenizerJson",
  Schema.Struct({ tokenizer: Schema.Record(Schema.String, Schema.Unknown), tokenizerConfig: Schema.Record(Schema.String, Schema.Unknown) }),
)
export type TokenizerJson = typeof TokenizerJson.schema.Type

/** Writes the two tokenizer files into `dir` and loads them. */
export const materializeTokenizer = (dir: string, files: TokenizerJson): Effect.Effect<TextTokenizer, Error> =>
  Effect.gen(function* () {
    yield* Effect.try({
      try: () => {
        fs.mkdirSync(dir, { recursive: true })
        fs.writeFileSync(path.join(dir, "tokenizer.json"), JSON.stringify(files.tokenizer))
        fs.writeFileSync(path.join(dir, "tokenizer_config.json"), JSON.stringify(files.tokenizerConfig, null, 2) + "\n")
      },
      catch: (e) => new Error(`cannot write tokenizer files into ${dir}: ${String(e)}`),
    })
    return yield* Effect.mapError(loadTokenizer(dir), (e) => new Error(e.message))
  })

/**
 * Causal-LM weights under Hugging Face tensor names; metadata `config` holds the config.json text
 * they belong to, so a tensors artifact is a complete model short of its tokenizer.
 */
export const LlamaWeights = Artifact.tensors("LlamaWeights")

export const configOf = (weights: TensorsValue): Effect.Effect<ModelConfig, Error> =>
  Effect.gen(function* () {
    const text = weights.metadata.config
    if (text === undefined) return yield* Effect.fail(new Error(`${weights.path}: metadata has no "config" (expected config.json text)`))
    const json = yield* Effect.try({ try: () => JSON.parse(text) as unknown, catch: (e) => new Error(`${weights.path}: metadata config: ${String(e)}`) })
    return yield* Effect.mapError(parseModelConfig(`${weights.path} (metadata config)`, json), (e) => new Error(e.message))
  })

/**
 * A Hugging Face checkpoint directory `dir` for a weights artifact and its tokenizer, loaded:
 * config.json is the metadata's config text, model.safetensors a symlink to the artifact's file
 * (graphs read it through its real path, see src/models/graph-weights.ts), plus the tokenizer files.
 */
export const materializeModel = (dir: string, weights: TensorsValue, files: TokenizerJson): Effect.Effect<{ checkpoint: Checkpoint; tokenizer: TextTokenizer }, Error> =>
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
      catch: (e) => new Error(`cannot write a checkpoint directory for ${weights.path} into ${dir}: ${String(e)}`),
    })
    const tokenizer = yield* materializeTokenizer(dir, files)
    const checkpoint = yield* Effect.mapError(loadCheckpoint(dir), (e) => new Error(e.message))
    return { checkpoint, tokenizer }
  })
