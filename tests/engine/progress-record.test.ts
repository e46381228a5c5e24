// runs/<id>/progress.json as the run keeps it (recordingReporter): every event reaches the wrapped
// reporter, the file holds each node's latest state and progress, a burst of events makes one write,
// a change is written within the interval without another event, and a failing write is given up on.
import { describe, expect, it } from "vitest"
import { recordingReporter, silentReporter, type Reporter } from "../../src/engine/progress.ts"

const counting = () => {
  const calls: Array<string> = []
  const inner: Reporter = { ...silentReporter, cached: (n) => calls.push(`cached ${n}`), finished: (n, s) => calls.push(`${s} ${n}`) }
  return { inner, calls }
}

describe("recordingReporter", () => {
  it("writes each node's latest state once per burst, and at flush", async () => {
    const writes: Array<string> = []
    const { inner, calls } = counting()
    const { reporter, flush } = recordingReporter(inner, "progress.json", (_, text) => writes.push(text), 50)
    for (let i = 0; i < 1000; i++) reporter.cached(`n${i}`)
    reporter.started("train", "child process, cpu")
    reporter.progress("train", { total: 20, unit: "steps", value: 0 })
    reporter.progress("train", { value: 10 })
    expect(calls).toHaveLength(1000) // the wrapped reporter saw every event
    expect(writes).toEqual([]) // none yet: the burst is written once, after the interval
    await new Promise((r) => setTimeout(r, 120))
    expect(writes).toHaveLength(1)
    const first = JSON.parse(writes[0])
    expect(Object.keys(first)).toHaveLength(1001)
    expect(first.train).toEqual({ state: "running", value: 10, total: 20, unit: "steps" })
    reporter.finished("train", "succeeded", "1.0s")
    flush()
    expect(writes).toHaveLength(2)
    expect(JSON.parse(writes[1]).train).toEqual({ state: "succeeded", value: 10, total: 20, unit: "steps" })
  })

  it("gives the file up after a failed write, the run going on", async () => {
    let attempts = 0
    const { inner, calls } = counting()
    const { reporter, flush } = recordingReporter(inner, "progress.json", () => {
      attempts++
      throw new Error("ENOSPC")
    })
    reporter.cached("a")
    flush()
    reporter.cached("b")
    flush()
    expect(attempts).toBe(1)
    expect(calls).toEqual(["cached a", "cached b"])
  })
})
