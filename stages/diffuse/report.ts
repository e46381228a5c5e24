// Stages `diffuse-report` (the Markdown report: training loss per pass beside the optimal loss, then
// per set a table of every prompt's figures for the untuned and the tuned model) and
// `diffuse-histograms` (per prompt, a bar chart of the target distribution against the untuned and
// tuned models' sample frequencies, with the invalid answers as one "(other)" bar; Vega-Lite
// through src/plots/render.ts, one SVG per prompt, kept as one JSON file of {name: svg} and
// published as a directory by `histogramsDirectory`).
import { Effect, Result, Schema } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import { Artifact, decodeArtifact, type PublishWriter, StageError, stage } from "../../src/engine/index.ts"
import { markdown, type Table } from "../../src/engine/table.ts"
import { renderSvg } from "../../src/plots/render.ts"
import { BakedAdapter } from "../baking/artifacts.ts"
import { DiffuseMetrics } from "./metrics.ts"
import { TRAIN_SUMMARY, TrainSummary } from "./train.ts"

export const DiffuseReport = Artifact.json(
  "DiffuseReport",
  Schema.Struct({
    training: TrainSummary,
    sets: Schema.Array(DiffuseMetrics.schema),
    markdown: Schema.String,
  }),
)
export type DiffuseReport = typeof DiffuseReport.schema.Type

const fixed = (x: number | null, digits: number) => (x === null ? "-" : x.toFixed(digits))

const trainingSection = (t: TrainSummary): string => {
  const last = t.passLosses[t.passLosses.length - 1]
  const table: Table = {
    columns: [{ name: "prompt" }, { name: "loss", digits: 4 }, { name: "optimal H(p*)", digits: 4 }, { name: "above optimal", percent: true }, { name: "mass on targets", percent: true }],
    rows: t.prompts.map((p) => ({ prompt: p.id, loss: p.loss, "optimal H(p*)": p.optimal, "above optimal": p.optimal > 0 ? p.loss / p.optimal - 1 : null, "mass on targets": p.targetMass })),
  }
  const passes = t.passLosses.map((l, i) => `${i}: ${l.toFixed(3)}`).join(", ")
  return [
    `Loss over the training prompts (Σ_prompts Σ_y p*(y)·(−log p(y | prompt)), nats): ${last.toFixed(4)} after ${t.passesRun} passes; optimal Σ H(p*) = ${t.optimalLoss.toFixed(4)} (${((last / t.optimalLoss - 1) * 100).toFixed(2)}% above).` +
      (t.threshold === null ? "" : ` Early stop at loss <= ${t.threshold.toFixed(4)}: ${t.stoppedEarly ? "reached" : "not reached"}.`),
    "",
    `Loss per pass (0 = untuned): ${passes}`,
    "",
    markdown(table, "Training prompts after training"),
  ].join("\n")
}

const setSection = (m: DiffuseMetrics): string => {
  const table: Table = {
    columns: [
      { name: "prompt" },
      { name: "model" },
      { name: "valid", percent: true },
      { name: "coverage" },
      { name: "entropy", digits: 3 },
      { name: "H(p*)", digits: 3 },
      { name: "entropy / H(p*)", digits: 2 },
      { name: "KL(p* ‖ samples)", digits: 4 },
      { name: "TV", digits: 3 },
      { name: "top answer" },
      { name: "top share", percent: true },
    ],
    rows: m.prompts.flatMap((p) =>
      p.variants.map((v) => ({
        prompt: p.id,
        model: v.label,
        valid: v.validShare,
        coverage: `${v.covered}/${p.targets.length}`,
        entropy: v.entropy,
        "H(p*)": p.targetEntropy,
        "entropy / H(p*)": v.entropyRatio,
        "KL(p* ‖ samples)": v.kl,
        TV: v.tv,
        "top answer": JSON.stringify(v.topAnswer),
        "top share": v.topShare,
      })),
    ),
  }
  const overall = m.overall.map((o) => `${o.label}: valid ${(o.validShare * 100).toFixed(1)}%, coverage ${(o.coverage * 100).toFixed(1)}%, entropy ${fixed(o.entropy, 3)}, KL ${fixed(o.kl, 4)}, TV ${fixed(o.tv, 3)}`).join("; ")
  return [markdown(table, `${m.set} prompts (${m.prompts[0]?.variants[0]?.n ?? 0} samples per prompt and model)`), "", `Mean over the ${m.set} prompts: ${overall}.`].join("\n")
}

