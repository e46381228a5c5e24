// A model's tokenizer from its local tokenizer.json + tokenizer_config.json, through
// @huggingface/tokenizers, with the special-token conventions of HF transformers:
// - special tokens (bos/eos/unk/pad) come from tokenizer_config.json, or from special_tokens_map.json
//   for a legacy tokenizer_config.json without `added_tokens_decoder` (there the map wins, as in
//   transformers), given as a string or as a serialized AddedToken ({"content": ...}); one both leave out
//   (an explicit null counts as given) takes the default of the transformers tokenizer class
//   (tokenizer_config.json `tokenizer_class`, else the one AutoTokenizer picks for config.json's
//   `model_type`): GPT-2's bos/eos/unk are all <|endoftext|>. Ids are looked up in the vocabulary;
// - `encode(text)` adds special tokens as the tokenizer.json post-processor says, except that an
//   explicit `add_bos_token` / `add_eos_token` in tokenizer_config.json wins (that is what
//   transformers' Llama and GPT-NeoX tokenizers do: they rebuild the post-processor from them);
// - the chat template is tokenizer_config.json's `chat_template` (a string, or a list of named
//   templates of which "default" is used) or, when present, a chat_template.jinja file next to it.
import { Tokenizer } from "@huggingface/tokenizers"
import { Data, Effect } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"

export class TokenizerError extends Data.TaggedError("TokenizerError")<{
  readonly file: string
  readonly field: string | undefined
  readonly message: string
}> {}

const tokenizerError = (file: string, field: string | undefined, what: string) =>
  new TokenizerError({ file, field, message: `${file}: ${field === undefined ? "" : `${field}: `}${what}` })

export interface SpecialToken {
  readonly token: string
  readonly id: number
}

export interface EncodeOptions {
  /** Add bos/eos as the model's tokenizer does (default true). Chat prompts are encoded with false. */
  readonly addSpecialTokens?: boolean
}

export interface DecodeOptions {
  readonly skipSpecialTokens?: boolean
}

export interface TextTokenizer {
  readonly tokenizerFile: string
  readonly configFile: string
  /** Size of the vocabulary including added tokens. */
  readonly vocabSize: number
  readonly bos: SpecialToken | undefined
  readonly eos: SpecialToken | undefined
  readonly unk: SpecialToken | undefined
  readonly pad: SpecialToken | undefined
  /** Whether `encode` with special tokens prepends bos / appends eos. */
  readonly addsBos: boolean
  readonly addsEos: boolean
  /** The Jinja chat template, if the model has one. */
  readonly chatTemplate: string | undefined
  /** Special token strings by name (bos_token, eos_token, ...), as HF passes them to chat templates. */
  readonly specialTokensMap: Readonly<Record<string, string>>
  readonly encode: (text: string, options?: EncodeOptions) => number[]
  readonly decode: (ids: ReadonlyArray<number>, options?: DecodeOptions) => string
  readonly tokenToId: (token: string) => number | undefined
  readonly idToToken: (id: number) => string | undefined
  /** True for ids of added special tokens (bos, eos, chat markers, ...). */
  readonly isSpecial: (id: number) => boolean
}

const readJsonObject = (file: string): Effect.Effect<Record<string, unknown>, TokenizerError> =>
  Effect.gen(function* () {
    if (!fs.existsSync(file)) return yield* Effect.fail(tokenizerError(file, undefined, "missing"))
    const text = yield* Effect.try({ try: () => fs.readFileSync(file, "utf8"), catch: (e) => tokenizerError(file, undefined, `cannot read: ${String(e)}`) })
    const json = yield* Effect.try({ try: () => JSON.parse(text) as unknown, catch: (e) => tokenizerError(file, undefined, `invalid JSON: ${e instanceof Error ? e.message : String(e)}`) })
    if (json === null || typeof json !== "object" || Array.isArray(json)) return yield* Effect.fail(tokenizerError(file, undefined, "not a JSON object"))
    return json as Record<string, unknown>
  })

/** A special token field of tokenizer_config.json: a string, a serialized AddedToken, or null. */
const specialTokenString = (file: string, field: string, value: unknown): Effect.Effect<string | undefined, TokenizerError> => {
  if (value === undefined || value === null) return Effect.succeed(undefined)
  if (typeof value === "string") return Effect.succeed(value)
  if (typeof value === "object" && typeof (value as { content?: unknown }).content === "string")
    return Effect.succeed((value as { content: string }).content)
  return Effect.fail(tokenizerError(file, field, `expected a string or {"content": string}, got ${JSON.stringify(value)}`))
}

