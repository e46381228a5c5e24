// Whether a generated answer is correct for a held-out question of the synthetic corpus: it states
// every expected value as a whole word, in any case (so answers in capital letters count). Lenient
// on purpose about the rest of the sentence: the model may phrase the answer its own way.

const escapeRegex = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")

/** `value` occurs in `text` as a whole word (not inside a longer word or number), any case. */
export const mentions = (text: string, value: string): boolean =>
  new RegExp(`(?<![\\p{L}\\p{N}])${escapeRegex(value)}(?![\\p{L}\\p{N}])`, "iu").test(text)

/** The answer states every expected value (`answers.text` of a SQuAD record, `answers` of a chat
 *  evaluation record). */
export const isCorrectAnswer = (text: string, answers: ReadonlyArray<string>): boolean =>
  answers.length > 0 && answers.every((value) => mentions(text, value))
