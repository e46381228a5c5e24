// pipelines/tiny-stories.ts (tune-domain, then held-out perplexity before and after) on a directory
// laid out like Qwen/Qwen2.5-7B-Instruct (bf16 shards + index, vocab_size 152064, its tokenizer),
// whose tokenizer has no bos token and whose config.json has no pad_token_id: a document is framed
// text + eos (what `tokenizer(text)` gives for Qwen, plus the end), padding takes the eos id, and
// tuning on the stories lowers their held-out perplexity. Both used to stop the stage.
import { Effect } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import { afterAll, describe, expect, it } from "vitest"
import { loadTokenizer } from "../../src/text/tokenizer.ts"
import { documentIds } from "../../stages/tiny-chat/chat-batches.ts"
import { sandbox } from "../engine/helpers.ts"
import { runRepoPipeline } from "../pipeline-harness.ts"
import { families } from "./families.ts"
import { writeFixture } from "./fixture.ts"

const sb = sandbox()
afterAll(() => fs.rmSync(sb.dir, { recursive: true, force: true }))

describe("tune-domain and held-out perplexity on the Qwen 2.5 layout", () => {
  it("frames documents without bos, pads with eos, and lowers the stories' perplexity", async () => {
    const qwen = families.find((f) => f.repo === "Qwen/Qwen2.5-7B-Instruct")!
    const modelDir = path.join(sb.dir, "Qwen2.5-7B-Instruct")
    await writeFixture(qwen, modelDir)
    expect(JSON.parse(fs.readFileSync(path.join(modelDir, "config.json"), "utf8")).pad_token_id).toBeUndefined()
    const tokenizer = await Effect.runPromise(loadTokenizer(modelDir))
    expect(tokenizer.bos).toBeUndefined()
    const text = "Kodis lives in Binwick."
    expect(documentIds(tokenizer, text)).toEqual([...tokenizer.encode(text, { addSpecialTokens: false }), tokenizer.eos!.id])

    const world = { people: 3, pets: 2, gadgets: 2, towns: 2, biosPerEntity: 2, townDocsPerTown: 2, encyclopediaPerEntity: 1, storiesPerPerson: 6, arithmeticPages: 10 }
    const s = await runRepoPipeline(sb.dir, "pipelines/tiny-stories.ts", [
      `model.path=${modelDir}`,
      ...Object.entries(world).map(([k, v]) => `plain-corpus.${k}=${v}`),
      "tune-domain.epochs=3",
      "tune-domain.lr=0.01",
      "tune-domain.maxLength=256",
    ])
    expect(s.nodes.filter((n) => n.status !== "succeeded").map((n) => `${n.name}: ${n.error}`)).toEqual([])
    const table = fs.readFileSync(path.join(sb.dir, "runs", s.runId, "perplexity.md"), "utf8")
    const storyRow = table.split("\n").find((l) => l.startsWith("| story |"))!
    const [before, after] = storyRow.split("|").slice(2, 4).map(Number)
    expect(after).toBeLessThan(before)
  }, 300_000)
})
