// A diffuse prompt as the model sees it: the chat prompt of its request rendered by the model's own
// template with the generation prompt, then one response prefix (one context per prefix), and each
// target as the tokens the model would produce for it: the target's text followed by the template's
// end-of-turn token. Scoring through the end-of-turn token makes the target set prefix-free ("{1}"
// is not a prefix of "{10}<eot>"), so Σ_y p(y | context) over the targets is at most 1 and the loss
// Σ_y p*(y)·(−log p(y | context)) is bounded below by H(p*).
//
// The end-of-turn token is found from the template itself: the text it renders after an assistant
// message's content, first token (<|eos|> for the shipped models, <|eot_id|> for Llama 3,
// <|im_end|> for Qwen, <end_of_turn> for Gemma). Targets are tokenized in context, the whole
// conversation encoded at once, so they are the tokens the model generates for that text: when
// the tokenizer merges across the boundary (a prefix "My pick: " and a target "7" give the token
// " 7"), the context stops where the encodings of all its targets part, and the prefix's last
// characters (`tail`, "" when nothing merges) belong to every scored target sequence. A sampled
// answer is then a target when its text is tail + target.
import { Effect } from "effect"
import { StageError } from "../../src/engine/index.ts"
import { applyChatTemplate } from "../../src/text/chat-template.ts"
import type { TextTokenizer } from "../../src/text/tokenizer.ts"
import type { DiffusePrompt } from "./prompts.ts"

export interface TargetTokens {
  readonly text: string
  /** the target's tokens, the end-of-turn token last */
  readonly ids: ReadonlyArray<number>
  readonly weight: number
}

export interface DiffuseContext {
  /** index of the prompt in its set, and of the response prefix */
  readonly prompt: number
  readonly prefix: number
  /** chat prompt + response prefix, up to where the targets' encodings part */
  readonly ids: ReadonlyArray<number>
  /** the end of the response prefix that the target sequences carry ("" when nothing merges) */
  readonly tail: string
  readonly targets: ReadonlyArray<TargetTokens>
}

const probe = "\u2063probe\u2063"

/** The token id that ends an assistant turn in the model's chat template. */
export const endOfTurnId = (tokenizer: TextTokenizer): Effect.Effect<number, StageError> =>
  Effect.gen(function* () {
    const messages = [{ role: "user", content: "Hello" }]
    const toStage = (e: { message: string }) => new StageError({ message: e.message })
    const full = yield* Effect.mapError(applyChatTemplate(tokenizer, [...messages, { role: "assistant", content: probe }]), toStage)
    const at = full.lastIndexOf(probe)
    const after = at < 0 ? "" : full.slice(at + probe.length)
    const ids = tokenizer.encode(after, { addSpecialTokens: false })
    if (ids.length === 0)
      return yield* Effect.fail(
        new StageError({ message: `${tokenizer.configFile}: chat_template: renders nothing after an assistant message's content, so there is no end-of-turn token to score targets through` }),
      )
    return ids[0]
  })

/** Every (prompt, response prefix) context of a set, its targets tokenized in context (see the header). */
export const diffuseContexts = (tokenizer: TextTokenizer, prompts: ReadonlyArray<DiffusePrompt>): Effect.Effect<DiffuseContext[], StageError> =>
  Effect.gen(function* () {
    const eot = yield* endOfTurnId(tokenizer)
    const eotText = tokenizer.decode([eot])
    const out: DiffuseContext[] = []
    for (const [pi, p] of prompts.entries()) {
      const chat = yield* Effect.mapError(
        applyChatTemplate(tokenizer, [{ role: "user", content: p.request }], { addGenerationPrompt: true }),
        (e) => new StageError({ message: `${p.file}: ${e.message}` }),
      )
      for (const [ri, prefix] of p.responses.entries()) {
        const fulls = p.targets.map((text) => tokenizer.encode(chat + prefix + text + eotText, { addSpecialTokens: false }))
        // the longest token prefix shared by the context and every target's encoding
        let common = tokenizer.encode(chat + prefix, { addSpecialTokens: false }).length
        for (const full of fulls) {
          let k = 0
          while (k < common && k < full.length && full[k] === fulls[0][k]) k++
          common = k
        }
        const ids = fulls[0].slice(0, common)
        let tail: string | undefined
        const targets: TargetTokens[] = []
        for (const [ti, text] of p.targets.entries()) {
          const rest = fulls[ti].slice(common)
          const restText = tokenizer.decode(rest)
          const own = text + eotText
          const thisTail = restText.endsWith(own) ? restText.slice(0, restText.length - own.length) : undefined
          if (rest[rest.length - 1] !== eot || thisTail === undefined || (tail !== undefined && thisTail !== tail))
            return yield* Effect.fail(
              new StageError({
                message: `${p.file}: field "targets[${ti}]" (${JSON.stringify(text)}) after response prefix ${ri} (${JSON.stringify(prefix)}): its tokens after the context decode to ${JSON.stringify(restText)}, not the end of the prefix then the target then the end-of-turn token ${JSON.stringify(eotText)}`,
              }),
            )
          tail = thisTail
          targets.push({ text, ids: rest, weight: p.weights[ti] })
        }
        out.push({ prompt: pi, prefix: ri, ids, tail: tail ?? "", targets })
      }
    }
    return out
  })
