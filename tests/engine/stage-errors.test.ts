// Stage failures keep their typed error, and sessions are released however a stage ends:
// - a stage that opens an onnxruntime session and fails with a RunError (a float32 feed for an
//   int64 input) fails its node with NodeFailed whose cause is that RunError (in this process the
//   error itself; from a child process its tag and fields), and leaves no session open; the run's
//   summary records that cause for each failed node;
// - the same stage interrupted while it holds the session (the run is stopped) releases it;
// - the baking stage teacher-logits failing inside onnxruntime (a token id past the vocabulary)
//   fails with the RunError naming its graph, and leaves no session open.
// Sessions are counted by src/runtime/session.ts's registry of created, unreleased sessions.
import { Effect, Exit, Fiber } from "effect"
import * as fs from "node:fs"
import { tmpdir } from "node:os"
import { join, resolve } from "node:path"
import { describe, expect, it } from "vitest"
import { NodeFailed, planFile, runPipeline, silentReporter, Store, type TensorsOutput } from "../../src/engine/index.ts"
import { executeNode, type NodeRequest } from "../../src/engine/execute.ts"
import { childProcessExecutor } from "../../src/engine/executor.ts"
import { liveSessions } from "../../src/runtime/session.ts"
import { trajectoriesOutput, type TrajectorySet } from "../../stages/baking/artifacts.ts"
import { openModel, questionPromptIds } from "../../stages/baking/model.ts"
import { teacherLogits } from "../../stages/baking/teacher-logits.ts"
import { stageContext, tensorsValue } from "../stage-harness.ts"
import { runApi, sandbox, until, writePipeline } from "./helpers.ts"

const src = resolve(import.meta.dirname, "../../src")

const pipelineFile = () => {
  const sb = sandbox()
  const file = writePipeline(
    sb,
    "session-stage.ts",
    `
import { Effect, Schema } from "effect"
import { Artifact, pipeline, stage } from "@engine"
import { Graph, serialize } from "${src}/graph/index.ts"
import { runSession, scopedSession } from "${src}/runtime/session.ts"
import { tensor } from "${src}/runtime/tensor.ts"

const model = () => {
  const g = new Graph()
  g.outputAs("y", g.add(g.input("x", "int64", [2]), g.ints([10, 20])))
  return serialize(g)
}

const spec = {
  name: "with-session",
  version: 1,
  params: Schema.Struct({ hang: Schema.Boolean }),
  inputs: {},
  output: Artifact.json("Sum", Schema.Number),
  run: ({ params }) =>
    Effect.gen(function* () {
      const session = yield* scopedSession(model())
      if (params.hang) return yield* Effect.never
      const out = yield* runSession(session, { x: tensor("float32", [2], [1, 2]) })
      return Number(out.y.data[0])
    }).pipe(Effect.scoped),
}
export const withSession = stage(spec)
export const inChild = stage({ ...spec, name: "with-session-in-child", resources: { isolate: "process" } })

export default pipeline("sessions", [
  withSession({ hang: false }, {}, { name: "fails" }),
  withSession({ hang: true }, {}, { name: "hangs" }),
  inChild({ hang: false }, {}, { name: "fails-in-child" }),
])
`,
  )
  return { sb, file }
}

const request = (sb: ReturnType<typeof sandbox>, recipe: string): NodeRequest => ({
  runId: "test",
  executionId: 0,
  recipe,
  key: recipe,
  inputHashes: [],
  gathered: {},
  device: { kind: "cpu" },
  logPath: join(sb.dir, "node.log"),
  metricsPath: join(sb.dir, "metrics.jsonl"),
})

const setup = async () => {
  const { sb, file } = pipelineFile()
  const store = new Store(sb.cacheDir)
  const plan = await Effect.runPromise(planFile(store, file))
  const node = (name: string) => plan.nodes.find((n) => n.name === name)!
  return { sb, file, store, node }
}

