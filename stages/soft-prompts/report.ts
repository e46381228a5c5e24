// Stage `soft-prompt-report`: the seed's table, test loss as a function of k, one table per
// objective (a row per model, a column per k), the relative change from k = 0 to the best k, the
// detuning comparison against the base model's own loss, the pathfinding rollouts per condition
// value, and one SVG plot (src/plots/render.ts): a panel per objective, loss against k on a log
// scale for k > 0, each model's k = 0 loss drawn as a dashed horizontal line.
import { Effect, Schema } from "effect"
import { Artifact, gathered, type Point, stage } from "../../src/engine/index.ts"
import { renderSvg } from "../../src/plots/render.ts"
import { type SoftPromptEvaluation as Evaluation, SoftPromptEvaluation } from "./evaluate.ts"
import { decodingLabel } from "./rollouts.ts"

export const SoftPromptReport = Artifact.json(
  "SoftPromptReport",
  Schema.Struct({
    /** per objective and model: the test loss at each k */
    curves: Schema.Array(Schema.Struct({ objective: Schema.String, model: Schema.String, points: Schema.Array(Schema.Struct({ k: Schema.Int, testLoss: Schema.Number })) })),
    /** chatAtZero and gapAtZero are null when the detuning sweep has no k = 0 */
    detuning: Schema.Struct({ base: Schema.Number, chatAtZero: Schema.NullOr(Schema.Number), chatBest: Schema.Number, gapAtZero: Schema.NullOr(Schema.Number), gapBest: Schema.Number }),
    markdown: Schema.String,
    svg: Schema.String,
  }),
)
export type SoftPromptReport = typeof SoftPromptReport.schema.Type

const fmt = (x: number) => x.toFixed(4)
const pct = (x: number) => `${x >= 0 ? "+" : ""}${(100 * x).toFixed(1)}%`

type Curve = SoftPromptReport["curves"][number]

const curvesOf = (evals: ReadonlyArray<Evaluation>): Curve[] => {
  const byKey = new Map<string, Curve>()
  for (const e of evals) {
    const key = `${e.objective}\u0000${e.model}`
    const c = byKey.get(key) ?? { objective: e.objective, model: e.model, points: [] }
    byKey.set(key, { ...c, points: [...c.points, { k: e.k, testLoss: e.testLoss }].sort((a, b) => a.k - b.k) })
  }
  return [...byKey.values()]
}

const lossTable = (objective: string, curves: ReadonlyArray<Curve>): string => {
  const ks = [...new Set(curves.flatMap((c) => c.points.map((p) => p.k)))].sort((a, b) => a - b)
  const lines = [`### ${objective}`, "", `| model | ${ks.map((k) => `k = ${k}`).join(" | ")} | best vs k = 0 |`, `| --- | ${ks.map(() => "---").join(" | ")} | --- |`]
  for (const c of curves) {
    const at = (k: number) => c.points.find((p) => p.k === k)?.testLoss
    const zero = at(0)
    const best = Math.min(...c.points.map((p) => p.testLoss))
    lines.push(`| ${c.model} | ${ks.map((k) => (at(k) === undefined ? "" : fmt(at(k)!))).join(" | ")} | ${zero === undefined ? "" : pct(best / zero - 1)} |`)
  }
  return lines.join("\n")
}

const plotSpec = (curves: ReadonlyArray<Curve>) => ({
  $schema: "https://vega.github.io/schema/vega-lite/v5.json",
  title: "Test loss against soft-prompt length k (dashed: k = 0, the model itself)",
  data: {
    values: curves.flatMap((c) => c.points.map((p) => ({ objective: c.objective, model: c.model, k: p.k, loss: p.testLoss, kind: p.k === 0 ? "baseline" : "trained" }))),
  },
  facet: { field: "objective", type: "nominal" as const, title: null },
  columns: 3,
  spec: {
    width: 220,
    height: 160,
    layer: [
      {
        transform: [{ filter: "datum.kind === 'trained'" }],
        mark: { type: "line" as const, point: true },
        encoding: {
          x: { field: "k", type: "quantitative" as const, scale: { type: "log" as const }, title: "k (soft-prompt tokens)" },
          y: { field: "loss", type: "quantitative" as const, scale: { zero: false }, title: "test loss (nats/token)" },
          color: { field: "model", type: "nominal" as const },
        },
      },
      {
        transform: [{ filter: "datum.kind === 'baseline'" }],
        mark: { type: "rule" as const, strokeDash: [4, 3] },
        encoding: { y: { field: "loss", type: "quantitative" as const }, color: { field: "model", type: "nominal" as const } },
      },
    ],
  },
  resolve: { scale: { y: "independent" as const } },
})

