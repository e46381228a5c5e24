// A Qwen2-sized vocabulary (151,643 BPE tokens + ChatML special tokens at ids 151,643-151,645, an
// embedding of 151,936 rows as Qwen2's config.json pads it): loading, encoding, the chat template,
// a forward pass and greedy KV-cache generation all work. Every collection of vocabulary size used
// to be spread into a call (`Math.max(...vocab)`), which overflows the stack from about 125k elements.
//
// The tokenizer is the project's byte-level BPE (src/text/tokenizer-builder.ts) learned on a few
// sentences, grown with synthetic merges (letter pairs, then letter triples) to the real size, its
// special tokens moved to the top of the id range as Qwen's and Llama 3's are.
import { Effect } from "effect"
import { describe, expect, it } from "vitest"
import { forwardNames } from "../../src/models/forward.ts"
import { makeGenerator } from "../../src/models/generate.ts"
import { tinyLlama } from "../../src/models/init.ts"
import { tensor } from "../../src/runtime/tensor.ts"
import { chatPromptIds } from "../../src/text/chat-template.ts"
import { buildTokenizer, writeTokenizerFiles } from "../../src/text/tokenizer-builder.ts"
import { loadTokenizer } from "../../src/text/tokenizer.ts"
import { expectClose, forwardSession, ids, randomCheckpoint, rowsOf, run, tempDir } from "../models/forward-helpers.ts"
import { referenceLogits } from "../reference/reference.ts"

const BPE_TOKENS = 151_643
const EMBEDDING_ROWS = 151_936
const CHATML = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
const chatml =
  "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}" +
  "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"

const largeTokenizerDir = (): string => {
  const files = buildTokenizer(["hello world, the quick brown fox jumps over the lazy dog.", "hello again, world"], { vocabSize: 300, modelMaxLength: 1024 })
  const model = files.tokenizer.model as { vocab: Record<string, number>; merges: string[] }
  // Plain tokens first (bytes, learned merges), then synthetic merges, then the special tokens.
  const vocab: Record<string, number> = {}
  let next = 0
  for (const [token, id] of Object.entries(model.vocab).sort((a, b) => a[1] - b[1])) if (id >= 6) vocab[token] = next++
  const merges = [...model.merges]
  const letters = [..."abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789Ġ"]
  const grow = (left: string, right: string) => {
    if (next >= BPE_TOKENS || left + right in vocab) return
    vocab[left + right] = next++
    merges.push(`${left} ${right}`)
  }
  for (const a of letters) for (const b of letters) grow(a, b)
  for (const a of letters) for (const b of letters) for (const c of letters) grow(a + b, c)
  expect(next).toBe(BPE_TOKENS)
  const added = CHATML.map((content, i) => ({ id: BPE_TOKENS + i, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true }))
  for (const t of added) vocab[t.content] = t.id
  const dir = tempDir("pipe-large-vocab-")
  Effect.runSync(
    writeTokenizerFiles(dir, {
      ...files,
      tokenizer: { ...files.tokenizer, added_tokens: added, model: { ...model, vocab, merges } },
      tokenizerConfig: {
        tokenizer_class: "Qwen2Tokenizer",
        bos_token: null,
        eos_token: "<|im_end|>",
        pad_token: "<|endoftext|>",
        unk_token: null,
        chat_template: chatml,
        added_tokens_decoder: Object.fromEntries(added.map(({ id, ...rest }) => [String(id), rest])),
      },
    }),
  )
  return dir
}

describe("a 151k-token vocabulary", () => {
  const dir = largeTokenizerDir()

  it("loads, encodes with merges from across the range, and renders a chat prompt", async () => {
    const tok = Effect.runSync(loadTokenizer(dir))
    expect(tok.vocabSize).toBe(BPE_TOKENS + CHATML.length)
    expect(tok.eos).toEqual({ token: "<|im_end|>", id: 151_645 })
    expect(tok.pad).toEqual({ token: "<|endoftext|>", id: 151_643 })
    // "yzx" exists only as a late synthetic triple merge, beyond what 16 bits can hold
    const [yzx] = tok.encode("yzx", { addSpecialTokens: false })
    expect(yzx).toBeGreaterThan(65_535)
    expect(tok.idToToken(yzx)).toBe("yzx")
    expect(tok.decode(tok.encode("hello world yzx"))).toBe("hello world yzx")
    const prompt = Effect.runSync(chatPromptIds(tok, [{ role: "user", content: "hello world" }], { addGenerationPrompt: true }))
    expect(prompt[0]).toBe(151_644)
    expect(prompt.filter((id) => id === 151_645)).toHaveLength(1)
    expect(tok.decode(prompt)).toBe("<|im_start|>user\nhello world<|im_end|>\n<|im_start|>assistant\n")
  })

  it("runs a tiny model with that vocabulary: logits match the float64 reference, greedy decoding follows its argmax", async () => {
    const tok = Effect.runSync(loadTokenizer(dir))
    const prompt = Effect.runSync(chatPromptIds(tok, [{ role: "user", content: "yzx hello" }], { addGenerationPrompt: true }))
    const ckpt = await randomCheckpoint(tinyLlama({ vocabSize: EMBEDDING_ROWS, hiddenSize: 8, numHeads: 2, intermediateSize: 16, bosTokenId: undefined, eosTokenIds: [151_645] }))
    const s = await forwardSession(ckpt)
    const out = await run(s, { [forwardNames.ids]: ids([prompt]), [forwardNames.mask]: tensor("int64", [1, prompt.length], prompt.map(() => 1)) })
    expect(out.logits.dims).toEqual([1, prompt.length, EMBEDDING_ROWS])
    // same bound as tests/models/forward.test.ts (float32 graph vs float64, O(1) logits)
    expectClose(rowsOf(out.logits, 0), referenceLogits(ckpt.dir, prompt), 1e-4)

    // in-graph greedy decoding with the KV cache over the 151,936 logits, decoded by the tokenizer
    const gen = await Effect.runPromise(makeGenerator(ckpt, { graphDir: tempDir("pipe-large-vocab-gen-"), tokenizer: tok }))
    const [g] = await Effect.runPromise(gen.generate([{ prompt, maxNewTokens: 3, temperature: 0, stopTokenIds: [] }]))
    expect(g.tokens).toHaveLength(3)
    const seq = [...prompt]
    for (const t of g.tokens) {
      const logits = referenceLogits(ckpt.dir, seq).at(-1)!
      expect(logits.reduce((m, l) => Math.max(m, l), -Infinity) - logits[t]).toBeLessThan(1e-4)
      seq.push(t)
    }
    expect(g.text).toBe(tok.decode(g.tokens, { skipSpecialTokens: true }))
  }, 60_000)
})
