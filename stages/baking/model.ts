// Opening the model a baking stage works on: an HF checkpoint directory (the shipped
// models/tiny-chat, or a real local checkpoint named with `--set model.path=...`), its tokenizer,
// and the chat prompts of a question with and without the system prompt.
import { Effect } from "effect"
import * as fs from "node:fs"
import { type Checkpoint, loadCheckpoint } from "../../src/models/checkpoint.ts"
import { chatPromptIds } from "../../src/text/chat-template.ts"
import { loadTokenizer, type TextTokenizer } from "../../src/text/tokenizer.ts"

export interface OpenModel {
  readonly checkpoint: Checkpoint
  readonly tokenizer: TextTokenizer
}

export const openModel = (dir: string) =>
  Effect.gen(function* () {
    const checkpoint = yield* loadCheckpoint(dir)
    const tokenizer = yield* loadTokenizer(
      checkpoint.tokenizerFile !== undefined && checkpoint.tokenizerConfigFile !== undefined
        ? { tokenizerFile: checkpoint.tokenizerFile, configFile: checkpoint.tokenizerConfigFile }
        : checkpoint.dir,
    )
    return { checkpoint, tokenizer } satisfies OpenModel
  })

/** Chat prompt ids of a question, with the system prompt when one is given (non-empty). */
export const questionPromptIds = (tokenizer: TextTokenizer, question: string, systemPrompt?: string) =>
  chatPromptIds(tokenizer, [...(systemPrompt ? [{ role: "system", content: systemPrompt }] : []), { role: "user", content: question }], { addGenerationPrompt: true })

/**
 * A system prompt kept in a file (the seeds' --x0_file), read when the pipeline file loads: the
 * text itself becomes the param, so editing the file changes the cache key like editing the text.
 */
export const promptFile = (file: string): string => {
  try {
    return fs.readFileSync(file, "utf8").trim()
  } catch (e) {
    throw new Error(`system prompt file ${file}: cannot read: ${e instanceof Error ? e.message : String(e)}`)
  }
}

