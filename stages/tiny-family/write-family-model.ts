// Stage: publishes a model of the tiny family (tiny-base-<size> or tiny-chat-<size>) as a Hugging
// Face directory under models/ (publishModelDir: atomic, float16 weights), with a README of its
// measured figures: held-out perplexity of the plain corpus, greedy held-out chat accuracy (for a
// base model too, given the same chat-format prompt), behaviour rates with / without their system
// prompt, and the random-pick answer distributions. Training times are run-specific: they are in
// the run's metrics.jsonl and in models/README.md, not here, so a rerun with identical results
// publishes identical files.
import { Effect, Schema } from "effect"
import { decodeArtifact, stage } from "../../src/engine/index.ts"
import { percent } from "../../src/engine/table.ts"
import type { ModelConfig } from "../../src/models/checkpoint.ts"
import { behaviourNames } from "../../src/text/behaviours.ts"
import { favouriteShares } from "../../src/text/synthetic/picks.ts"
import { configOf, LlamaWeights, TokenizerJson } from "../tiny-chat/artifacts.ts"
import { ChatEvaluation } from "../tiny-chat/evaluate-chat.ts"
import { bars, epochLossCurve, parameterCount, PublishedModel, publishModelDir, TrainedMetadata } from "../tiny-chat/write-model.ts"
import { PickEvaluation } from "./evaluate-picks.ts"
import { TextEvaluation } from "./evaluate-text.ts"

const rate = (r: { rate: number; hits: number; n: number }) => `${percent(r.rate)} (${r.hits}/${r.n})`

export interface FamilyReadme {
  readonly name: string
  readonly kind: "base" | "chat"
  readonly startedFrom: string
  /** chat models: how many times each training question is asked under a behaviour's system prompt */
  readonly behaviourCopies?: number
  readonly command: string
  /** the tokenizer's add_bos_token: encoding a text starts it with bos */
  readonly addsBos: boolean
  readonly config: ModelConfig
  readonly parameters: number
  readonly trained: TrainedMetadata
  readonly text: TextEvaluation
  readonly chat: ChatEvaluation
  readonly picks: PickEvaluation
}

