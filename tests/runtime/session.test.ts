import { Effect } from "effect"
import { describe, expect, it } from "vitest"
import { Graph, serialize } from "../../src/graph/index.ts"
import { createSession, cuda, runSession } from "../../src/runtime/session.ts"
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
