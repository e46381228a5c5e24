// Chat templates rendered as HF transformers' `apply_chat_template` does: the model's Jinja
// template (through @huggingface/jinja, which like transformers uses trim_blocks and lstrip_blocks
// and provides raise_exception and strftime_now) with `messages`, `add_generation_prompt` and the
// tokenizer's special tokens (bos_token, eos_token, ...) as variables. Token ids of a chat prompt
// are the rendered text encoded without adding special tokens (the template places them).
import { Template } from "@huggingface/jinja"
import { Data, Effect } from "effect"
import type { TextTokenizer } from "./tokenizer.ts"

export class ChatTemplateError extends Data.TaggedError("ChatTemplateError")<{
  readonly file: string
  readonly field: string
  readonly message: string
}> {}

export interface ChatMessage {
  readonly role: "system" | "user" | "assistant" | (string & {})
  readonly content: string
}

export interface ChatTemplateOptions {
  /** Append the opening of an assistant turn (default false, as in transformers). */
  readonly addGenerationPrompt?: boolean
  /** Extra template variables (e.g. a model-specific flag); they override nothing set above. */
  readonly variables?: Readonly<Record<string, unknown>>
}

const message = (e: unknown) => (e instanceof Error ? e.message : String(e))

/**
 * Renders `template` for `messages`. `specialTokens` are the tokenizer's special token strings
 * (bos_token, eos_token, ...); `file` names where the template came from, for errors. A template
 * that calls raise_exception(...) fails with that message.
 */
export const renderChatTemplate = (
  template: string,
  messages: ReadonlyArray<ChatMessage>,
  specialTokens: Readonly<Record<string, string>>,
  options: ChatTemplateOptions = {},
  file = "<chat template>",
): Effect.Effect<string, ChatTemplateError> =>
  Effect.gen(function* () {
    const parsed = yield* Effect.try({
      try: () => new Template(template),
      catch: (e) => new ChatTemplateError({ file, field: "chat_template", message: `${file}: chat_template: cannot parse: ${message(e)}` }),
    })
    return yield* Effect.try({
      try: () =>
        parsed.render({
          ...options.variables,
          ...specialTokens,
          messages: messages.map((m) => ({ ...m })),
          add_generation_prompt: options.addGenerationPrompt ?? false,
        }),
      catch: (e) => new ChatTemplateError({ file, field: "chat_template", message: `${file}: chat_template: rendering failed: ${message(e)}` }),
    })
  })

const noTemplate = (tokenizer: TextTokenizer) =>
  new ChatTemplateError({
    file: tokenizer.configFile,
    field: "chat_template",
    message: `${tokenizer.configFile}: chat_template: missing (this model has no chat template; it is not a chat model)`,
  })

/** The chat prompt text of `messages` with the tokenizer's own template and special tokens. */
export const applyChatTemplate = (
  tokenizer: TextTokenizer,
  messages: ReadonlyArray<ChatMessage>,
  options: ChatTemplateOptions = {},
): Effect.Effect<string, ChatTemplateError> =>
  tokenizer.chatTemplate === undefined
    ? Effect.fail(noTemplate(tokenizer))
    : renderChatTemplate(tokenizer.chatTemplate, messages, tokenizer.specialTokensMap, options, tokenizer.configFile)

/** Token ids of the chat prompt (apply_chat_template with tokenize=True). */
export const chatPromptIds = (
  tokenizer: TextTokenizer,
  messages: ReadonlyArray<ChatMessage>,
  options: ChatTemplateOptions = {},
): Effect.Effect<number[], ChatTemplateError> =>
  Effect.map(applyChatTemplate(tokenizer, messages, options), (text) => tokenizer.encode(text, { addSpecialTokens: false }))