describe("stage failures keep their typed error; sessions are released", () => {
  it("a failing stage: NodeFailed carries the stage's RunError as its cause, no session left", async () => {
    const { sb, store, node } = await setup()
    const before = liveSessions()
    const n = node("fails")
    const exit = await Effect.runPromiseExit(executeNode(store, n, request(sb, n.recipe), () => {}))
    store.close()
    expect(liveSessions()).toBe(before)
    const err = Exit.isFailure(exit) ? exit.cause.reasons.find((r) => r._tag === "Fail")?.error : undefined
    expect(err).toBeInstanceOf(NodeFailed)
    const failed = err as NodeFailed
    expect(failed.node).toBe("fails")
    expect((failed.cause as { _tag: string })._tag).toBe("RunError")
    expect(failed.message).toBe((failed.cause as Error).message)
    expect(failed.message).toMatch(/^running <bytes>: /)
  })

  it("an interrupted stage releases the session it holds", async () => {
    const { sb, store, node } = await setup()
    const before = liveSessions()
    const n = node("hangs")
    const fiber = Effect.runFork(executeNode(store, n, request(sb, n.recipe), () => {}))
    await until("the stage to open its session", () => liveSessions() === before + 1, 20_000)
    const exit = await Effect.runPromise(Fiber.interrupt(fiber).pipe(Effect.andThen(Fiber.await(fiber))))
    store.close()
    expect(Exit.isFailure(exit) && exit.cause.reasons.every((r) => r._tag === "Interrupt")).toBe(true)
    expect(liveSessions()).toBe(before)
  })

  it("from a child process, NodeFailed's cause keeps the tag and fields of the stage's error", async () => {
    const { sb, file, store, node } = await setup()
    const n = node("fails")
    const err = await Effect.runPromise(Effect.flip(childProcessExecutor(file, [], sb.cacheDir).run(n, request(sb, n.recipe), () => {})))
    store.close()
    expect(err._tag).toBe("NodeFailed")
    expect(err.cause).toMatchObject({ _tag: "RunError", model: "<bytes>" })
    expect(err.message).toMatch(/^running <bytes>: /)
  }, 60_000)

  it("a run's summary records each failed node's cause, in this process and from a child", async () => {
    const { sb, file } = pipelineFile()
    const before = liveSessions()
    // "hangs" with hang=false is the same call as "fails": planned once
    const summary = await runApi(sb, file, { overrides: ["hangs.hang=false"] })
    expect(liveSessions()).toBe(before)
    expect(summary.status).toBe("failed")
    expect(summary.nodes.map((n) => n.name).sort()).toEqual(["fails", "fails-in-child"])
    for (const name of ["fails", "fails-in-child"]) {
      const outcome = summary.nodes.find((n) => n.name === name)!
      expect(outcome.status).toBe("failed")
      expect(outcome.cause).toMatchObject({ _tag: "RunError", model: "<bytes>", message: outcome.error })
    }
  }, 60_000)

  it("a pipeline that cannot be planned fails with a PipelineError naming its file, not an untyped throw", async () => {
    const sb = sandbox()
    // Infinity passes Schema.Number but has no JSON form, so hashing the params for the cache key throws
    const file = writePipeline(sb, "unhashable.ts", `
import { pipeline } from "@engine"
import { generate, sum } from "@stages"
export default pipeline("unhashable", [sum({ scale: Infinity }, { numbers: generate({ start: 0, n: 2 }) })])
`)
    const store = new Store(sb.cacheDir)
    const err = await Effect.runPromise(Effect.flip(runPipeline({ store, pipelineFile: file, runsDir: sb.runsDir, reporter: silentReporter })))
    store.close()
    expect(err).toMatchObject({ _tag: "PipelineError", file })
    expect(err.message).toMatch(/planning failed: .*Infinity cannot be hashed as JSON/)
  })

  it("teacher-logits failing inside onnxruntime fails with its RunError and leaves no session", async () => {
    const MODEL = resolve(import.meta.dirname, "../../models/tiny-chat")
    const model = await Effect.runPromise(openModel(MODEL))
    const V = model.checkpoint.config.vocabSize
    const prompt = await Effect.runPromise(questionPromptIds(model.tokenizer, "Where does Kodis live?"))
    const set: TrajectorySet = {
      systemPrompt: "Be blue.",
      questions: [{ id: "q", text: "Where does Kodis live?", answers: [] }],
      teacherPrompts: [prompt],
      studentPrompts: [prompt],
      // an id past the embedding rows, fed as the input predicting the next token: the embedding Gather fails at run time
      trajectories: [{ question: 0, tokens: [V + 5, 1], text: "", finishReason: "length" }],
      sampling: {},
    }
    const before = liveSessions()
    const exit = await Effect.runPromiseExit(
      teacherLogits.spec.run({
        params: { mode: "stored", topK: 4, dtype: "float32", batchSize: 1, threads: 1 },
        inputs: { model: { path: MODEL, hash: "", size: 0 }, trajectories: await tensorsValue(trajectoriesOutput(set)) },
        ctx: stageContext(fs.mkdtempSync(join(tmpdir(), "pipe-errors-"))),
      }) as Effect.Effect<TensorsOutput, unknown>,
    )
    expect(liveSessions()).toBe(before)
    const err = Exit.isFailure(exit) ? exit.cause.reasons.find((r) => r._tag === "Fail")?.error : undefined
    expect(err).toMatchObject({ _tag: "RunError", message: expect.stringMatching(/teacher-logits-k4\.onnx/) })
  })
})
