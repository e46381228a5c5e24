// A local model directory as a text-in, text-out model: chat turns through its own chat template,
// or raw text, sampled with generate.ts. The model server (src/model-server/) and the divergence
// search's local assistant both talk to a model through this.
//
//   openLocalModel(dir, { graphDir, device?, threads? }) -> LocalModel (sessions released with the scope)
//   model.chat(messages, options) / model.complete(prompt, options) -> Completion[] (options.n of them)
//
// Completion i samples with seed `options.seed + i`; without a seed, one is drawn per call. A prompt
// that leaves no room for a token, or a chat turn the template refuses, fails with a
// LocalModelError naming why (the server answers it with 400); a failure inside onnxruntime is a
// RunError-derived LocalModelError with `internal: true` (500).
import { Data, Effect, type Scope } from "effect"
import type { Device } from "../runtime/session.ts"
import { releaseSession } from "../runtime/session.ts"
import { type ChatMessage, chatPromptIds } from "../text/chat-template.ts"
import { loadTokenizer, type TextTokenizer } from "../text/tokenizer.ts"
import { loadCheckpoint } from "./checkpoint.ts"
import { type FinishReason, makeGenerator } from "./generate.ts"
import { contextLength } from "./rope.ts"

export class LocalModelError extends Data.TaggedError("LocalModelError")<{
  readonly message: string
  /** true: the model failed (a server error); false: the request cannot be served as asked */
  readonly internal: boolean
}> {}

export interface CompletionOptions {
  /** default: the rest of the context */
  readonly maxTokens?: number
  /** 0 = greedy; default 1 */
  readonly temperature?: number
  /** default 1 */
  readonly topP?: number
  readonly seed?: number
  readonly stop?: ReadonlyArray<string>
  /** completions to sample (default 1) */
  readonly n?: number
  /** cut maxTokens to the room the prompt leaves in the context instead of refusing the request */
  readonly fitContext?: boolean
}

export interface Completion {
  readonly text: string
  /** OpenAI's finish reasons: "stop" (an eos token or a stop string), "length" */
  readonly finishReason: "stop" | "length"
  readonly promptTokens: number
  readonly completionTokens: number
}

export interface LocalModel {
  readonly dir: string
  readonly tokenizer: TextTokenizer
  /** tokens of context (prompt + completion) */
  readonly contextLength: number
  readonly chat: (messages: ReadonlyArray<ChatMessage>, options?: CompletionOptions) => Effect.Effect<Completion[], LocalModelError>
  readonly complete: (prompt: string, options?: CompletionOptions) => Effect.Effect<Completion[], LocalModelError>
}

const finish = (r: FinishReason): Completion["finishReason"] => (r === "length" ? "length" : "stop")

export const openLocalModel = (
  dir: string,
  options: { readonly graphDir: string; readonly device?: Device; readonly threads?: number },
): Effect.Effect<LocalModel, LocalModelError, Scope.Scope> =>
  Effect.gen(function* () {
    const setupError = (e: { readonly message: string }) => new LocalModelError({ message: e.message, internal: true })
    const checkpoint = yield* Effect.mapError(loadCheckpoint(dir), setupError)
    const { tokenizerFile, tokenizerConfigFile } = checkpoint
    const tokenizer = yield* Effect.mapError(
      loadTokenizer(tokenizerFile !== undefined && tokenizerConfigFile !== undefined ? { tokenizerFile, configFile: tokenizerConfigFile } : checkpoint.dir),
      setupError,
    )
    const generator = yield* Effect.acquireRelease(
      Effect.mapError(
        makeGenerator(checkpoint, {
          graphDir: options.graphDir,
          tokenizer,
          ...(options.device ? { device: options.device } : {}),
          ...(options.threads ? { intraOpThreads: options.threads } : {}),
        }),
        setupError,
      ),
      (g) => Effect.andThen(releaseSession(g.session), g.loopSession ? releaseSession(g.loopSession) : Effect.void),
    )
    const context = contextLength(checkpoint.config).length
    const run = (ids: ReadonlyArray<number>, o: CompletionOptions) =>
      Effect.gen(function* () {
        const room = context - ids.length
        if (room < 1) return yield* Effect.fail(new LocalModelError({ message: `the prompt has ${ids.length} tokens; this model's context is ${context} tokens, leaving no room for a completion`, internal: false }))
        const maxTokens = o.fitContext ? Math.min(o.maxTokens ?? room, room) : (o.maxTokens ?? room)
        if (maxTokens > room)
          return yield* Effect.fail(new LocalModelError({ message: `max_tokens ${maxTokens} + the prompt's ${ids.length} tokens exceed this model's context of ${context} tokens`, internal: false }))
        const seed = o.seed ?? Math.floor(Math.random() * 2 ** 31)
        const gens = yield* Effect.mapError(
          generator.generate(
            Array.from({ length: o.n ?? 1 }, (_, i) => ({
              prompt: ids,
              maxNewTokens: maxTokens,
              temperature: o.temperature ?? 1,
              topP: o.topP ?? 1,
              seed: seed + i,
              ...(o.stop && o.stop.length > 0 ? { stopStrings: o.stop } : {}),
            })),
          ),
          (e) => new LocalModelError({ message: e.message, internal: true }),
        )
        return gens.map((g) => ({ text: g.text ?? "", finishReason: finish(g.finishReason), promptTokens: ids.length, completionTokens: g.tokens.length }))
      })
    return {
      dir,
      tokenizer,
      contextLength: context,
      chat: (messages, o = {}) =>
        Effect.flatMap(
          Effect.mapError(chatPromptIds(tokenizer, messages, { addGenerationPrompt: true }), (e) => new LocalModelError({ message: e.message, internal: false })),
          (ids) => run(ids, o),
        ),
      complete: (prompt, o = {}) => run(tokenizer.encode(prompt), o),
    }
  })

