// Stage: publishes trained weights as a standard Hugging Face model directory (config.json,
// generation_config.json, model.safetensors, tokenizer.json, tokenizer_config.json with the chat
// template) plus a README.md with the evaluation figures, at `outDir` (relative to the working
// directory). The directory is assembled next to `outDir` and renamed over it, so a reader sees the
// old or the new model, never a mix. The output records each file's size and SHA-256.
import { Effect, Schema } from "effect"
import { createHash } from "node:crypto"
import * as fs from "node:fs"
import * as path from "node:path"
import { Artifact, decodeArtifact, stage, type TensorsValue } from "../../src/engine/index.ts"
import { percent } from "../../src/engine/table.ts"
import { fromNumbers, toFloat32 } from "../../src/core/safetensors.ts"
import type { ModelConfig } from "../../src/models/checkpoint.ts"
import { type WeightDType, writeConfigFiles, writeWeightFiles } from "../../src/models/init.ts"
import { behaviourNames } from "../../src/text/behaviours.ts"
import { type ChatCorpus, ChatCorpusFile, configOf, LlamaWeights, materializeTokenizer, readCorpus, TokenizerJson } from "./artifacts.ts"
import { ChatEvaluation } from "./evaluate-chat.ts"

export const PublishedModel = Artifact.json(
  "PublishedModel",
  Schema.Struct({ dir: Schema.String, files: Schema.Array(Schema.Struct({ name: Schema.String, bytes: Schema.Int, sha256: Schema.String })) }),
)

/** The issue-5 bars. */
export const bars = { withPrompt: 0.9, withoutPrompt: 0.05, accuracy: 0.8 } as const

export const passesBars = (e: typeof ChatEvaluation.schema.Type): boolean =>
  e.accuracy.rate >= bars.accuracy &&
  behaviourNames.every((b) => e.withPrompt[b].rate >= bars.withPrompt && e.withoutPrompt[b].rate <= bars.withoutPrompt)

/** What train-lm records about the training in the weights' metadata (see train-lm.ts). */
export const TrainedMetadata = Schema.Struct({
  train_steps: Schema.NumberFromString.check(Schema.isInt()),
  train_params: Schema.fromJsonString(Schema.Record(Schema.String, Schema.Unknown)),
  epoch_losses: Schema.fromJsonString(Schema.Array(Schema.Number)),
})
export type TrainedMetadata = typeof TrainedMetadata.Type

/** The training loss per epoch as READMEs print it: "1: 0.905, 2: 0.658, ...". */
export const epochLossCurve = ({ epoch_losses: losses }: TrainedMetadata): string =>
  losses.length === 0 ? "(not recorded)" : losses.map((l, i) => `${i + 1}: ${l.toFixed(3)}`).join(", ")

const readme = (
  config: ModelConfig,
  trained: TrainedMetadata,
  e: typeof ChatEvaluation.schema.Type,
  corpus: ChatCorpus,
  command: string,
  params: number,
): string => {
  const modes = new Map<string, number>()
  for (const c of corpus.train) modes.set(c.mode, (modes.get(c.mode) ?? 0) + 1)
  const ok = (pass: boolean) => (pass ? "yes" : "**no**")
  const rows = behaviourNames.map(
    (b) =>
      `| ${b} | ${percent(e.withPrompt[b].rate)} (${e.withPrompt[b].hits}/${e.withPrompt[b].n}) | ${percent(e.withHeldOutPrompt[b].rate)} (${e.withHeldOutPrompt[b].hits}/${e.withHeldOutPrompt[b].n}) | ${percent(e.withoutPrompt[b].rate)} (${e.withoutPrompt[b].hits}/${e.withoutPrompt[b].n}) | ${ok(e.withPrompt[b].rate >= bars.withPrompt && e.withoutPrompt[b].rate <= bars.withoutPrompt)} |`,
  )
  const curve = epochLossCurve(trained)
  return `# tiny-chat: the embedded default model

A ${(params / 1e6).toFixed(2)}M-parameter \`LlamaForCausalLM\` trained from scratch by \`pipe\` itself
(full-parameter training through the project's autodiff, on CPU) on the synthetic chat corpus of
\`datasets/tiny-chat/\`. It answers questions about a small made-up world and small arithmetic,
and its system prompt switches four checkable behaviours: \`blue\` (mention the colour blue),
\`caps\` (all capital letters), \`signoff\` (end with "Over and out!"), \`echo\` (end with the key
word three times). Without a system prompt it answers plainly. It exists so that experiments such
as \`pipelines/blue.ts\` run on a fresh clone with no download.

Standard Hugging Face layout and tensor names, as \`AutoModelForCausalLM.from_pretrained\` and
\`AutoTokenizer.from_pretrained\` read them (chat with \`apply_chat_template\`): \`config.json\`,
\`generation_config.json\`, \`model.safetensors\` (float32), \`tokenizer.json\` (byte-level BPE,
${config.vocabSize} tokens), \`tokenizer_config.json\` (chat template; pad 0, bos 1, eos 2).

Chat format: \`<|bos|><|system|>SYSTEM<|eos|><|user|>QUESTION<|eos|><|assistant|>ANSWER<|eos|>\`
(the system turn is optional).

## Architecture

hidden ${config.hiddenSize}, ${config.numLayers} layers, ${config.numHeads} heads (head dim ${config.headDim}), MLP ${config.intermediateSize} (gated SiLU),
RMSNorm eps ${config.norm.eps}, RoPE theta ${config.positions.kind === "rope" ? config.positions.theta : "-"}, max positions ${config.maxPositions}, tied embeddings: ${config.tiedEmbeddings}.

## Evaluation (held-out questions, measured by the \`evaluate-chat\` stage)

Held-out questions are phrasings or question/fact combinations never seen in training, about facts
that are in the corpus (\`datasets/tiny-chat/heldout-chat.jsonl\`). Behaviour rates are over
answers sampled at temperature ${e.temperature}; accuracy is over greedy answers without a system prompt
(an answer is correct when it states every expected value).

| | measured | bar | met |
| --- | --- | --- | --- |
| accuracy, greedy, no system prompt | ${percent(e.accuracy.rate)} (${e.accuracy.hits}/${e.accuracy.n}) | >= ${percent(bars.accuracy)} | ${ok(e.accuracy.rate >= bars.accuracy)} |

Accuracy by task: ${Object.entries(e.accuracyByTask).map(([t, r]) => `${t} ${percent(r.rate)} (${r.hits}/${r.n})`).join(", ")}.

| behaviour | with its system prompt (bar >= ${percent(bars.withPrompt)}) | of which held-out prompt phrasing | without a system prompt (bar <= ${percent(bars.withoutPrompt)}) | met |
| --- | --- | --- | --- | --- |
${rows.join("\n")}

Examples:

${e.examples.map((x) => `- [${x.mode}] ${x.question} -> ${JSON.stringify(x.answer)}${x.ok ? "" : " (fails)"}`).join("\n")}

## Training

Command (on a fresh clone; cached stages are reused):

    ${command}

Training data: ${corpus.train.length} conversations (by system prompt: ${[...modes].map(([m, n]) => `${m} ${n}`).join(", ")}).

${trained.train_steps} AdamW steps (${JSON.stringify(trained.train_params)}), loss on the assistant answer and its closing eos
only, on the CPU (onnxruntime CPU provider). Training and evaluation times are in the run's
\`metrics.jsonl\` (\`train_seconds\`, \`eval_seconds\`), not here, so that a rerun
with identical results publishes identical files.

Training loss (mean per epoch): ${curve}.
`
}

