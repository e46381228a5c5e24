// Training sequences from chats (token ids of the rendered conversation, and the positions whose
// next token is trained: the final assistant answer and its closing eos) and from plain documents
// (every token after bos), batched by length.
import { renderChat } from "../../src/text/tokenizer-builder.ts"
import type { ChatMessage } from "../../src/text/synthetic/corpus.ts"
import type { TextTokenizer } from "../../src/text/tokenizer.ts"
import { mulberry32 } from "../../src/core/random.ts"

export interface TrainSequence {
  readonly ids: ReadonlyArray<number>
  /** Index of the first answer token: targets ids[answerStart..] (through the final eos) are trained. */
  readonly answerStart: number
}

/** Encodes a conversation ending in an assistant turn; fails when it exceeds `maxLength` tokens. */
export const encodeChat = (tokenizer: TextTokenizer, messages: ReadonlyArray<ChatMessage>, maxLength: number): TrainSequence => {
  const last = messages[messages.length - 1]
  if (last?.role !== "assistant") throw new Error("a training chat must end with an assistant turn")
  const promptIds = tokenizer.encode(renderChat(messages.slice(0, -1), true), { addSpecialTokens: false })
  const ids = tokenizer.encode(renderChat(messages, false), { addSpecialTokens: false })
  if (ids.length > maxLength) throw new Error(`a training chat has ${ids.length} tokens, more than maxLength ${maxLength}: ${JSON.stringify(last.content)}`)
  // The prompt is a token prefix of the full chat: it ends in the <|assistant|> special token.
  for (let i = 0; i < promptIds.length; i++) if (promptIds[i] !== ids[i]) throw new Error(`chat prompt tokens are not a prefix of the chat's tokens at ${i}`)
  return { ids, answerStart: promptIds.length }
}

/**
 * A plain document's tokens: bos + text + eos, or text + eos for a tokenizer without a bos token
 * (Qwen's: its `tokenizer(text)` adds nothing). The first token is context only (bos, or the text's
 * first token), every later one is trained or scored. Fails without an eos token.
 */
export const documentIds = (tokenizer: TextTokenizer, text: string): number[] => {
  if (tokenizer.eos === undefined) throw new Error("the tokenizer has no eos token to end a document")
  return [...(tokenizer.bos === undefined ? [] : [tokenizer.bos.id]), ...tokenizer.encode(text, { addSpecialTokens: false }), tokenizer.eos.id]
}

/** Encodes a plain document (documentIds), every token after the first trained; fails when it
 *  exceeds `maxLength` tokens. */
export const encodeDocument = (tokenizer: TextTokenizer, text: string, maxLength: number): TrainSequence => {
  const ids = documentIds(tokenizer, text)
  if (ids.length > maxLength) throw new Error(`a document has ${ids.length} tokens, more than maxLength ${maxLength}: ${JSON.stringify(text.slice(0, 80))}...`)
  return { ids, answerStart: 1 }
}

/**
 * Documents (encodeDocument's bos + text + eos) packed into rows of at most `maxLength` tokens:
 * the documents in a seeded order, each row as many whole documents as fit, every token after the
 * row's first trained (so a document's bos is predicted from the end of the one before). A model
 * pretrained this way has read text before a bos, as real LMs (and the seed's Pythia) have, so a
 * prefix in front of a document (a soft prompt, a previous document) is not outside everything it
 * saw; it also wastes less compute on padding.
 */
export const packDocuments = (docs: ReadonlyArray<TrainSequence>, maxLength: number, seed: number): TrainSequence[] => {
  const rows: TrainSequence[] = []
  let row: number[] = []
  for (const doc of shuffle([...docs], mulberry32(seed >>> 0))) {
    if (doc.ids.length > maxLength) throw new Error(`a document has ${doc.ids.length} tokens, more than maxLength ${maxLength}`)
    if (row.length + doc.ids.length > maxLength) {
      rows.push({ ids: row, answerStart: 1 })
      row = []
    }
    row = row.concat(doc.ids)
  }
  if (row.length > 0) rows.push({ ids: row, answerStart: 1 })
  return rows
}

export interface Batch {
  /** [rows, width] right-padded ids, targets (ids shifted left) and loss mask, row-major. */
  readonly ids: BigInt64Array
  readonly targets: BigInt64Array
  readonly mask: Float32Array
  readonly rows: number
  readonly width: number
  /** trained target tokens */
  readonly tokens: number
}

export const makeBatch = (seqs: ReadonlyArray<TrainSequence>, padId: number): Batch => {
  const width = seqs.reduce((m, s) => Math.max(m, s.ids.length), 0) - 1
  const rows = seqs.length
  const ids = new BigInt64Array(rows * width).fill(BigInt(padId))
  const targets = new BigInt64Array(rows * width).fill(BigInt(padId))
  const mask = new Float32Array(rows * width)
  let tokens = 0
  seqs.forEach((s, r) => {
    for (let t = 0; t < s.ids.length - 1; t++) {
      ids[r * width + t] = BigInt(s.ids[t])
      targets[r * width + t] = BigInt(s.ids[t + 1])
      // position t predicts token t+1: trained when t+1 is in the answer
      if (t + 1 >= s.answerStart) {
        mask[r * width + t] = 1
        tokens++
      }
    }
  })
  return { ids, targets, mask, rows, width, tokens }
}

/** Fisher-Yates with a seeded generator. */
const shuffle = <T>(xs: T[], rand: () => number): T[] => {
  for (let i = xs.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1))
    ;[xs[i], xs[j]] = [xs[j], xs[i]]
  }
  return xs
}

/**
 * The batches of one epoch, a pure function of (sequences, batch size, seed, epoch) so a resumed
 * run replays the same order. Sequences are shuffled, cut into pools of 8 batches, sorted by
 * length within a pool (less padding), batched, and the batches shuffled again.
 */
export const epochBatches = (seqs: ReadonlyArray<TrainSequence>, batchSize: number, seed: number, epoch: number): TrainSequence[][] => {
  const rand = mulberry32((seed * 1000003 + epoch) >>> 0)
  const order = shuffle([...seqs], rand)
  const batches: TrainSequence[][] = []
  const pool = batchSize * 8
  for (let p = 0; p < order.length; p += pool) {
    const sorted = order.slice(p, p + pool).sort((a, b) => a.ids.length - b.ids.length)
    for (let b = 0; b < sorted.length; b += batchSize) batches.push(sorted.slice(b, b + batchSize))
  }
  return shuffle(batches, rand)
}

export const batchesPerEpoch = (count: number, batchSize: number): number => {
  const pool = batchSize * 8
  const full = Math.floor(count / pool) * 8
  const rest = count % pool
  return full + Math.ceil(rest / batchSize)
}
