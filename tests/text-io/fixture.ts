// A hand-written byte-level BPE tokenizer (GPT-2 / Llama 3 style) small enough to reason about:
// ids 0-4 are added special tokens, then single characters, then the tokens of the merges below.
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"

export const SPECIALS = ["<s>", "</s>", "<|im_start|>", "<|im_end|>", "<pad>"] as const
const CHARS = [..."abcdefghijklmnopqrstuvwxyz", "Ġ", "Ċ", "!", ",", ".", "|", "<", ">", "/"]
const MERGES: Array<[string, string]> = [
  ["h", "e"], ["l", "l"], ["he", "ll"], ["hell", "o"], ["Ġ", "w"], ["o", "r"], ["Ġw", "or"], ["Ġwor", "l"], ["Ġworl", "d"],
]

export const vocab = (): Record<string, number> => {
  const v: Record<string, number> = {}
  for (const t of [...SPECIALS, ...CHARS, ...MERGES.map(([a, b]) => a + b)]) v[t] = Object.keys(v).length
  return v
}

export const tokenizerJson = (bosInPostProcessor: boolean) => ({
  version: "1.0",
  truncation: null,
  padding: null,
  added_tokens: SPECIALS.map((content, id) => ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true })),
  normalizer: null,
  pre_tokenizer: { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: true },
  post_processor: bosInPostProcessor
    ? {
        type: "TemplateProcessing",
        single: [{ SpecialToken: { id: "<s>", type_id: 0 } }, { Sequence: { id: "A", type_id: 0 } }],
        pair: [{ SpecialToken: { id: "<s>", type_id: 0 } }, { Sequence: { id: "A", type_id: 0 } }, { Sequence: { id: "B", type_id: 1 } }],
        special_tokens: { "<s>": { id: "<s>", ids: [0], tokens: ["<s>"] } },
      }
    : { type: "ByteLevel", add_prefix_space: true, trim_offsets: false, use_regex: true },
  decoder: { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true },
  model: {
    type: "BPE",
    dropout: null,
    unk_token: null,
    continuing_subword_prefix: null,
    end_of_word_suffix: null,
    fuse_unk: false,
    byte_fallback: false,
    ignore_merges: false,
    vocab: vocab(),
    merges: MERGES.map(([a, b]) => `${a} ${b}`),
  },
})

/** Writes tokenizer.json and tokenizer_config.json into a fresh directory. */
export const writeTokenizer = (config: Record<string, unknown>, bosInPostProcessor = true): string => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "pipe-tok-"))
  fs.writeFileSync(path.join(dir, "tokenizer.json"), JSON.stringify(tokenizerJson(bosInPostProcessor)))
  fs.writeFileSync(path.join(dir, "tokenizer_config.json"), JSON.stringify(config))
  return dir
}

/**
 * A sentencepiece-style BPE as in Llama 2 / TinyLlama tokenizer.json files: "▁" marks spaces
 * (prepended by the normalizer), unknown characters fall back to <0xNN> byte tokens.
 */
export const llama2TokenizerJson = () => {
  const pieces = ["<unk>", "<s>", "</s>", ...Array.from({ length: 256 }, (_, b) => `<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`)]
  const chars = ["▁", "h", "e", "l", "o", "w", "r", "d"]
  const merges: Array<[string, string]> = [["h", "e"], ["l", "l"], ["he", "ll"], ["hell", "o"], ["▁", "hello"], ["▁", "w"], ["o", "r"], ["▁w", "or"], ["▁wor", "l"], ["▁worl", "d"]]
  const vocabulary: Record<string, number> = {}
  for (const t of [...pieces, ...chars, ...merges.map(([a, b]) => a + b)]) vocabulary[t] = Object.keys(vocabulary).length
  return {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: ["<unk>", "<s>", "</s>"].map((content, id) => ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true })),
    normalizer: { type: "Sequence", normalizers: [{ type: "Prepend", prepend: "▁" }, { type: "Replace", pattern: { String: " " }, content: "▁" }] },
    pre_tokenizer: null,
    post_processor: {
      type: "TemplateProcessing",
      single: [{ SpecialToken: { id: "<s>", type_id: 0 } }, { Sequence: { id: "A", type_id: 0 } }],
      pair: [{ SpecialToken: { id: "<s>", type_id: 0 } }, { Sequence: { id: "A", type_id: 0 } }, { SpecialToken: { id: "<s>", type_id: 1 } }, { Sequence: { id: "B", type_id: 1 } }],
      special_tokens: { "<s>": { id: "<s>", ids: [1], tokens: ["<s>"] } },
    },
    decoder: {
      type: "Sequence",
      decoders: [{ type: "Replace", pattern: { String: "▁" }, content: " " }, { type: "ByteFallback" }, { type: "Fuse" }, { type: "Strip", content: " ", start: 1, stop: 0 }],
    },
    model: { type: "BPE", dropout: null, unk_token: "<unk>", continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: true, byte_fallback: true, ignore_merges: false, vocab: vocabulary, merges: merges.map(([a, b]) => `${a} ${b}`) },
  }
}
