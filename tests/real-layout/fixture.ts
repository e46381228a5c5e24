// Writes a family of families.ts as its Hugging Face repository lays it out, shrunk: config.json
// (published fields, sizes replaced), generation_config.json, the safetensors files (shards plus
// model.safetensors.index.json where the real repository is sharded) with every published tensor
// name and buffer, tokenizer.json and tokenizer_config.json (published chat template and special
// tokens). Weights are random (seeded per tensor name); buffers hold what the real files hold.
//
// tokenizer.json is a byte-level BPE at the model's real vocabulary size: the byte alphabet and
// merges learned by the project's tokenizer builder from the suite's texts, then merges that append
// one byte to an existing token until the regular tokens fill every id the special tokens leave
// free. Every token is reachable through the merges, as in a real BPE.
import { Effect } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import { writeWeightFiles } from "../../src/models/init.ts"
import { hash32, mulberry32 } from "../../src/core/random.ts"
import { dtypeByteSize, elementCount, float32ToBfloat16, float32ToFloat16, type StreamedTensor } from "../../src/core/safetensors.ts"
import { buildTokenizer } from "../../src/text/tokenizer-builder.ts"
import { chatTemplateOf, type Family, type TensorEntry } from "./families.ts"

const SEED = 7
/** Standard deviation of weights, biases and norm noise: large enough that every layer matters. */
const STD = 0.2

const asBytes = (a: Float32Array | Uint16Array | Uint8Array) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength)

const values = (family: Family, t: TensorEntry): StreamedTensor => {
  const n = elementCount(t.shape)
  if (t.buffer !== undefined) {
    const data = t.buffer.values(n)
    return { name: t.name, dtype: t.buffer.dtype, shape: t.shape, chunks: () => [asBytes(data)] }
  }
  const next = mulberry32(hash32(t.name, SEED))
  const halfWidth = STD * Math.sqrt(3) // uniform(-a, a) has standard deviation a / sqrt(3)
  const offset = t.role === "norm" && !family.normStoredAsOffset ? 1 : 0
  const dtype = family.dtype
  return {
    name: t.name,
    dtype,
    shape: t.shape,
    chunks: () => {
      const v = Float32Array.from({ length: n }, () => offset + (2 * next() - 1) * halfWidth)
      return [asBytes(dtype === "F32" ? v : dtype === "BF16" ? float32ToBfloat16(v) : float32ToFloat16(v))]
    },
  }
}

/** config.json of the fixture: the published one with the sizes replaced. */
export const fixtureConfig = (family: Family): Record<string, unknown> => ({ ...family.config, ...family.sizes })

// The prompt twice: the builder merges pairs seen at least twice, so every pre-token of the prompt
// becomes one token and the sequences the tests run stay short.
const corpus = (family: Family): string[] => [
  ...Array(2).fill(family.chat?.rendered() ?? family.text ?? ""),
  "The sky is blue. The sea is blue and the grass is green; what colour is the sky at night?",
  "Answer in one short sentence, then stop.",
]

/** tokenizer.json and tokenizer_config.json with the family's size, special tokens and template. */
const tokenizerFiles = (family: Family) => {
  const { size, specials, postProcessorBos, config } = family.tokenizer
  const learned = buildTokenizer(corpus(family), { vocabSize: 1024, modelMaxLength: 1 })
  const builderSpecials = new Set((learned.tokenizer.added_tokens as Array<{ content: string }>).map((t) => t.content))
  const model = learned.tokenizer.model as { vocab: Record<string, number>; merges: string[] }
  const regular = Object.entries(model.vocab)
    .filter(([t]) => !builderSpecials.has(t))
    .sort(([, a], [, b]) => a - b)
    .map(([t]) => t)
  const bytes = regular.slice(0, 256)
  const merges = [...model.merges]
  const known = new Set(regular)
  const wanted = size - specials.length
  for (let i = 0; regular.length < wanted; i++)
    for (const c of bytes) {
      if (regular.length >= wanted) break
      const token = regular[i] + c
      if (known.has(token)) continue
      known.add(token)
      regular.push(token)
      merges.push(`${regular[i]} ${c}`)
    }
  const specialIds = new Set(specials.map((s) => s.id))
  const vocab: Record<string, number> = {}
  let id = 0
  for (const token of regular) {
    while (specialIds.has(id)) id++
    vocab[token] = id++
  }
  const added = [...specials]
    .sort((a, b) => a.id - b.id)
    .map((s) => ({ id: s.id, content: s.content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: s.special ?? true }))
  const bosId = specials.find((s) => s.content === postProcessorBos)?.id
  const tokenizer = {
    ...learned.tokenizer,
    added_tokens: added,
    post_processor:
      postProcessorBos === undefined
        ? learned.tokenizer.post_processor
        : {
            type: "TemplateProcessing",
            single: [{ SpecialToken: { id: postProcessorBos, type_id: 0 } }, { Sequence: { id: "A", type_id: 0 } }],
            pair: [{ SpecialToken: { id: postProcessorBos, type_id: 0 } }, { Sequence: { id: "A", type_id: 0 } }, { SpecialToken: { id: postProcessorBos, type_id: 1 } }, { Sequence: { id: "B", type_id: 1 } }],
            special_tokens: { [postProcessorBos]: { id: postProcessorBos, ids: [bosId], tokens: [postProcessorBos] } },
          },
    model: { ...model, vocab, merges },
  }
  const template = chatTemplateOf(family)
  const tokenizerConfig = {
    ...config,
    ...(template === undefined ? {} : { chat_template: template }),
    added_tokens_decoder: Object.fromEntries(added.map(({ id: i, ...rest }) => [String(i), rest])),
  }
  return { tokenizer, tokenizerConfig }
}

const writeJson = (file: string, value: unknown) => fs.writeFileSync(file, JSON.stringify(value, null, 2) + "\n")

/** Writes the family's fixture into `dir` (created); returns the safetensors files written. */
export const writeFixture = (family: Family, dir: string): Promise<ReadonlyArray<string>> => {
  fs.mkdirSync(dir, { recursive: true })
  const config = fixtureConfig(family)
  writeJson(path.join(dir, "config.json"), config)
  writeJson(path.join(dir, "generation_config.json"), family.generationConfig)
  const { tokenizer, tokenizerConfig } = tokenizerFiles(family)
  writeJson(path.join(dir, "tokenizer.json"), tokenizer)
  writeJson(path.join(dir, "tokenizer_config.json"), tokenizerConfig)
  const tensors = family.tensors(config).map((t) => values(family, t))
  const total = tensors.reduce((s, t) => s + elementCount(t.shape) * dtypeByteSize[t.dtype], 0)
  return Effect.runPromise(writeWeightFiles(dir, tensors, family.shards === 1 ? Infinity : Math.ceil(total / family.shards)))
}
