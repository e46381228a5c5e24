import { Effect, Exit } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import { describe, expect, it } from "vitest"
import { loadTokenizer, type TokenizerError } from "../../src/text/tokenizer.ts"
import { llama2TokenizerJson, vocab, writeTokenizer } from "./fixture.ts"

const load = (dir: string) => Effect.runSync(loadTokenizer(dir))
const failure = (dir: string): TokenizerError => {
  const exit = Effect.runSyncExit(Effect.flip(loadTokenizer(dir)))
  if (Exit.isFailure(exit)) throw new Error("expected an error value")
  return exit.value
}
const v = vocab()

describe("tokenizer", () => {
  it("encodes with the BPE merges and the post-processor's bos, decodes back", () => {
    const tok = load(writeTokenizer({ bos_token: "<s>", eos_token: "</s>", pad_token: "<pad>" }))
    expect(tok.encode("hello world")).toEqual([0, v["hello"], v["Ġworld"]])
    expect(tok.encode("hello world", { addSpecialTokens: false })).toEqual([v["hello"], v["Ġworld"]])
    // unmerged characters fall back to single-character tokens
    expect(tok.encode("hero", { addSpecialTokens: false })).toEqual([v["he"], v["r"], v["o"]])
    expect(tok.addsBos).toBe(true)
    expect(tok.addsEos).toBe(false)
    expect(tok.decode(tok.encode("hello world"), { skipSpecialTokens: true })).toBe("hello world")
    expect(tok.decode(tok.encode("hello world"))).toBe("<s>hello world")
    expect(tok.decode([])).toBe("")
    expect(tok.bos).toEqual({ token: "<s>", id: 0 })
    expect(tok.eos).toEqual({ token: "</s>", id: 1 })
    expect(tok.pad).toEqual({ token: "<pad>", id: 4 })
    expect(tok.unk).toBeUndefined()
    expect(tok.vocabSize).toBe(Object.keys(v).length)
    expect(tok.isSpecial(1)).toBe(true)
    expect(tok.isSpecial(v["hello"])).toBe(false)
    expect(tok.idToToken(v["Ġworld"])).toBe("Ġworld")
    expect(tok.tokenToId("<|im_end|>")).toBe(3)
  })

  it("keeps special tokens in text as single ids", () => {
    const tok = load(writeTokenizer({ bos_token: "<s>", eos_token: "</s>" }))
    expect(tok.encode("<|im_start|>hello<|im_end|>", { addSpecialTokens: false })).toEqual([2, v["hello"], 3])
  })

  it("add_bos_token / add_eos_token in tokenizer_config.json override the post-processor (as transformers' Llama tokenizer)", () => {
    const both = load(writeTokenizer({ bos_token: "<s>", eos_token: "</s>", add_bos_token: true, add_eos_token: true }, false))
    expect(both.encode("hello")).toEqual([0, v["hello"], 1])
    const none = load(writeTokenizer({ bos_token: "<s>", eos_token: "</s>", add_bos_token: false }, true))
    expect(none.encode("hello")).toEqual([v["hello"]])
    expect(none.addsBos).toBe(false)
    const plain = load(writeTokenizer({ bos_token: "<s>", eos_token: "</s>" }, false))
    expect(plain.encode("hello")).toEqual([v["hello"]])
  })

  it("reads special tokens given as serialized AddedToken objects", () => {
    const tok = load(writeTokenizer({ bos_token: { __type: "AddedToken", content: "<s>", lstrip: false, normalized: false, rstrip: false, single_word: false }, eos_token: "</s>" }))
    expect(tok.bos?.id).toBe(0)
    expect(tok.specialTokensMap).toEqual({ bos_token: "<s>", eos_token: "</s>" })
  })

  it("finds the chat template in tokenizer_config.json, in a named list, or in chat_template.jinja", () => {
    expect(load(writeTokenizer({ chat_template: "{{ 1 }}" })).chatTemplate).toBe("{{ 1 }}")
    expect(load(writeTokenizer({ chat_template: [{ name: "tool_use", template: "T" }, { name: "default", template: "D" }] })).chatTemplate).toBe("D")
    const dir = writeTokenizer({ chat_template: "old" })
    fs.writeFileSync(path.join(dir, "chat_template.jinja"), "new")
    expect(load(dir).chatTemplate).toBe("new")
    expect(load(writeTokenizer({})).chatTemplate).toBeUndefined()
  })

  it("errors name the file and the field", () => {
    const missing = writeTokenizer({})
    fs.rmSync(path.join(missing, "tokenizer.json"))
    expect(failure(missing).message).toBe(`${path.join(missing, "tokenizer.json")}: missing`)
    const bad = writeTokenizer({})
    fs.writeFileSync(path.join(bad, "tokenizer_config.json"), "{")
    expect(failure(bad).message).toMatch(/tokenizer_config\.json: invalid JSON/)
    const unknown = failure(writeTokenizer({ eos_token: "<|eot_id|>" }))
    expect(unknown.field).toBe("eos_token")
    expect(unknown.message).toMatch(/tokenizer_config\.json: eos_token: "<\|eot_id\|>" is not in the vocabulary/)
    expect(failure(writeTokenizer({ add_bos_token: "yes" })).field).toBe("add_bos_token")
    expect(failure(writeTokenizer({ add_eos_token: true })).message).toMatch(/add_eos_token: true but eos_token is not set/)
    expect(failure(writeTokenizer({ chat_template: [{ name: "x", template: "" }] })).field).toBe("chat_template")
  })
})

