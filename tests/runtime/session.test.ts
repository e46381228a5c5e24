import { Effect } from "effect"
import { describe, expect, it } from "vitest"
import { Graph, serialize } from "../../src/graph/index.ts"
import * as fs from "node:fs"
import { tmpdir } from "node:os"
import { join, resolve } from "node:path"
import { loadCheckpoint } from "../../src/models/checkpoint.ts"
import { makeGenerator } from "../../src/models/generate.ts"
import { createSession, cuda, liveSessions, releaseSession, runSession, scopedSessions } from "../../src/runtime/session.ts"
import { tensor, toNumbers } from "../../src/runtime/tensor.ts"

const model = () => {
  const g = new Graph()
  const x = g.input("x", "int64", [2])
  g.outputAs("y", g.add(x, g.ints([10, 20])))
  return serialize(g)
}

describe("sessions", () => {
  it("creates a CPU session from bytes and runs it", async () => {
    const out = await Effect.runPromise(Effect.flatMap(createSession(model()), (s) => runSession(s, { x: tensor("int64", [2], [1, 2]) })))
    expect(toNumbers(out.y)).toEqual([11, 22])
  })

  it("reports a missing model file as a SessionError naming the file", async () => {
    const err = await Effect.runPromise(Effect.flip(createSession("/nonexistent/model.onnx")))
    expect(err._tag).toBe("SessionError")
    expect(err.message).toContain("/nonexistent/model.onnx")
  })

  it("reports bad feeds as a RunError", async () => {
    const err = await Effect.runPromise(Effect.flip(Effect.flatMap(createSession(model()), (s) => runSession(s, { x: tensor("float32", [2], [1, 2]) }))))
    expect(err._tag).toBe("RunError")
  })

  it("never falls back to the CPU when CUDA is asked for", async () => {
    const result = await Effect.runPromise(Effect.result(createSession(model(), { device: cuda(0) })))
    if (result._tag === "Failure") {
      // no usable CUDA provider here: a clear error naming the device
      expect(result.failure.message).toMatch(/on cuda:0: .*pipe doctor. tells what is missing for CUDA/)
    } else {
      expect(result.success.device).toEqual({ kind: "cuda", deviceId: 0, gpu: 0 })
    }
  })
})

describe("scoped sessions", () => {
  const MODEL = resolve(import.meta.dirname, "../../models/tiny-chat")

  it("a generator's step and decode-loop sessions are live inside the scope and released when it fails", async () => {
    const before = liveSessions()
    let inside = -1
    const failed = Effect.gen(function* () {
      const ckpt = yield* loadCheckpoint(MODEL)
      yield* scopedSessions(makeGenerator(ckpt, { graphDir: fs.mkdtempSync(join(tmpdir(), "pipe-scoped-")), stepsPerRun: 2 }))
      inside = liveSessions()
      return yield* Effect.fail("stage failed")
    }).pipe(Effect.scoped)
    expect(await Effect.runPromise(Effect.flip(failed))).toBe("stage failed")
    expect(inside).toBe(before + 2)
    expect(liveSessions()).toBe(before)
  })

  it("releasing a session twice releases it once", async () => {
    const before = liveSessions()
    const session = await Effect.runPromise(createSession(model()))
    expect(liveSessions()).toBe(before + 1)
    await Effect.runPromise(Effect.andThen(releaseSession(session), releaseSession(session)))
    expect(liveSessions()).toBe(before)
  })
})