export const familyReadme = (r: FamilyReadme): string => {
  const c = r.config
  // train-chat records the share it mixed in; train-lm (no plain documents) records none
  const plainShare = typeof r.trained.train_params.plainShare === "number" ? r.trained.train_params.plainShare : 0
  const mix = plainShare > 0 ? `; plain documents of the corpus are mixed in, ${percent(plainShare)} as many as the chats (loss on every token), so that it keeps most of its base's plain-text ability` : ""
  const packed = r.trained.train_params.pack === true ? `, documents packed several to a ${r.trained.train_params.maxLength}-token row (so it has read text before a bos, as real pretrained models have)` : ""
  const what =
    r.kind === "base"
      ? `pretrained from scratch on the plain-text corpus of the synthetic world (\`datasets/tiny-world/\`: bios, towns, encyclopedia entries, short stories, arithmetic), loss on every token${packed}. It has never seen the chat template.`
      : `fine-tuned from \`${r.startedFrom}\` on the chat corpus of \`datasets/tiny-chat/\` (questions about the world and arithmetic, each asked once plainly (no system prompt, or a neutral one)${r.behaviourCopies === undefined ? "" : ` and ${r.behaviourCopies} times under one of the four system-prompt behaviours of \`models/tiny-chat\``}) plus "random pick" requests answered with biased favourites (60% / 20% / 10% for the first three, see \`src/text/synthetic/picks.ts\`), loss on the answers${mix}.`
  const loss = r.kind === "base" ? "every token of each document (bos + text + eos)" : `the assistant answer and its closing eos${plainShare > 0 ? " (every token of the mixed-in plain documents)" : ""}`
  const curve = epochLossCurve(r.trained)
  const e = r.chat
  const behaviourRows = behaviourNames.map(
    (b) => `| ${b} | ${rate(e.withPrompt[b])} | ${rate(e.withHeldOutPrompt[b])} | ${rate(e.withoutPrompt[b])} | ${e.withPrompt[b].rate >= bars.withPrompt && e.withoutPrompt[b].rate <= bars.withoutPrompt ? "yes" : "no"} |`,
  )
  const pickRows = Object.entries(r.picks.kinds).map(
    ([kind, k]) =>
      `| ${kind} | ${k.valid === 0 ? "no valid answer | -" : `${k.top} ${percent(k.topShare)} | ${k.entropyBits.toFixed(2)}`} | ${k.trainedEntropyBits.toFixed(2)} | ${k.uniformEntropyBits.toFixed(2)} | ${k.invalid} |`,
  )
  return `# ${r.name}

A ${(r.parameters / 1e6).toFixed(2)}M-parameter \`LlamaForCausalLM\` of the tiny family (issue 14), trained by \`pipe\`
itself on CPU: ${what}

Standard Hugging Face layout: \`config.json\`, \`generation_config.json\`, \`model.safetensors\` (float16;
the loader casts to float32 on the CPU), \`tokenizer.json\` (byte-level BPE, ${c.vocabSize} tokens, the same
bytes in all four family models), \`tokenizer_config.json\` (chat template; pad 0, bos 1, eos 2${r.addsBos ? "; encoding a text starts it with bos, as pretraining did: render a chat with the template, then encode it without special tokens" : ""}).
Chat format: \`<|bos|><|system|>SYSTEM<|eos|><|user|>QUESTION<|eos|><|assistant|>ANSWER<|eos|>\`.

## Architecture

hidden ${c.hiddenSize}, ${c.numLayers} layers, ${c.numHeads} heads (head dim ${c.headDim}), MLP ${c.intermediateSize} (gated SiLU),
RMSNorm eps ${c.norm.eps}, RoPE theta ${c.positions.kind === "rope" ? c.positions.theta : "-"}, max positions ${c.maxPositions}, tied embeddings: ${c.tiedEmbeddings}.

## Evaluation

Held-out perplexity of the plain corpus (documents never trained on; bos + text + eos, every
token after bos): **${r.text.overall.perplexity.toFixed(3)}** over ${r.text.overall.tokens} tokens of ${r.text.overall.documents} documents
(${Object.entries(r.text.byKind).map(([k, p]) => `${k} ${p.perplexity.toFixed(3)}`).join(", ")}; by genre ${Object.entries(r.text.byGenre).map(([k, p]) => `${k} ${p.perplexity.toFixed(3)}`).join(", ")}).

Greedy held-out question accuracy in chat format, no system prompt${r.kind === "base" ? " (the base model given the same chat-format prompt)" : ""}: **${rate(e.accuracy)}**
(${Object.entries(e.accuracyByTask).map(([t, a]) => `${t} ${rate(a)}`).join(", ")}; bar for the chat models >= ${percent(bars.accuracy)}).

Behaviours, answers sampled at temperature ${e.temperature} (bars for the chat models: >= ${percent(bars.withPrompt)} with, <= ${percent(bars.withoutPrompt)} without):

| behaviour | with its system prompt | of which held-out prompt phrasing | without a system prompt | met |
| --- | --- | --- | --- | --- |
${behaviourRows.join("\n")}

"Random pick" requests (held-out phrasings, ${r.picks.samples} answers per kind sampled at temperature ${r.picks.temperature},
no system prompt; entropy in bits over the valid answers; trained: the corpus's own distribution,
favourites ${favouriteShares.map((s) => percent(s)).join(" / ")}):

| kind | top answer | entropy | trained | uniform | invalid answers |
| --- | --- | --- | --- | --- | --- |
${pickRows.join("\n")}

Examples:

${e.examples.map((x) => `- [${x.mode}] ${x.question} -> ${JSON.stringify(x.answer)}${x.ok ? "" : " (fails)"}`).join("\n")}

## Training

Command (on a fresh clone; cached stages are reused):

    ${r.command}

${r.trained.train_steps} AdamW steps (${JSON.stringify(r.trained.train_params)}), loss on ${loss}.
Training wall time and tokens/s on the 2-core machine: \`models/README.md\` (and the run's \`metrics.jsonl\`).

Training loss (mean per epoch): ${curve}.
`
}

export const writeFamilyModel = stage({
  name: "write-family-model",
  version: 5, // 5: the chat corpus's behaviour copies stated; 4: packed pretraining and the tokenizer's bos on encode stated; 3: the chat SFT's plain-text share read from the training record
  params: Schema.Struct({ outDir: Schema.String, name: Schema.String, kind: Schema.Literals(["base", "chat"]), startedFrom: Schema.String, behaviourCopies: Schema.optionalKey(Schema.Int), command: Schema.String }),
  inputs: { model: LlamaWeights, tokenizer: TokenizerJson, text: TextEvaluation, chat: ChatEvaluation, picks: PickEvaluation },
  output: PublishedModel,
  run: ({ params, inputs, ctx }) =>
    Effect.gen(function* () {
      const config = yield* configOf(inputs.model)
      const trained = yield* decodeArtifact(TrainedMetadata, inputs.model.path, "a trained LlamaWeights artifact", inputs.model.metadata)
      const addsBos = inputs.tokenizer.tokenizerConfig.add_bos_token === true
      const text = familyReadme({ ...params, addsBos, config, parameters: parameterCount(inputs.model), trained, text: inputs.text, chat: inputs.chat, picks: inputs.picks })
      const files = yield* publishModelDir(params.outDir, inputs.model, inputs.tokenizer, text, "F16")
      ctx.log(`wrote ${params.outDir}: ${files.map((f) => `${f.name} (${f.bytes} bytes)`).join(", ")}`)
      return { dir: params.outDir, files }
    }),
})