describe("a Llama 2 style sentencepiece BPE tokenizer.json", () => {
  const dir = () => {
    const d = writeTokenizer({ bos_token: "<s>", eos_token: "</s>", unk_token: "<unk>", add_bos_token: true, add_eos_token: false, legacy: false })
    fs.writeFileSync(path.join(d, "tokenizer.json"), JSON.stringify(llama2TokenizerJson()))
    return d
  }
  it("marks spaces with ▁, falls back to byte tokens, strips the leading space when decoding", () => {
    const tok = load(dir())
    const v = llama2TokenizerJson().model.vocab
    expect(tok.encode("hello world")).toEqual([1, v["▁hello"], v["▁world"]])
    // "\n" and "é" (two UTF-8 bytes) are not in the vocabulary: byte fallback
    expect(tok.encode("hello\né", { addSpecialTokens: false })).toEqual([v["▁hello"], v["<0x0A>"], v["<0xC3>"], v["<0xA9>"]])
    expect(tok.decode(tok.encode("hello\né world"), { skipSpecialTokens: true })).toBe("hello\né world")
    expect(tok.unk).toEqual({ token: "<unk>", id: 0 })
  })
})

describe("special tokens the files leave implicit", () => {
  // openai-community/gpt2: tokenizer_config.json is {"model_max_length": 1024}, config.json says
  // model_type gpt2, and transformers' GPT2TokenizerFast defaults bos/eos/unk to <|endoftext|>.
  const gpt2Dir = (config: Record<string, unknown>, modelConfig?: Record<string, unknown>, specialTokensMap?: Record<string, unknown>) => {
    const dir = writeTokenizer(config, false)
    const file = path.join(dir, "tokenizer.json")
    const json = JSON.parse(fs.readFileSync(file, "utf8"))
    const id = Object.keys(json.model.vocab).length
    json.model.vocab["<|endoftext|>"] = id
    json.added_tokens.push({ id, content: "<|endoftext|>", single_word: false, lstrip: false, rstrip: false, normalized: true, special: true })
    fs.writeFileSync(file, JSON.stringify(json))
    if (modelConfig) fs.writeFileSync(path.join(dir, "config.json"), JSON.stringify(modelConfig))
    if (specialTokensMap) fs.writeFileSync(path.join(dir, "special_tokens_map.json"), JSON.stringify(specialTokensMap))
    return { dir, id }
  }

  it("GPT-2 (class from config.json model_type, or from tokenizer_class): bos, eos and unk are <|endoftext|>, no pad", () => {
    for (const { dir, id } of [gpt2Dir({ model_max_length: 1024 }, { model_type: "gpt2" }), gpt2Dir({ tokenizer_class: "GPT2TokenizerFast" })]) {
      const tok = load(dir)
      const endOfText = { token: "<|endoftext|>", id }
      expect([tok.bos, tok.eos, tok.unk, tok.pad]).toEqual([endOfText, endOfText, endOfText, undefined])
      expect(tok.specialTokensMap).toEqual({ bos_token: "<|endoftext|>", eos_token: "<|endoftext|>", unk_token: "<|endoftext|>" })
      // GPT-2's post-processor adds nothing, and neither does transformers
      expect(tok.addsBos || tok.addsEos).toBe(false)
    }
  })

  it("an explicit null, a value, or a legacy special_tokens_map.json wins over the class default; unknown classes have none", () => {
    const { dir, id } = gpt2Dir({ bos_token: null, eos_token: "</s>" }, { model_type: "gpt2" })
    const tok = load(dir)
    expect([tok.bos, tok.eos, tok.unk]).toEqual([undefined, { token: "</s>", id: 1 }, { token: "<|endoftext|>", id }])
    // no added_tokens_decoder in tokenizer_config.json: transformers reads the map and lets it win
    const legacy = load(gpt2Dir({ eos_token: "</s>" }, { model_type: "gpt2" }, { eos_token: { content: "<|im_end|>" } }).dir)
    expect(legacy.eos).toEqual({ token: "<|im_end|>", id: 3 })
    const modern = load(gpt2Dir({ eos_token: "</s>", added_tokens_decoder: {} }, { model_type: "gpt2" }, { eos_token: "<|im_end|>" }).dir)
    expect(modern.eos).toEqual({ token: "</s>", id: 1 })
    const generic = load(gpt2Dir({ tokenizer_class: "PreTrainedTokenizerFast" }, { model_type: "gpt2" }).dir)
    expect([generic.bos, generic.eos, generic.unk]).toEqual([undefined, undefined, undefined])
  })

  it("Qwen2's class defaults eos, unk and pad to <|endoftext|> and has no bos; a default not in the vocabulary is left out", () => {
    const { dir, id } = gpt2Dir({ tokenizer_class: "Qwen2Tokenizer" })
    const tok = load(dir)
    expect([tok.bos, tok.eos, tok.unk, tok.pad]).toEqual([undefined, { token: "<|endoftext|>", id }, { token: "<|endoftext|>", id }, { token: "<|endoftext|>", id }])
    // LlamaTokenizer's <unk> is not in this vocabulary (transformers would add an untrained token)
    const llama = load(gpt2Dir({ tokenizer_class: "LlamaTokenizerFast" }).dir)
    expect([llama.bos, llama.eos, llama.unk]).toEqual([{ token: "<s>", id: 0 }, { token: "</s>", id: 1 }, undefined])
  })
})