const chatTemplateOf = (file: string, dir: string, value: unknown): Effect.Effect<string | undefined, TokenizerError> => {
  const jinjaFile = path.join(dir, "chat_template.jinja")
  if (fs.existsSync(jinjaFile))
    return Effect.try({ try: () => fs.readFileSync(jinjaFile, "utf8"), catch: (e) => tokenizerError(jinjaFile, undefined, `cannot read: ${String(e)}`) })
  if (value === undefined || value === null) return Effect.succeed(undefined)
  if (typeof value === "string") return Effect.succeed(value)
  if (Array.isArray(value)) {
    const named = value.find((t) => t !== null && typeof t === "object" && (t as { name?: unknown }).name === "default")
    if (named && typeof (named as { template?: unknown }).template === "string") return Effect.succeed((named as { template: string }).template)
    return Effect.fail(tokenizerError(file, "chat_template", `a list of templates without a "default" one (names: ${value.map((t) => (t as { name?: unknown })?.name).join(", ")})`))
  }
  return Effect.fail(tokenizerError(file, "chat_template", "expected a string or a list of {name, template}"))
}

type SpecialName = "bos_token" | "eos_token" | "unk_token" | "pad_token"

/** Special-token defaults of transformers' tokenizer classes (their __init__ arguments), "Fast" suffix dropped. */
const classDefaults: Readonly<Record<string, Partial<Record<SpecialName, string>>>> = (() => {
  const endOfText = { bos_token: "<|endoftext|>", eos_token: "<|endoftext|>", unk_token: "<|endoftext|>" }
  return {
    GPT2Tokenizer: endOfText,
    CodeGenTokenizer: endOfText,
    GPTNeoXTokenizer: endOfText,
    LlamaTokenizer: { bos_token: "<s>", eos_token: "</s>", unk_token: "<unk>" },
    Qwen2Tokenizer: { eos_token: "<|endoftext|>", unk_token: "<|endoftext|>", pad_token: "<|endoftext|>" },
    GemmaTokenizer: { bos_token: "<bos>", eos_token: "<eos>", unk_token: "<unk>", pad_token: "<pad>" },
  }
})()

/** The tokenizer class AutoTokenizer uses for a config.json `model_type` when tokenizer_config.json names none. */
const modelTypeTokenizer: Readonly<Record<string, string>> = {
  gpt2: "GPT2Tokenizer",
  gpt_neox: "GPTNeoXTokenizer",
  llama: "LlamaTokenizer",
  mistral: "LlamaTokenizer",
  phi3: "LlamaTokenizer",
  qwen2: "Qwen2Tokenizer",
  qwen3: "Qwen2Tokenizer",
  gemma: "GemmaTokenizer",
  gemma2: "GemmaTokenizer",
  gemma3: "GemmaTokenizer",
  gemma3_text: "GemmaTokenizer",
}

/** An optional JSON object next to tokenizer_config.json (special_tokens_map.json, config.json); absent -> {}. */
const siblingJson = (dir: string, name: string): Effect.Effect<Record<string, unknown>, TokenizerError> =>
  fs.existsSync(path.join(dir, name)) ? readJsonObject(path.join(dir, name)) : Effect.succeed({})

const tokenizerClass = (config: Record<string, unknown>, modelConfig: Record<string, unknown>): string | undefined => {
  const named = typeof config.tokenizer_class === "string" ? config.tokenizer_class.replace(/Fast$/, "") : undefined
  return named ?? (typeof modelConfig.model_type === "string" ? modelTypeTokenizer[modelConfig.model_type] : undefined)
}

const optionalBoolean = (file: string, config: Record<string, unknown>, field: string): Effect.Effect<boolean | undefined, TokenizerError> => {
  const v = config[field]
  return v === undefined || v === null || typeof v === "boolean"
    ? Effect.succeed(v ?? undefined)
    : Effect.fail(tokenizerError(file, field, `expected a boolean, got ${JSON.stringify(v)}`))
}

/**
 * Loads the tokenizer of a model directory (tokenizer.json + tokenizer_config.json), or of the two
 * given files. Hub cache snapshot directories work as is (their files are symlinks).
 */
