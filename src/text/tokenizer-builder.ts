// Builds the tokenizer of the tiny default model: a byte-level BPE (GPT-2 style pre-tokenization and
// byte alphabet) whose merges are learned here from the training texts, written as a standard
// `tokenizer.json` + `tokenizer_config.json` (with a Jinja chat template) that HF `tokenizers`,
// `transformers` and `@huggingface/tokenizers` load.
//
// Chat format (no newlines, to keep sequences short for a tiny model; the end of every turn is the
// eos token, so generation stops after one assistant turn):
//   <|bos|><|system|>SYSTEM<|eos|><|user|>QUESTION<|eos|><|assistant|>ANSWER<|eos|>
import { Data, Effect } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import { renderChatTemplate } from "./chat-template.ts"

export const specialTokens = {
  pad: "<|pad|>",
  bos: "<|bos|>",
  eos: "<|eos|>",
  system: "<|system|>",
  user: "<|user|>",
  assistant: "<|assistant|>",
} as const

/** Special tokens in id order: they take ids 0..5. */
const specialTokenList: ReadonlyArray<string> = [
  specialTokens.pad,
  specialTokens.bos,
  specialTokens.eos,
  specialTokens.system,
  specialTokens.user,
  specialTokens.assistant,
]

export const chatTemplate =
  "{{ bos_token }}" +
  "{% for message in messages %}" +
  "{% if message['role'] not in ['system', 'user', 'assistant'] %}" +
  "{{ raise_exception('unknown chat role: ' + message['role']) }}" +
  "{% endif %}" +
  "{% if message['role'] == 'system' and loop.index0 != 0 %}" +
  "{{ raise_exception('a system message must come first') }}" +
  "{% endif %}" +
  "{{ '<|' + message['role'] + '|>' + message['content'] + eos_token }}" +
  "{% endfor %}" +
  "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"

export interface ChatTurn {
  readonly role: string
  readonly content: string
}

/** Renders messages with `chatTemplate` as apply_chat_template does (src/text/chat-template.ts).
 *  Synchronous for the generated corpus, where a rendering error (an unknown role, a late system
 *  message) is a bug in the caller: it throws with the template's message. */
export const renderChat = (messages: ReadonlyArray<ChatTurn>, addGenerationPrompt: boolean): string =>
  Effect.runSync(
    renderChatTemplate(chatTemplate, messages, { bos_token: specialTokens.bos, eos_token: specialTokens.eos }, { addGenerationPrompt }, "tokenizer-builder chatTemplate"),
  )

// GPT-2's byte-to-unicode table: printable bytes map to themselves, the others (space, controls,
// ...) to code points from 256 up, so every byte is one visible character and no token contains a
// space (which is why merges can be written as "left right").
const byteToChar: ReadonlyArray<string> = (() => {
  const printable = (b: number) => (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff)
  let next = 256
  return Array.from({ length: 256 }, (_, b) => String.fromCharCode(printable(b) ? b : next++))
})()

// The pre-tokenization regex of HF's ByteLevel pre-tokenizer (use_regex: true), in the Rust
// `tokenizers` crate and in @huggingface/tokenizers alike; merges are learned within its pieces.
const byteLevelPattern = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu

const encoder = new TextEncoder()
const toByteChars = (piece: string): Array<string> => Array.from(encoder.encode(piece), (b) => byteToChar[b])

/** Counts the byte-level pre-tokens of `texts`, with special-token strings cut out first (as the
 *  tokenizer does when it encodes). Keys are pre-tokens in the byte alphabet. */
