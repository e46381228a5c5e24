// The navigator (stages/soft-prompts/navigator.ts): the pathfinding corpus is the generator's tasks
// written as plain documents that train-text reads; pipelines/tiny-navigator.ts end to end at a
// reduced size on the shipped tiny-base-s (tuning lowers the loss on paths, the rollouts are counted
// per decoding, the published directory loads with the family's tokenizer bytes and a README of
// the figures); and the shipped models/tiny-navigator-s finds paths on held-out grids, with a
// margin below its README's figure (greedy decoding is deterministic: a fixed fact of the weights).
import { Effect } from "effect"
import * as fs from "node:fs"
import { tmpdir } from "node:os"
import * as path from "node:path"
import { describe, expect, it } from "vitest"
import { loadCheckpoint } from "../../src/models/checkpoint.ts"
import { makeGenerator } from "../../src/models/generate.ts"
import { scopedSessions } from "../../src/runtime/session.ts"
import { loadTokenizer } from "../../src/text/tokenizer.ts"
import { gridPrompt } from "../../stages/soft-prompts/data.ts"
import { rolloutTask } from "../../stages/soft-prompts/examples.ts"
import { grids } from "../../stages/soft-prompts/experiment.ts"
import { pathfindingCorpus } from "../../stages/soft-prompts/navigator.ts"
import { gridText, movesText, pathTasks } from "../../stages/soft-prompts/pathfinding.ts"
import { rollOut } from "../../stages/soft-prompts/rollouts.ts"
import { readPlainCorpus } from "../../stages/tiny-family/plain-corpus.ts"
import { epochLosses, runMetrics, runRepoPipeline } from "../pipeline-harness.ts"
import { stageContext } from "../stage-harness.ts"

const repo = path.resolve(import.meta.dirname, "../..")

describe("the navigator", () => {
  it("pathfinding-corpus writes the generator's grids and paths as documents the text trainers read", async () => {
    const dir = fs.mkdtempSync(path.join(tmpdir(), "path-corpus-"))
    const out = (await Effect.runPromise(pathfindingCorpus.spec.run({ params: { ...grids, count: 40, seed: 3 }, inputs: {}, ctx: stageContext(dir) }))) as { path: string }
    const corpus = await Effect.runPromise(readPlainCorpus(out.path))
    const tasks = pathTasks(grids, 40, 3)
    expect(corpus.heldOut).toEqual([])
    expect(corpus.train.map((d) => d.text)).toEqual(tasks.map((t) => gridText(t.grid) + movesText(t.path)))
    expect(new Set(corpus.train.map((d) => d.genre))).toEqual(new Set(["pathfinding"]))
  })

  it("pipelines/tiny-navigator.ts at reduced size: tunes tiny-base-s on paths, rolls out greedy and sampled, publishes the model", async () => {
    const dir = fs.mkdtempSync(path.join(tmpdir(), "tiny-navigator-"))
    const outDir = path.join(dir, "tiny-navigator-s")
    const summary = await runRepoPipeline(dir, "pipelines/tiny-navigator.ts", [
      "pathfinding-corpus.count=400",
      "tune-navigator.epochs=2",
      "tune-navigator.lr=0.01",
      "tune-navigator.warmupSteps=2",
      "evaluate-navigator.count=12",
      `write-navigator.outDir=${outDir}`,
    ])
    expect(summary.nodes.filter((n) => n.status === "failed")).toEqual([])
    expect(summary.status).toBe("succeeded")
    const epochLoss = epochLosses(runMetrics(dir, summary.runId), (n) => n === "tune-navigator")
    expect(epochLoss).toHaveLength(2)
    expect(epochLoss[1]).toBeLessThan(epochLoss[0])

    const ckpt = await Effect.runPromise(loadCheckpoint(outDir))
    expect(ckpt.weights.embedTokens.dtype).toBe("F16")
    expect(fs.readFileSync(path.join(outDir, "tokenizer.json")).equals(fs.readFileSync(path.join(repo, "models/tiny-base-s/tokenizer.json")))).toBe(true)
    const readme = fs.readFileSync(path.join(outDir, "README.md"), "utf8")
    // one row per decoding: 12 grids greedy, 4 samples each at T = 1
    expect(readme).toMatch(/\| greedy \| \d+\.\d% \|/)
    expect(readme).toMatch(/\| sampled, T = 1, 4 per grid \| \d+\.\d% \|/)
    expect(readme).toContain("Rollouts on 12 held-out grids")
  }, 300_000)

  it("the shipped models/tiny-navigator-s finds shortest paths on held-out grids", async () => {
    const dir = path.join(repo, "models/tiny-navigator-s")
    const ckpt = await Effect.runPromise(loadCheckpoint(dir))
    const tokenizer = await Effect.runPromise(loadTokenizer(dir))
    expect(fs.readFileSync(path.join(dir, "tokenizer.json")).equals(fs.readFileSync(path.join(repo, "models/tiny-base-s/tokenizer.json")))).toBe(true)
    // the README's held-out grids (seed 2), the first 64
    const tasks = pathTasks(grids, 64, 2).map((t) => rolloutTask(t, gridPrompt(tokenizer, ckpt.config.bosTokenId, t.grid)))
    const r = await Effect.runPromise(
      Effect.scoped(
        Effect.flatMap(scopedSessions(makeGenerator(ckpt, { graphDir: fs.mkdtempSync(path.join(tmpdir(), "navigator-")), tokenizer })), (g) =>
          rollOut(g, tasks, { temperature: 0, samples: 1 }, { maxNewTokens: 20, batchSize: 64, seed: 2 }),
        ),
      ),
    )
    // the README: 87.1% over all 256 (tiny-base-s, never tuned on grids: none valid)
    expect(r.stats.validity).toBeGreaterThanOrEqual(0.7)
    expect(r.stats.lengthRatio).toBeGreaterThan(0.95)
  }, 120_000)
})