export const softPromptReport = stage({
  name: "soft-prompt-report",
  version: 4, // 4: rollouts by decoding (greedy and sampled); 3: no k = 0 in the detuning sweep reports the best prompt's gap alone (was NaN, unpublishable)
  params: Schema.Struct({ title: Schema.String }),
  inputs: {
    autoregressive: gathered(SoftPromptEvaluation),
    skip: gathered(SoftPromptEvaluation),
    repetition: gathered(SoftPromptEvaluation),
    /** the chat model on base-domain text, over k */
    detuning: gathered(SoftPromptEvaluation),
    /** the base model's own loss on that text (k = 0) */
    detuningBase: SoftPromptEvaluation,
    pathfinding: gathered(SoftPromptEvaluation),
  },
  output: SoftPromptReport,
  run: ({ params, inputs }) =>
    Effect.gen(function* () {
      const values = (ps: ReadonlyArray<Point<Evaluation>>) => ps.map((p) => p.value)
      const groups: Array<[string, Evaluation[]]> = [
        ["autoregressive (the model's own distribution)", values(inputs.autoregressive)],
        ["skip", values(inputs.skip)],
        ["repetition", values(inputs.repetition)],
        ["chat detuning (base-domain text)", [...values(inputs.detuning), inputs.detuningBase]],
        ["pathfinding (conditional)", values(inputs.pathfinding)],
      ]
      const curves = groups.flatMap(([, evals]) => curvesOf(evals))
      const sections = groups.map(([name, evals]) => lossTable(`${name}: ${[...new Set(evals.map((e) => e.objective))].join(", ")}`, curvesOf(evals)))

      const chat = values(inputs.detuning)
      const base = inputs.detuningBase.testLoss
      const chatAtZero = chat.find((e) => e.k === 0)?.testLoss ?? null
      const chatBest = Math.min(...chat.map((e) => e.testLoss))
      const gap = (chatLoss: number) => chatLoss / base - 1
      const detuning = { base, chatAtZero, chatBest, gapAtZero: chatAtZero === null ? null : gap(chatAtZero), gapBest: gap(chatBest) }
      const detuningText =
        `Chat model (${chat[0]?.model ?? "?"}) against the base model (${inputs.detuningBase.model}) on base-domain text: ` +
        (chatAtZero === null
          ? `${pct(gap(chatBest))} with the best soft prompt (base ${fmt(base)}, chat ${fmt(chatBest)}; k = 0 is not in the sweep).`
          : `${pct(gap(chatAtZero))} at k = 0, ${pct(gap(chatBest))} with the best soft prompt (base ${fmt(base)}, chat ${fmt(chatAtZero)} -> ${fmt(chatBest)}).`)

      const rollouts = values(inputs.pathfinding)
        .filter((e) => e.rollouts.length > 0)
        .sort((a, b) => a.k - b.k)
      const rolloutLines = [
        "| k | condition (length ratio asked) | decoding | valid paths | legal moves only (at least one) | mean length ratio (valid) | mean moves (optimal) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        ...rollouts.flatMap((e) =>
          e.rollouts.map(
            (r) =>
              `| ${e.k} | ${r.condition} | ${decodingLabel(r)} | ${(100 * r.validity).toFixed(1)}% (${r.rollouts} paths, ${r.tasks} grids) | ` +
              `${(100 * r.legal).toFixed(1)}% | ${r.lengthRatio.toFixed(3)} | ${r.meanMoves.toFixed(1)} (${r.meanOptimal.toFixed(1)}) |`,
          ),
        ),
      ]
      const markdown = [
        `## ${params.title}`,
        "",
        "Test loss (nats per scored token) of a frozen model with k trained soft-prompt tokens; k = 0 is the model itself.",
        "",
        ...sections.flatMap((s) => [s, ""]),
        detuningText,
        "",
        "### Pathfinding rollouts (test grids; a detour has no likeliest move of its own, so the condition shows in sampled paths)",
        "",
        ...rolloutLines,
        "",
      ].join("\n")
      const svg = yield* renderSvg("soft-prompts", plotSpec(curves))
      return { curves, detuning, markdown, svg }
    }),
})