export const countPreTokens = (texts: Iterable<string>, specials: ReadonlyArray<string> = specialTokenList): Map<string, number> => {
  const escaped = specials.map((s) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"))
  const splitter = escaped.length > 0 ? new RegExp(escaped.join("|"), "g") : null
  const counts = new Map<string, number>()
  for (const text of texts)
    for (const segment of splitter ? text.split(splitter) : [text])
      for (const piece of segment.match(byteLevelPattern) ?? []) {
        const key = toByteChars(piece).join("")
        counts.set(key, (counts.get(key) ?? 0) + 1)
      }
  return counts
}

/**
 * Learns up to `maxMerges` BPE merges from pre-token counts (keys in the byte alphabet). Each step
 * merges the most frequent adjacent pair, ties broken by the smaller "left right" string, so the
 * result does not depend on Map order; it stops early when no pair occurs twice. Pair counts are
 * recomputed every step: O(maxMerges x symbols in the distinct pre-tokens), which is well under a
 * second for the tiny corpus (a few thousand distinct pre-tokens).
 */
export const learnMerges = (preTokens: ReadonlyMap<string, number>, maxMerges: number): Array<[string, string]> => {
  const words = [...preTokens.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([w, count]) => ({ symbols: Array.from(w), count }))
  const merges: Array<[string, string]> = []
  while (merges.length < maxMerges) {
    const pairCounts = new Map<string, number>()
    for (const { symbols, count } of words)
      for (let i = 0; i + 1 < symbols.length; i++) {
        const key = `${symbols[i]} ${symbols[i + 1]}`
        pairCounts.set(key, (pairCounts.get(key) ?? 0) + count)
      }
    let best: string | undefined
    let bestCount = 1
    for (const [key, count] of pairCounts)
      if (count > bestCount || (count === bestCount && best !== undefined && key < best)) {
        best = key
        bestCount = count
      }
    if (best === undefined) break
    const [left, right] = best.split(" ") as [string, string]
    merges.push([left, right])
    const merged = left + right
    for (const word of words) {
      const s = word.symbols
      if (s.length < 2) continue
      const out: Array<string> = []
      for (let i = 0; i < s.length; i++) {
        if (i + 1 < s.length && s[i] === left && s[i + 1] === right) {
          out.push(merged)
          i++
        } else out.push(s[i])
      }
      word.symbols = out
    }
  }
  return merges
}

export interface TokenizerBuildOptions {
  /** Total vocabulary size including the 6 special tokens and the 256 bytes (at least 262). Fewer
   *  tokens result when the texts run out of pairs that occur twice. */
  readonly vocabSize: number
  /** Written as `model_max_length` in tokenizer_config.json. */
  readonly modelMaxLength: number
  /** Encoding a text starts it with bos (as Llama's tokenizers do: what a model pretrained on
   *  bos-framed documents expects from `tokenizer(text)`); absent or false: encoding adds nothing. */
  readonly addBosToken?: boolean
}

export interface TokenizerFiles {
  /** Contents of tokenizer.json. */
  readonly tokenizer: Record<string, unknown>
  /** Contents of tokenizer_config.json. */
  readonly tokenizerConfig: Record<string, unknown>
  readonly vocabSize: number
  readonly specialTokenIds: { readonly [K in keyof typeof specialTokens]: number }
}

const addedToken = (content: string, id: number) => ({
  id,
  content,
  single_word: false,
  lstrip: false,
  rstrip: false,
  normalized: false,
  special: true,
})

const byteLevelProcessor = { type: "ByteLevel", add_prefix_space: true, trim_offsets: false, use_regex: true }
const bosPiece = { SpecialToken: { id: specialTokens.bos, type_id: 0 } }
/** Llama 3's form: bos before the text (and before each text of a pair). */
const bosTemplate = {
  type: "TemplateProcessing",
  single: [bosPiece, { Sequence: { id: "A", type_id: 0 } }],
  pair: [bosPiece, { Sequence: { id: "A", type_id: 0 } }, { SpecialToken: { id: specialTokens.bos, type_id: 1 } }, { Sequence: { id: "B", type_id: 1 } }],
  special_tokens: { [specialTokens.bos]: { id: specialTokens.bos, ids: [specialTokenList.indexOf(specialTokens.bos)], tokens: [specialTokens.bos] } },
}

/** Learns a byte-level BPE from `texts` (which may contain the special-token strings, e.g. chats
 *  rendered with `renderChat`) and returns the two tokenizer files. Deterministic in `texts`. */
export const buildTokenizer = (texts: Iterable<string>, options: TokenizerBuildOptions): TokenizerFiles => {
  const base = specialTokenList.length + 256
  if (!Number.isInteger(options.vocabSize) || options.vocabSize < base)
    throw new Error(`vocabSize must be an integer of at least ${base} (6 special tokens + 256 bytes), got ${options.vocabSize}`)
  const merges = learnMerges(countPreTokens(texts), options.vocabSize - base)
  const vocab: Record<string, number> = {}
  for (const token of [...specialTokenList, ...byteToChar, ...merges.map(([l, r]) => l + r)])
    if (!(token in vocab)) vocab[token] = Object.keys(vocab).length
  const size = Object.keys(vocab).length
  const tokenizer = {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: specialTokenList.map((t, id) => addedToken(t, id)),
    normalizer: null,
    pre_tokenizer: { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: options.addBosToken === true ? { type: "Sequence", processors: [byteLevelProcessor, bosTemplate] } : byteLevelProcessor,
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
      vocab,
      // "left right" strings: read by every tokenizers version (byte-level tokens contain no space).
      merges: merges.map(([l, r]) => `${l} ${r}`),
    },
  }
  const tokenizerConfig = {
    tokenizer_class: "PreTrainedTokenizerFast",
    bos_token: specialTokens.bos,
    eos_token: specialTokens.eos,
    pad_token: specialTokens.pad,
    unk_token: null,
    additional_special_tokens: [specialTokens.system, specialTokens.user, specialTokens.assistant],
    // The chat template writes the bos token itself: render it, then encode without special tokens.
    add_bos_token: options.addBosToken === true,
    add_eos_token: false,
    clean_up_tokenization_spaces: false,
    model_max_length: options.modelMaxLength,
    chat_template: chatTemplate,
    added_tokens_decoder: Object.fromEntries(
      specialTokenList.map((t, id) => {
        const { id: _, ...rest } = addedToken(t, id)
        return [String(id), rest]
      }),
    ),
  }
  const idOf = (t: string) => vocab[t]
  return {
    tokenizer,
    tokenizerConfig,
    vocabSize: size,
    specialTokenIds: {
      pad: idOf(specialTokens.pad),
      bos: idOf(specialTokens.bos),
      eos: idOf(specialTokens.eos),
      system: idOf(specialTokens.system),
      user: idOf(specialTokens.user),
      assistant: idOf(specialTokens.assistant),
    },
  }
}

/** The texts a chat corpus contributes to BPE training: each conversation rendered in full. */
export const chatTexts = (examples: Iterable<{ readonly messages: ReadonlyArray<ChatTurn> }>): Array<string> =>
  Array.from(examples, (e) => renderChat(e.messages, false))

export class TokenizerWriteError extends Data.TaggedError("TokenizerWriteError")<{ readonly path: string; readonly message: string }> {}

/** Writes tokenizer.json and tokenizer_config.json into `dir` (created if missing). */
export const writeTokenizerFiles = (dir: string, files: TokenizerFiles): Effect.Effect<void, TokenizerWriteError> =>
  Effect.forEach(
    [
      ["tokenizer.json", files.tokenizer],
      ["tokenizer_config.json", files.tokenizerConfig],
    ] as const,
    ([name, json]) => {
      const file = path.join(dir, name)
      return Effect.try({
        try: () => {
          fs.mkdirSync(dir, { recursive: true })
          fs.writeFileSync(file, JSON.stringify(json, null, 2) + "\n")
        },
        catch: (e) => new TokenizerWriteError({ path: file, message: `cannot write ${file}: ${e instanceof Error ? e.message : String(e)}` }),
      })
    },
    { discard: true },
  )