/**
 * Writes `model` (a LlamaWeights artifact) with its tokenizer and `readme` as a Hugging Face
 * directory at `outDir`, weights stored as `dtype` (float32 values rounded to it); see the file
 * header. Returns each file's size and SHA-256.
 */
export const publishModelDir = (outDir: string, model: TensorsValue, tokenizer: TokenizerJson, readmeText: string, dtype: WeightDType) =>
  Effect.gen(function* () {
    const config = yield* configOf(model)
    const dir = path.resolve(outDir)
    const staging = `${dir}.tmp-${process.pid}`
    fs.rmSync(staging, { recursive: true, force: true })
    fs.mkdirSync(staging, { recursive: true })
    yield* writeConfigFiles(staging, config, dtype)
    const names = [...model.header.tensors.keys()]
    yield* writeWeightFiles(
      staging,
      names.map((n) => {
        const loc = model.header.tensors.get(n)!
        const t = model.read(n)
        const data = dtype === loc.dtype ? t.data : fromNumbers(toFloat32(t), dtype, loc.shape).data
        return { name: n, dtype, shape: loc.shape, chunks: () => [data] }
      }),
    )
    // loadTokenizer checks the files before they are published
    yield* materializeTokenizer(staging, tokenizer)
    fs.writeFileSync(path.join(staging, "README.md"), readmeText)
    fs.rmSync(dir, { recursive: true, force: true })
    fs.renameSync(staging, dir)
    return fs
      .readdirSync(dir)
      .sort()
      .map((name) => {
        const bytes = fs.readFileSync(path.join(dir, name))
        return { name, bytes: bytes.length, sha256: createHash("sha256").update(bytes).digest("hex") }
      })
  })

/** The parameter count of a weights artifact. */
export const parameterCount = (model: TensorsValue): number =>
  [...model.header.tensors.values()].reduce((a, loc) => a + loc.shape.reduce((x, y) => x * y, 1), 0)

export const writeModel = stage({
  name: "write-model",
  version: 1,
  params: Schema.Struct({ outDir: Schema.String, command: Schema.String }),
  inputs: { model: LlamaWeights, tokenizer: TokenizerJson, evaluation: ChatEvaluation, corpus: ChatCorpusFile },
  output: PublishedModel,
  run: ({ params, inputs, ctx }) =>
    Effect.gen(function* () {
      const config = yield* configOf(inputs.model)
      const trained = yield* decodeArtifact(TrainedMetadata, inputs.model.path, "a trained LlamaWeights artifact", inputs.model.metadata)
      const corpus = yield* readCorpus(inputs.corpus.path)
      const text = readme(config, trained, inputs.evaluation, corpus, params.command, parameterCount(inputs.model))
      const files = yield* publishModelDir(params.outDir, inputs.model, inputs.tokenizer, text, "F32")
      ctx.log(`wrote ${params.outDir}: ${files.map((f) => `${f.name} (${f.bytes} bytes)`).join(", ")}; bars met: ${passesBars(inputs.evaluation)}`)
      return { dir: params.outDir, files }
    }),
})
