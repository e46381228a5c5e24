// Stage: the synthetic chat corpus (src/text/synthetic), generated from its options.
import { Effect } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import { stage } from "../../src/engine/index.ts"
import { CorpusOptions, generateCorpus } from "../../src/text/synthetic/corpus.ts"
import { type ChatCorpus, ChatCorpusFile } from "./artifacts.ts"

export const chatCorpus = stage({
  name: "chat-corpus",
  version: 1,
  params: CorpusOptions,
  inputs: {},
  output: ChatCorpusFile,
  run: ({ params, ctx }) =>
    Effect.sync(() => {
      const corpus = generateCorpus(params)
      const out: ChatCorpus = { train: corpus.train, heldOutChat: corpus.heldOutChat }
      ctx.log(`${out.train.length} training conversations, ${out.heldOutChat.length} held-out chat prompts`)
      const file = path.join(ctx.workDir, "corpus.json")
      fs.writeFileSync(file, JSON.stringify(out))
      return { path: file }
    }),
})
