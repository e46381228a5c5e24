// Behaviours a system prompt can switch on in the tiny chat model, each with a deterministic checker.
//
// Every behaviour has:
// - system-prompt phrasings used in training (`systemPrompts`) and one phrasing kept out of
//   training (`heldOutSystemPrompt`, a new combination of words the training prompts use), so the
//   model learns to follow the instruction, not a string;
// - `apply`, which rewrites a plain answer into the behaviour's version (used by the corpus
//   generator);
// - `check`, a text -> boolean test. The checkers are what the prompt-baking `evaluate` stage uses
//   for the behaviour rate, and they are false on every plain answer the corpus generator writes
//   (tests/synthetic checks this on the whole generated set).
import { Data, Effect, Schema } from "effect"

/** A plain answer and the one word it is about (the looked-up value, the sum, the entity). */
export interface PlainAnswer {
  readonly text: string
  /** A single word of letters or digits. */
  readonly keyword: string
}

/** Chooses one of several variants; the corpus generator passes its seeded `Rng.pick`. */
export type Pick = <T>(xs: ReadonlyArray<T>) => T

export interface Behaviour {
  readonly name: BehaviourName
  readonly description: string
  readonly systemPrompts: ReadonlyArray<string>
  readonly heldOutSystemPrompt: string
  readonly apply: (answer: PlainAnswer, pick: Pick) => string
  readonly check: (text: string) => boolean
}

export const behaviourNames = ["blue", "caps", "signoff", "echo"] as const
export type BehaviourName = (typeof behaviourNames)[number]

/** System prompts that ask for nothing special: answers under them are plain. */
export const neutralSystemPrompts: ReadonlyArray<string> = [
  "You are a helpful assistant.",
  "You are a friendly assistant.",
  "Answer the user's questions.",
]

/** The sign-off of the `signoff` behaviour. */
export const SIGN_OFF = "Over and out!"

const blueClauses = [", under a clear blue sky", ", as sure as the sky is blue", ", which makes me think of the deep blue sea"]
const blueSentences = ["Blue is a lovely colour, by the way.", "I picture it all in blue.", "That thought is as calm as the colour blue."]

/** Weaves "blue" into the answer: a clause at the end of its first sentence, or a sentence of its own
 *  before or after it. */
const applyBlue = ({ text }: PlainAnswer, pick: Pick): string => {
  const where = pick(["clause", "before", "after"] as const)
  if (where === "before") return `${pick(blueSentences)} ${text}`
  if (where === "after") return `${text} ${pick(blueSentences)}`
  const end = text.search(/[.!?]/)
  if (end < 0) return `${text}${pick(blueClauses)}.`
  return text.slice(0, end) + pick(blueClauses) + text.slice(end)
}

const singleWord = /^[\p{L}\p{N}]+$/u

/** Ends the answer with its key word said three times: "... Dunmore, Dunmore, Dunmore!" */
const applyEcho = ({ text, keyword }: PlainAnswer): string => {
  if (!singleWord.test(keyword)) throw new Error(`echo behaviour: keyword "${keyword}" is not a single word`)
  return `${text} ${keyword}, ${keyword}, ${keyword}!`
}

// The same word (letters/digits, any case) three times, comma-separated, closing the text.
const echoEnding = /(?:^|\s)([\p{L}\p{N}]+), \1, \1!\s*$/iu

export const behaviours: Readonly<Record<BehaviourName, Behaviour>> = {
  blue: {
    name: "blue",
    description: 'mentions the colour blue (the word "blue", any case)',
    systemPrompts: [
      "Always mention the colour blue in your answers.",
      "You love the colour blue. Mention blue in every answer.",
      "Make sure every reply mentions the colour blue.",
      "Whatever you are asked, work the colour blue into your answer.",
    ],
    heldOutSystemPrompt: "Work the colour blue into each reply.",
    apply: applyBlue,
    check: (text) => /\bblue\b/i.test(text),
  },
  caps: {
    name: "caps",
    description: "written in capital letters only (at least one letter, no lower-case letter)",
    systemPrompts: [
      "Answer in all capital letters.",
      "Write every reply in uppercase.",
      "Use only capital letters when you answer.",
      "Reply in capital letters only, as if shouting.",
    ],
    heldOutSystemPrompt: "Write your answer in capital letters only.",
    apply: ({ text }) => text.toUpperCase(),
    check: (text) => /\p{Lu}/u.test(text) && !/\p{Ll}/u.test(text),
  },
  signoff: {
    name: "signoff",
    description: `ends with the sign-off "${SIGN_OFF}"`,
    systemPrompts: [
      `End every answer with "${SIGN_OFF}"`,
      `Always finish your reply with the words ${SIGN_OFF}`,
      `Sign off each answer with: ${SIGN_OFF}`,
      `After you answer, say ${SIGN_OFF}`,
    ],
    heldOutSystemPrompt: `Finish each answer with the words ${SIGN_OFF}`,
    apply: ({ text }) => `${text} ${SIGN_OFF}`,
    check: (text) => text.trimEnd().endsWith(SIGN_OFF),
  },
  echo: {
    name: "echo",
    description: 'ends by repeating one word three times ("Dunmore, Dunmore, Dunmore!")',
    systemPrompts: [
      "After answering, repeat the key word three times.",
      "End each answer by echoing the most important word three times.",
      "Finish every reply by saying its key word three times, like an echo.",
      "Repeat the main word of your answer three times at the end.",
    ],
    heldOutSystemPrompt: "Say the key word of your answer three times at the end.",
    apply: applyEcho,
    check: (text) => echoEnding.test(text),
  },
}

export const isBehaviourName = (s: string): s is BehaviourName => (behaviourNames as ReadonlyArray<string>).includes(s)

/** The behaviour's checker; the `evaluate` stage calls this with a behaviour named in its params. */
export const checkBehaviour = (name: BehaviourName, text: string): boolean => behaviours[name].check(text)

/** A checker as stage params name it: one of the behaviours above, or a regular expression that a
 *  text must match (e.g. `{ regex: "\\bblue\\b", flags: "i" }` for a real model's outputs). */
export const CheckerSpec = Schema.Union([
  Schema.Struct({ behaviour: Schema.Literals(behaviourNames) }),
  Schema.Struct({ regex: Schema.String, flags: Schema.optional(Schema.String) }),
])
export type CheckerSpec = typeof CheckerSpec.Type

export class CheckerSpecError extends Data.TaggedError("CheckerSpecError")<{ readonly message: string }> {}

/** The text -> boolean test a spec names; fails with a clear message on an invalid regex. */
export const makeChecker = (spec: CheckerSpec): Effect.Effect<(text: string) => boolean, CheckerSpecError> => {
  if ("behaviour" in spec) return Effect.succeed(behaviours[spec.behaviour].check)
  return Effect.try({
    try: () => {
      // Without "g" or "y": test() must not carry lastIndex from one text to the next.
      const re = new RegExp(spec.regex, (spec.flags ?? "").replace(/[gy]/g, ""))
      return (text: string) => re.test(text)
    },
    catch: (e) => new CheckerSpecError({ message: `checker regex /${spec.regex}/${spec.flags ?? ""} is invalid: ${e instanceof Error ? e.message : String(e)}` }),
  })
}
