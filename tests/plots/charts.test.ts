// The shared chart builders rendered headlessly, checked against hand-made metrics: which series a
// training curve shows and every point of them (non-finite values left out), the rate bars; the
// bake-plots stage on a comparison and an adapter whose validation history is known; training
// curves written from the run records for a node that ran and, in the next run, for it cached.
import { Effect } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import { afterAll, describe, expect, it } from "vitest"
import { Store } from "../../src/engine/index.ts"
import { curveMetricNames, hasTrainingCurve, histogram, histogramBins, type MetricPoint, rateBars, trainingCurve } from "../../src/plots/charts.ts"
import { writeTrainingCurves } from "../../src/plots/curves.ts"
import { renderSvg } from "../../src/plots/render.ts"
import type { BakeComparison } from "../../stages/baking/artifacts.ts"
import { bakePlots } from "../../stages/baking/plots.ts"
import { runApi, sandbox, writePipeline } from "../engine/helpers.ts"
import { stageContext, tensorsValue } from "../stage-harness.ts"

const sb = sandbox()
afterAll(() => fs.rmSync(sb.dir, { recursive: true, force: true }))

/** The accessible labels vega gives each mark of a kind: one per drawn data point or bar. */
const marks = (svg: string, kind: string) => [...svg.matchAll(new RegExp(`aria-label="([^"]*)" role="graphics-symbol" aria-roledescription="${kind}"`, "g"))].map((m) => m[1])
const labels = (svg: string) => marks(svg, "point")
/** The x pixel of each rule mark, by the label vega gives it. */
const rules = (svg: string) =>
  new Map([...svg.matchAll(/<line aria-label="([^"]*)" role="graphics-symbol" aria-roledescription="rule mark" transform="translate\(([-\d.e]+),0\)"/g)].map((m) => [m[1], Number(m[2])]))

const metrics: ReadonlyArray<MetricPoint> = [
  { name: "val_kl", step: 0, value: 2 },
  ...[1, 2, 3, 4].flatMap((step) => [
    { name: "loss", step, value: step === 3 ? Number.NaN : 1 / step },
    { name: "lr", step, value: 0.01 },
  ]),
  { name: "val_kl", step: 2, value: 1.5 },
  { name: "val_kl", step: 4, value: 1.25 },
  { name: "train_seconds", step: null, value: 3 },
]

describe("trainingCurve", () => {
  it("draws the per-step loss and the validation metric on one step axis, leaving out bookkeeping and non-finite values", async () => {
    expect(curveMetricNames(metrics)).toEqual(["loss", "val_kl"])
    expect(hasTrainingCurve(metrics)).toBe(true)
    expect(hasTrainingCurve(metrics.filter((m) => m.name !== "loss"))).toBe(false)
    const svg = await Effect.runPromise(renderSvg("curve", trainingCurve("lora-train", metrics)))
    expect(labels(svg).sort()).toEqual(
      [
        "step: 1; loss / validation metric: 1; series: loss",
        "step: 2; loss / validation metric: 0.5; series: loss",
        "step: 4; loss / validation metric: 0.25; series: loss",
        "step: 0; loss / validation metric: 2; series: val_kl",
        "step: 2; loss / validation metric: 1.5; series: val_kl",
        "step: 4; loss / validation metric: 1.25; series: val_kl",
      ].sort(),
    )
    expect(svg).toContain("lora-train: training curve")
  })
})

describe("rateBars", () => {
  it("draws one bar per variant and measure, on a percent axis", async () => {
    const rows = [
      { group: "base", measure: "behaviour rate", value: 0 },
      { group: "base", measure: "accuracy", value: 0.9 },
      { group: "baked", measure: "behaviour rate", value: 0.75 },
      { group: "baked", measure: "accuracy", value: 0.85 },
    ]
    const svg = await Effect.runPromise(renderSvg("rates", rateBars(rows, { title: "rates", y: "rate" })))
    const bars = marks(svg, "bar")
    expect(bars).toHaveLength(4)
    expect(bars).toContain("group: baked; rate: 75%; measure: behaviour rate")
    expect(svg).toContain(">100%</text>")
  })
})

describe("histogram", () => {
  it("bins by hand: equal widths over [min, max], the maximum in the last bin, at least 5 bins", () => {
    // width (10 - 1) / 5 = 1.8: [1, 2.8) holds 1, 2, 2; [2.8, 4.6) holds 3; [8.2, 10] holds 10
    const { bins, log } = histogramBins([2, 1, 10, 3, 2, Number.NaN])
    expect(log).toBe(false)
    expect(bins.map((b) => b.count)).toEqual([3, 1, 0, 0, 1])
    bins.forEach((b, i) => {
      expect(b.lo).toBeCloseTo(1 + 1.8 * i, 12)
      expect(b.hi).toBeCloseTo(1 + 1.8 * (i + 1), 12)
    })
    expect(histogramBins([4, 4, 4]).bins).toEqual([{ lo: 3.6, hi: 4.4, count: 3 }])
    expect(histogramBins([]).bins).toEqual([])
  })

  it("bins on a log scale when the positive values span more than a decade, never with a value <= 0", () => {
    // log10 from -2 to 2 in 5 bins of 0.8: one value per bin
    const { bins, log } = histogramBins([0.01, 0.1, 1, 10, 100])
    expect(log).toBe(true)
    expect(bins.map((b) => b.count)).toEqual([1, 1, 1, 1, 1])
    expect(bins.map((b) => Math.log10(b.lo))).toEqual([-2, -1.2, -0.4, 0.4, 1.2].map((x) => expect.closeTo(x, 12)))
    expect(histogramBins([1, 10]).log).toBe(false)
    expect(histogramBins([0, 0.01, 100]).log).toBe(false)
  })

  it("draws a bar per bin at its count and each marked value as a rule at the value's x, on either scale", async () => {
    const width = 480
    const linear = await Effect.runPromise(renderSvg("h", histogram([2, 1, 10, 3, 2], { title: "linear", x: "v", marks: [{ name: "median", value: 2 }, { name: "top", value: 10 }] })))
    expect(marks(linear, "rect mark").map((l) => Number(/count: (\d+)/.exec(l)![1]))).toEqual([3, 1, 0, 0, 1])
    // the domain is exactly [1, 10]: 2 sits at 1/9 of the width, 10 at its right edge
    const atLinear = rules(linear)
    expect(atLinear.get("v: 2; name: median; mark: median")).toBeCloseTo((width * 1) / 9, 6)
    expect(atLinear.get("v: 10; name: top; mark: top")).toBeCloseTo(width, 6)
    const logged = await Effect.runPromise(renderSvg("h", histogram([0.01, 0.1, 1, 10, 100], { title: "log", x: "v", marks: [{ name: "median", value: 1 }, { name: "top", value: 30 }] })))
    expect(logged).toContain("for a log scale")
    // log10 domain [-2, 2]: 1 at the middle, 30 at (log10(30) + 2) / 4 of the width
    const atLog = rules(logged)
    expect(atLog.get("v: 1; name: median; mark: median")).toBeCloseTo(width / 2, 6)
    expect(atLog.get("v: 30; name: top; mark: top")).toBeCloseTo((width * (Math.log10(30) + 2)) / 4, 6)
  })
})

describe("bake-plots", () => {
  it("draws lora-train's validation KL per epoch against each variant's KL, and every variant's rates", async () => {
    const rate = (hits: number, n: number) => ({ rate: hits / n, hits, n })
    const row = (variant: string, kl: number, behaviour: number, accuracy: number) => ({ variant, interventions: [], kl, behaviour: rate(behaviour, 20), accuracy: rate(accuracy, 20) })
    const comparison: BakeComparison = {
      systemPrompt: "Always mention the colour blue in your answers.",
      reference: { name: "prompted", interventions: [{ _tag: "SystemPrompt" }] },
      rows: [row("base", 1.25, 0, 18), row("prompted", 0, 19, 17), row("baked", 0.125, 15, 17)],
      pair: { from: "base", to: "baked" },
      klReduction: 10,
      behaviourGap: 20,
      warnings: [],
      samples: [],
      markdown: "",
    }
    const adapter = await tensorsValue({
      tensors: { w: { dtype: "F32", shape: [1], data: new Uint8Array(4) } },
      metadata: { train_summary: JSON.stringify({ valKl: [1.25, 0.5, 0.25], trainLoss: [null, 0.6, 0.3] }) },
    })
    const plots = await Effect.runPromise(bakePlots.spec.run({ params: {}, inputs: { comparison, adapter }, ctx: stageContext(sb.dir) }) as Effect.Effect<{ klPerEpoch: string; behaviour: string }>)
    const kl = labels(plots.klPerEpoch)
    expect(kl.filter((l) => l.includes("baked during training"))).toEqual([
      "epoch: 0; KL, nats/token: 1.25; series: baked during training (validation)",
      "epoch: 1; KL, nats/token: 0.5; series: baked during training (validation)",
      "epoch: 2; KL, nats/token: 0.25; series: baked during training (validation)",
    ])
    // the reference's own KL (0) is not drawn; base and baked are flat lines over the epochs
    expect(kl.filter((l) => l.includes("held-out")).sort()).toEqual(
      [
        "epoch: 0; KL, nats/token: 0.125; series: baked (held-out evaluation)",
        "epoch: 2; KL, nats/token: 0.125; series: baked (held-out evaluation)",
        "epoch: 0; KL, nats/token: 1.25; series: base (held-out evaluation)",
        "epoch: 2; KL, nats/token: 1.25; series: base (held-out evaluation)",
      ].sort(),
    )
    const bars = marks(plots.behaviour, "bar")
    expect(bars).toHaveLength(6)
    expect(bars).toContain("group: baked; rate: 75%; measure: behaviour rate")
  })

  it("names the adapter file when it has no train_summary", async () => {
    const adapter = await tensorsValue({ tensors: { w: { dtype: "F32", shape: [1], data: new Uint8Array(4) } } })
    const exit = await Effect.runPromiseExit(bakePlots.spec.run({ params: {}, inputs: { comparison: {} as BakeComparison, adapter }, ctx: stageContext(sb.dir) }))
    expect(exit._tag).toBe("Failure")
    expect(JSON.stringify(exit)).toContain(`${adapter.path}: not a lora-train adapter with its train_summary`)
  })
})

describe("writeTrainingCurves", () => {
  it("draws a training node's curve from the records, when it ran and when it is cached", async () => {
    const file = writePipeline(
      sb,
      "fit.ts",
      `import { Effect, Schema } from "effect"
import { Artifact, pipeline, stage } from "@engine"
const fit = stage({
  name: "fit", version: 1, params: Schema.Struct({ steps: Schema.Int }), inputs: {}, output: Artifact.json("Fit", Schema.Number),
  run: ({ params, ctx }) => Effect.sync(() => {
    for (let step = 1; step <= params.steps; step++) ctx.metric("loss", 1 / step, step)
    ctx.metric("val_loss", 0.75, params.steps)
    return 1 / params.steps
  }),
})
const count = stage({ name: "count", version: 1, params: Schema.Struct({}), inputs: {}, output: Artifact.json("Count", Schema.Number), run: () => Effect.succeed(1) })
export default pipeline("fit", { fit: fit({ steps: 4 }), count: count({}) })
`,
    )
    for (const expected of ["succeeded", "cached"]) {
      const run = await runApi(sb, file)
      expect(run.nodes.find((n) => n.name === "fit")?.status).toBe(expected)
      const store = new Store(sb.cacheDir)
      const written = await Effect.runPromise(writeTrainingCurves(store, run.nodes, run.runDir)).finally(() => store.close())
      expect(written).toEqual([path.join(run.runDir, "curves", "fit.svg")]) // count recorded no loss
      const points = labels(fs.readFileSync(written[0], "utf8"))
      expect(points).toHaveLength(5)
      expect(points).toContain("step: 4; loss / validation metric: 0.75; series: val_loss")
    }
  })
})
