import { Effect } from "effect"
import { describe, expect, it } from "vitest"
import { renderSvg } from "../../src/plots/render.ts"

describe("renderSvg", () => {
  it("draws one mark per data point of a Vega-Lite spec", async () => {
    const values = [1, 2, 3, 4].map((step) => ({ step, loss: 1 / step }))
    const svg = await Effect.runPromise(
      renderSvg("loss", {
        data: { values },
        mark: "point",
        encoding: { x: { field: "step", type: "quantitative" }, y: { field: "loss", type: "quantitative" } },
      }),
    )
    expect(svg.startsWith("<svg")).toBe(true)
    expect(svg.match(/class="mark-symbol role-mark/g)).toHaveLength(1)
    expect(svg.match(/aria-roledescription="point"/g)).toHaveLength(values.length)
    expect(svg).toContain(`aria-label="step: 2; loss: 0.5"`)
  })

  it("fails with the chart's name when the spec is invalid", async () => {
    const exit = await Effect.runPromiseExit(renderSvg("broken", { data: { values: [] }, mark: "no-such-mark" } as never))
    expect(exit._tag).toBe("Failure")
    expect(JSON.stringify(exit)).toContain("plot broken")
  })
})