export const loadTokenizer = (
  source: string | { readonly tokenizerFile: string; readonly configFile: string },
): Effect.Effect<TextTokenizer, TokenizerError> =>
  Effect.gen(function* () {
    const tokenizerFile = typeof source === "string" ? path.join(source, "tokenizer.json") : source.tokenizerFile
    const configFile = typeof source === "string" ? path.join(source, "tokenizer_config.json") : source.configFile
    const tokenizerJson = yield* readJsonObject(tokenizerFile)
    const config = yield* readJsonObject(configFile)
    const tokenizer = yield* Effect.try({
      try: () => new Tokenizer(tokenizerJson, config),
      catch: (e) => tokenizerError(tokenizerFile, undefined, `cannot build the tokenizer: ${e instanceof Error ? e.message : String(e)}`),
    })

    const dir = path.dirname(configFile)
    const mapFile = path.join(dir, "special_tokens_map.json")
    const specialMap = "added_tokens_decoder" in config ? {} : yield* siblingJson(dir, "special_tokens_map.json")
    const defaults = classDefaults[tokenizerClass(config, yield* siblingJson(dir, "config.json")) ?? ""] ?? {}
    const specialTokensMap: Record<string, string> = {}
    const special = (name: SpecialName) =>
      Effect.gen(function* () {
        const [file, given] = name in specialMap ? [mapFile, specialMap[name]] : [configFile, config[name]]
        const fallback = name in specialMap || name in config ? undefined : defaults[name]
        // a class default the vocabulary lacks would be a new, untrained token in transformers: left out
        const token = fallback !== undefined ? (tokenizer.token_to_id(fallback) === undefined ? undefined : fallback) : yield* specialTokenString(file, name, given)
        if (token === undefined) return undefined
        const id = tokenizer.token_to_id(token)
        if (id === undefined) return yield* Effect.fail(tokenizerError(file, name, `"${token}" is not in the vocabulary of ${tokenizerFile}`))
        specialTokensMap[name] = token
        return { token, id }
      })
    const bos = yield* special("bos_token")
    const eos = yield* special("eos_token")
    const unk = yield* special("unk_token")
    const pad = yield* special("pad_token")
    const addBosToken = yield* optionalBoolean(configFile, config, "add_bos_token")
    const addEosToken = yield* optionalBoolean(configFile, config, "add_eos_token")
    const chatTemplate = yield* chatTemplateOf(configFile, dir, config.chat_template)

    // What the tokenizer.json post-processor adds, seen on an empty input.
    const bare = tokenizer.encode("", { add_special_tokens: true }).ids
    const processorAddsBos = bos !== undefined && bare[0] === bos.id
    const processorAddsEos = eos !== undefined && bare.length > 0 && bare[bare.length - 1] === eos.id && !(bare.length === 1 && processorAddsBos && bos.id === eos.id)
    if (addBosToken === true && bos === undefined) return yield* Effect.fail(tokenizerError(configFile, "add_bos_token", "true but bos_token is not set"))
    if (addEosToken === true && eos === undefined) return yield* Effect.fail(tokenizerError(configFile, "add_eos_token", "true but eos_token is not set"))
    const addsBos = addBosToken ?? processorAddsBos
    const addsEos = addEosToken ?? processorAddsEos
    const overridden = addBosToken !== undefined || addEosToken !== undefined

    const specialIds = new Set<number>([...tokenizer.get_added_tokens_decoder()].filter(([, t]) => t.special).map(([id]) => id))
    let vocabSize = 0
    for (const id of tokenizer.get_vocab(true).values()) vocabSize = Math.max(vocabSize, id + 1)

    const encode = (text: string, options: EncodeOptions = {}): number[] => {
      const withSpecial = options.addSpecialTokens ?? true
      if (!withSpecial) return tokenizer.encode(text, { add_special_tokens: false }).ids
      if (!overridden) return tokenizer.encode(text, { add_special_tokens: true }).ids
      const ids = tokenizer.encode(text, { add_special_tokens: false }).ids
      return [...(addsBos ? [bos!.id] : []), ...ids, ...(addsEos ? [eos!.id] : [])]
    }
    return {
      tokenizerFile,
      configFile,
      vocabSize,
      bos,
      eos,
      unk,
      pad,
      addsBos,
      addsEos,
      chatTemplate,
      specialTokensMap,
      encode,
      // @huggingface/tokenizers rejects an empty id list; nothing decodes to the empty string.
      decode: (ids, options = {}) =>
        ids.length === 0 ? "" : tokenizer.decode([...ids], { skip_special_tokens: options.skipSpecialTokens ?? false }),
      tokenToId: (token) => tokenizer.token_to_id(token),
      idToToken: (id) => tokenizer.id_to_token(id),
      isSpecial: (id) => specialIds.has(id),
    }
  })
