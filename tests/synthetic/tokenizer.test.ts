import { Tokenizer } from "@huggingface/tokenizers"
import { Effect } from "effect"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { describe, expect, it } from "vitest"
import { chatPromptIds } from "../../src/text/chat-template.ts"
import { defaultCorpusOptions, generateCorpus } from "../../src/text/synthetic/corpus.ts"
import { loadTokenizer } from "../../src/text/tokenizer.ts"
import {
  buildTokenizer,
  chatTemplate,
  chatTexts,
  countPreTokens,
  learnMerges,
  renderChat,
  specialTokens,
  writeTokenizerFiles,
} from "../../src/text/tokenizer-builder.ts"

const corpus = generateCorpus(defaultCorpusOptions)
const files = buildTokenizer(chatTexts(corpus.train), { vocabSize: 1024, modelMaxLength: 256 })
const tokenizer = new Tokenizer(files.tokenizer, files.tokenizerConfig)

describe("BPE merge learning", () => {
  it("matches a hand-computed run (Sennrich et al.'s low/lower/newest/widest example)", () => {
    const counts = new Map([
      ["low", 5],
      ["lower", 2],
      ["newest", 6],
      ["widest", 3],
    ])
    // Worked by hand: most frequent pair each step, ties to the smaller "left right" string; stops
    // when no pair occurs twice.
    expect(learnMerges(counts, 100)).toEqual([
      ["e", "s"],
      ["es", "t"],
      ["l", "o"],
      ["lo", "w"],
      ["e", "w"],
      ["ew", "est"],
      ["n", "ewest"],
      ["d", "est"],
      ["i", "dest"],
      ["w", "idest"],
      ["e", "r"],
      ["low", "er"],
    ])
    expect(learnMerges(counts, 3)).toHaveLength(3)
  })

  it("the learned merges encode in @huggingface/tokenizers as BPE prescribes", () => {
    const texts = [...Array(5).fill("low"), ...Array(2).fill("lower"), ...Array(6).fill("newest"), ...Array(3).fill("widest")]
    const small = buildTokenizer(texts, { vocabSize: 400, modelMaxLength: 16 })
    expect(small.vocabSize).toBe(6 + 256 + 12)
    const tok = new Tokenizer(small.tokenizer, small.tokenizerConfig)
    expect(tok.tokenize("lowest")).toEqual(["low", "est"])
    expect(tok.tokenize("widest newer")).toEqual(["widest", "Ġ", "n", "ew", "er"])
  })

  it("pre-tokenizes like the ByteLevel pre-tokenizer and cuts out special tokens", () => {
    const counts = countPreTokens(["<|user|>Hi there<|eos|>", "Hi  you"])
    expect(Object.fromEntries(counts)).toEqual({ Hi: 2, "Ġthere": 1, "Ġ": 1, "Ġyou": 1 })
  })

  it("is deterministic and rejects a vocabulary smaller than the byte alphabet", () => {
    expect(JSON.stringify(buildTokenizer(chatTexts(corpus.train), { vocabSize: 1024, modelMaxLength: 256 }))).toBe(JSON.stringify(files))
    expect(() => buildTokenizer([], { vocabSize: 100, modelMaxLength: 8 })).toThrow(/at least 262/)
  })
})

describe("tokenizer.json in @huggingface/tokenizers", () => {
  it("has the requested vocabulary, specials first", () => {
    expect(files.vocabSize).toBe(1024)
    expect(tokenizer.get_vocab(true).size).toBe(1024)
    expect(files.specialTokenIds).toEqual({ pad: 0, bos: 1, eos: 2, system: 3, user: 4, assistant: 5 })
  })

  it("special tokens are single ids, also inside text", () => {
    for (const [name, token] of Object.entries(specialTokens)) {
      const id = files.specialTokenIds[name as keyof typeof specialTokens]
      expect(tokenizer.encode(token).ids).toEqual([id])
      expect(tokenizer.encode(`Hi${token}there`).ids.filter((i) => i === id)).toEqual([id])
      expect(tokenizer.token_to_id(token)).toBe(id)
    }
  })

  it("round-trips every training conversation and held-out prompt exactly, and any unicode text", () => {
    const texts = [
      ...chatTexts(corpus.train),
      ...corpus.heldOutChat.map((r) => renderChat(r.messages, true)),
      ...corpus.heldOutQuestions.flatMap((q) => [q.question, q.context]),
      "héllo wörld ☃ 🙂  two  spaces\n\ttab <|bos|> 12345",
    ]
    for (const text of texts) {
      const { ids } = tokenizer.encode(text)
      expect(tokenizer.decode(ids, { skip_special_tokens: false }), text).toBe(text)
    }
  })

  it("token counts fit a 256-token context; statistics", () => {
    const conversation = chatTexts(corpus.train).map((t) => tokenizer.encode(t).ids.length)
    const answers = corpus.train.map((e) => tokenizer.encode(e.messages[e.messages.length - 1].content).ids.length)
    const mean = (xs: Array<number>) => xs.reduce((a, b) => a + b, 0) / xs.length
    console.log(
      `tokenizer stats (vocab ${files.vocabSize}): ${corpus.train.length} conversations, ${conversation.reduce((a, b) => a + b, 0)} tokens, ` +
        `mean ${mean(conversation).toFixed(1)} / max ${Math.max(...conversation)} per conversation; ` +
        `answers mean ${mean(answers).toFixed(1)} / max ${Math.max(...answers)} tokens`,
    )
    expect(Math.max(...conversation)).toBeLessThan(256)
    // Byte-level BPE on this small vocabulary should compress well: far fewer tokens than bytes.
    expect(mean(conversation)).toBeLessThan(mean(chatTexts(corpus.train).map((t) => Buffer.byteLength(t))) / 3)
  })
})