export const reportMarkdown = (training: TrainSummary, sets: ReadonlyArray<DiffuseMetrics>): string =>
  [
    "# Diffuse distributions",
    "",
    trainingSection(training),
    "",
    ...sets.flatMap((s) => [setSection(s), ""]),
    "Valid: the answer is exactly a target and ended with the end-of-turn token. Entropy: of the valid answers (nats). " +
      "KL(p* ‖ samples): over the targets and one bucket for every other answer, counts add-½ smoothed. TV: total variation to p*, unsmoothed.",
    "",
  ].join("\n")

export const diffuseReport = stage({
  name: "diffuse-report",
  version: 1,
  params: Schema.Struct({}),
  inputs: { adapter: BakedAdapter, train: DiffuseMetrics, heldout: DiffuseMetrics },
  output: DiffuseReport,
  run: ({ inputs }) =>
    Effect.gen(function* () {
      const raw = inputs.adapter.metadata[TRAIN_SUMMARY]
      if (raw === undefined) return yield* Effect.fail(new StageError({ message: `${inputs.adapter.path}: no ${TRAIN_SUMMARY} metadata: not an adapter trained by diffuse-train` }))
      const training = yield* decodeArtifact(Schema.fromJsonString(TrainSummary), inputs.adapter.path, "a diffuse-train adapter", raw)
      const sets = [inputs.train, inputs.heldout]
      return { training, sets, markdown: reportMarkdown(training, sets) }
    }),
})

// ------------------------------------------------------------------------------ histograms

const OTHER = "(other)"

/** The Vega-Lite spec of one prompt's histogram: per answer, p* and each model's sample frequency. */
export const histogramSpec = (set: string, p: DiffuseMetrics["prompts"][number]) => {
  const answers = [...p.targets, OTHER]
  const values = [
    ...answers.map((a, i) => ({ answer: a, source: "target p*", share: i < p.targets.length ? p.weights[i] : 0 })),
    ...p.variants.flatMap((v) => answers.map((a, i) => ({ answer: a, source: v.label, share: v.n === 0 ? 0 : (i < p.targets.length ? v.counts[i] : v.other) / v.n }))),
  ]
  return {
    $schema: "https://vega.github.io/schema/vega-lite/v6.json",
    title: { text: `${set}: ${p.id}`, subtitle: p.request.length > 90 ? `${p.request.slice(0, 87)}...` : p.request },
    width: Math.max(240, 36 * answers.length),
    height: 200,
    data: { values },
    mark: "bar",
    encoding: {
      x: { field: "answer", type: "nominal", sort: answers, title: "answer" },
      xOffset: { field: "source", type: "nominal", sort: ["target p*", ...p.variants.map((v) => v.label)] },
      y: { field: "share", type: "quantitative", title: "share of samples" },
      color: { field: "source", type: "nominal", sort: ["target p*", ...p.variants.map((v) => v.label)], title: null },
    },
  } as const
}

/** The file name of a prompt's histogram. */
export const histogramName = (set: string, id: string) => `${set}-${id}.svg`.replace(/[^A-Za-z0-9._-]/g, "_")

export const Histograms = Artifact.file("DiffuseHistograms")

export const diffuseHistograms = stage({
  name: "diffuse-histograms",
  version: 1,
  params: Schema.Struct({}),
  inputs: { train: DiffuseMetrics, heldout: DiffuseMetrics },
  output: Histograms,
  run: ({ inputs }) =>
    Effect.gen(function* () {
      const entries = yield* Effect.forEach(
        [inputs.train, inputs.heldout].flatMap((m) => m.prompts.map((p) => [m.set, p] as const)),
        ([set, p]) => Effect.map(renderSvg(histogramName(set, p.id), histogramSpec(set, p)), (svg) => [histogramName(set, p.id), svg] as const),
      )
      return new TextEncoder().encode(JSON.stringify(Object.fromEntries(entries)))
    }),
})

const HistogramFile = Schema.fromJsonString(Schema.Record(Schema.String, Schema.String))

/** Publishes a histograms payload as a directory of SVG files. */
export const histogramsDirectory: PublishWriter = ({ payload }, target) => {
  const r = Effect.runSync(Effect.result(decodeArtifact(HistogramFile, payload, "a diffuse-histograms file", fs.readFileSync(payload, "utf8"))))
  // a publish writer reports by throwing: the typed error itself, so its message reaches the run's summary
  if (Result.isFailure(r)) throw r.failure
  const svgs = r.success
  fs.mkdirSync(target, { recursive: true })
  for (const [name, svg] of Object.entries(svgs)) fs.writeFileSync(path.join(target, name), svg)
}