describe("chat template", () => {
  const config = files.tokenizerConfig as { chat_template: string; bos_token: string; eos_token: string }

  it("is written to tokenizer_config.json with the special tokens it uses", () => {
    expect(config.chat_template).toBe(chatTemplate)
    expect(config.bos_token).toBe("<|bos|>")
    expect(config.eos_token).toBe("<|eos|>")
  })

  it("renders optional system, user and assistant turns and the generation prompt", () => {
    expect(renderChat([{ role: "user", content: "What is 2 plus 3?" }], true)).toBe("<|bos|><|user|>What is 2 plus 3?<|eos|><|assistant|>")
    expect(
      renderChat(
        [
          { role: "system", content: "Answer in all capital letters." },
          { role: "user", content: "Hi" },
          { role: "assistant", content: "HELLO." },
        ],
        false,
      ),
    ).toBe("<|bos|><|system|>Answer in all capital letters.<|eos|><|user|>Hi<|eos|><|assistant|>HELLO.<|eos|>")
  })

  it("the generation prompt is the prefix of the full conversation, so a trained model continues it", () => {
    for (const e of corpus.train.slice(0, 50)) {
      const prompt = renderChat(e.messages.slice(0, -1), true)
      expect(renderChat(e.messages, false)).toBe(prompt + e.messages[e.messages.length - 1].content + "<|eos|>")
      const ids = tokenizer.encode(prompt).ids
      expect(ids[0]).toBe(files.specialTokenIds.bos)
      expect(ids[ids.length - 1]).toBe(files.specialTokenIds.assistant)
    }
  })

  it("rejects unknown roles and a misplaced system message", () => {
    expect(() => renderChat([{ role: "tool", content: "x" }], false)).toThrow(/unknown chat role: tool/)
    expect(() =>
      renderChat(
        [
          { role: "user", content: "x" },
          { role: "system", content: "y" },
        ],
        false,
      ),
    ).toThrow(/system message must come first/)
  })
})

describe("writeTokenizerFiles", () => {
  it("writes both files that load back into @huggingface/tokenizers", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "pipe-tok-"))
    try {
      await Effect.runPromise(writeTokenizerFiles(path.join(dir, "tiny"), files))
      const json = JSON.parse(fs.readFileSync(path.join(dir, "tiny/tokenizer.json"), "utf8"))
      const config = JSON.parse(fs.readFileSync(path.join(dir, "tiny/tokenizer_config.json"), "utf8"))
      const loaded = new Tokenizer(json, config)
      const text = renderChat(corpus.train[0].messages, false)
      expect(loaded.encode(text).ids).toEqual(tokenizer.encode(text).ids)
    } finally {
      fs.rmSync(dir, { recursive: true, force: true })
    }
  })

  it("the written directory loads with the project's tokenizer loader and chat template code", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "pipe-tok-"))
    try {
      await Effect.runPromise(writeTokenizerFiles(dir, files))
      const loaded = await Effect.runPromise(loadTokenizer(dir))
      expect(loaded.vocabSize).toBe(files.vocabSize)
      expect([loaded.bos?.id, loaded.eos?.id, loaded.pad?.id]).toEqual([files.specialTokenIds.bos, files.specialTokenIds.eos, files.specialTokenIds.pad])
      expect([loaded.addsBos, loaded.addsEos]).toEqual([false, false])
      for (const r of corpus.heldOutChat.slice(0, 20)) {
        const ids = await Effect.runPromise(chatPromptIds(loaded, r.messages, { addGenerationPrompt: true }))
        expect(ids).toEqual(tokenizer.encode(renderChat(r.messages, true)).ids)
        expect(loaded.decode(ids)).toBe(renderChat(r.messages, true))
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true })
    }
  })

  it("with addBosToken, encoding starts a text with bos (in @huggingface/tokenizers and the project's loader), and a chat prompt still has one", async () => {
    const withBos = buildTokenizer(chatTexts(corpus.train), { vocabSize: 1024, modelMaxLength: 256, addBosToken: true })
    expect(withBos.tokenizer.model).toEqual(files.tokenizer.model)
    const raw = new Tokenizer(withBos.tokenizer, withBos.tokenizerConfig)
    const text = "Where does Kodis live?"
    expect(raw.encode(text).ids).toEqual([withBos.specialTokenIds.bos, ...tokenizer.encode(text).ids])
    expect(raw.encode(text, { add_special_tokens: false }).ids).toEqual(tokenizer.encode(text).ids)
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "pipe-tok-bos-"))
    try {
      await Effect.runPromise(writeTokenizerFiles(dir, withBos))
      const loaded = await Effect.runPromise(loadTokenizer(dir))
      expect([loaded.addsBos, loaded.addsEos]).toEqual([true, false])
      expect(loaded.encode(text)).toEqual(raw.encode(text).ids)
      const r = corpus.heldOutChat[0]
      const ids = await Effect.runPromise(chatPromptIds(loaded, r.messages, { addGenerationPrompt: true }))
      expect(ids).toEqual(tokenizer.encode(renderChat(r.messages, true)).ids)
      expect(ids.filter((id) => id === withBos.specialTokenIds.bos)).toHaveLength(1)
    } finally {
      fs.rmSync(dir, { recursive: true, force: true })
    }
  })

  it("reports the path when it cannot write", async () => {
    const file = path.join(os.tmpdir(), `pipe-tok-file-${process.pid}`)
    fs.writeFileSync(file, "")
    try {
      const exit = await Effect.runPromiseExit(writeTokenizerFiles(path.join(file, "sub"), files))
      expect(exit._tag).toBe("Failure")
      expect(JSON.stringify(exit)).toContain("cannot write")
    } finally {
      fs.rmSync(file)
    }
  })
})
