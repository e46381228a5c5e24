// Stage `report-blend`: the tables and the two plots users of seed 003 look at — perplexity against
// tokens back for every model and the blend, and validation perplexity over the search trials
// (full vocabulary and top-k) — as Markdown and SVG strings (src/plots/render.ts) that the
// pipelines publish into the run folder.
import { Effect, Schema } from "effect"
import { Artifact, stage } from "../../src/engine/index.ts"
import { markdown, type Table } from "../../src/engine/table.ts"
import { blendRoles } from "../../src/models/blend.ts"
import { renderSvg } from "../../src/plots/render.ts"
import { type BlendSearch, BlendSearch as BlendSearchArtifact } from "./artifacts.ts"
import { BlendEvaluation } from "./evaluate.ts"
import { BlendSamples } from "./generate.ts"

export const BlendReport = Artifact.json("BlendReport", Schema.Struct({ markdown: Schema.String, tokensBackSvg: Schema.String, trialsSvg: Schema.String }))

const formula = (kind: "blend" | "proxy") => (kind === "blend" ? "big/T_b + (tuned/T_t − untuned/T_u)" : "big + α·(tuned − untuned)")
const paramsText = (p: Readonly<Record<string, number>>) => Object.entries(p).map(([k, v]) => `${k} = ${v.toFixed(3)}`).join(", ")
const bucketLabel = (back: number | null) => (back === null ? "full" : String(back))

/** What the numbers say about the blend against the big and the small tuned model (whatever they say). */
const findings = (e: BlendEvaluation): string[] => {
  const o = e.overall
  const beats = (m: string) => o.blend < o[m]
  const buckets = e.buckets.filter((b) => b.perplexity.blend < b.perplexity.big && b.perplexity.blend < b.perplexity.tuned).length
  const tunedBest = e.buckets.filter((b) => b.perplexity.tuned < b.perplexity.big).map((b) => bucketLabel(b.tokensBack))
  const topKey = Object.keys(o).find((k) => k.startsWith("blend (top"))
  return [
    `- Overall the blend's test perplexity (${o.blend.toFixed(3)}) is ${beats("big") ? "below" : "not below"} the big model's (${o.big.toFixed(3)}) and ${beats("tuned") ? "below" : "not below"} the small tuned model's (${o.tuned.toFixed(3)}).`,
    `- It is below both in ${buckets} of ${e.buckets.length} context buckets.`,
    `- The small tuned model beats the big one at ${tunedBest.length === 0 ? "no context length" : `${tunedBest.join(", ")} tokens back`}.`,
    ...(topKey ? [`- Full-vocabulary blend ${o.blend.toFixed(3)} against the ${topKey.slice(7, -1)}-only blend ${o[topKey].toFixed(3)} (${((o[topKey] / o.blend - 1) * 100).toFixed(1)}% higher with top-k only).`] : []),
  ]
}

export const reportMarkdown = (search: BlendSearch, searchTopK: BlendSearch, e: BlendEvaluation, samples: BlendSamples): string => {
  // stored JSON has its keys sorted: the roles' order is restored here
  const models = [...blendRoles, "blend"]
  const overallOrder = [...models, ...Object.keys(e.overall).filter((k) => !models.includes(k))]
  const overall: Table = { columns: [{ name: "model" }, { name: "test perplexity", digits: 3 }], rows: overallOrder.map((model) => ({ model, "test perplexity": e.overall[model] })) }
  const byBack: Table = {
    columns: [{ name: "tokens back" }, { name: "targets" }, ...models.map((name) => ({ name, digits: 3 }))],
    rows: e.buckets.map((b) => ({ "tokens back": bucketLabel(b.tokensBack), targets: b.n, ...b.perplexity })),
  }
  const searches: Table = {
    columns: [{ name: "search" }, { name: "trials" }, { name: "best params" }, { name: "validation perplexity", digits: 3 }],
    rows: [search, searchTopK].map((s) => ({ search: s.topK === null ? "full vocabulary" : `top ${s.topK}`, trials: s.trials.length, "best params": paramsText(s.best.params), "validation perplexity": s.best.perplexity })),
  }
  const sampleLines = samples.flatMap((s) => [`**${s.prompt}** (seed ${s.seed})`, "", `- blend: ${s.blend.replace(/\s+/g, " ")}`, `- big alone: ${s.big.replace(/\s+/g, " ")}`, ""])
  return [
    `# ${e.kind === "blend" ? "Blending" : "Proxy tuning"}: ${formula(e.kind)}`,
    "",
    `Validation perplexity of the members alone: ${Object.entries(search.members).map(([m, p]) => `${m} ${p.toFixed(3)}`).join(", ")}.`,
    "",
    markdown(searches).trimEnd(),
    "",
    `## Test perplexity (full context, ${e.positions} scored positions; blend at ${paramsText(e.params)})`,
    "",
    markdown(overall).trimEnd(),
    "",
    "## Perplexity by tokens back (every model sees BOS and the last n tokens)",
    "",
    markdown(byBack).trimEnd(),
    "",
    ...findings(e),
    "",
    "## Samples (blend beside the big model alone, same seeds)",
    "",
    ...sampleLines,
  ].join("\n")
}

export const reportBlend = stage({
  name: "report-blend",
  version: 2,
  params: Schema.Struct({}),
  inputs: { search: BlendSearchArtifact, searchTopK: BlendSearchArtifact, evaluation: BlendEvaluation, samples: BlendSamples },
  output: BlendReport,
  run: ({ inputs }) =>
    Effect.gen(function* () {
      const { search, searchTopK, evaluation: e, samples } = inputs
      const order = e.buckets.map((b) => bucketLabel(b.tokensBack))
      const tokensBackSvg = yield* renderSvg("perplexity-vs-tokens-back", {
        $schema: "https://vega.github.io/schema/vega-lite/v5.json",
        title: "Test perplexity against tokens of context",
        width: 420,
        height: 260,
        data: { values: e.buckets.flatMap((b) => Object.entries(b.perplexity).map(([model, perplexity]) => ({ back: bucketLabel(b.tokensBack), model, perplexity }))) },
        mark: { type: "line", point: true },
        encoding: {
          x: { field: "back", type: "ordinal", sort: order, title: "tokens back" },
          y: { field: "perplexity", type: "quantitative", scale: { type: "log" }, title: "perplexity" },
          color: { field: "model", type: "nominal" },
        },
      })
      const trialRows = [search, searchTopK].flatMap((s) => {
        const name = s.topK === null ? "full vocabulary" : `top ${s.topK}`
        let best = Infinity
        return s.trials.map((t, i) => ({ search: name, trial: i + 1, perplexity: t.perplexity, best: (best = Math.min(best, t.perplexity)) }))
      })
      const trialsSvg = yield* renderSvg("validation-perplexity-over-trials", {
        $schema: "https://vega.github.io/schema/vega-lite/v5.json",
        title: "Validation perplexity over search trials",
        width: 420,
        height: 260,
        data: { values: trialRows.filter((r) => Number.isFinite(r.perplexity)) },
        layer: [
          { mark: { type: "point", opacity: 0.5 }, encoding: { x: { field: "trial", type: "quantitative" }, y: { field: "perplexity", type: "quantitative", scale: { type: "log" } }, color: { field: "search", type: "nominal" } } },
          { mark: "line", encoding: { x: { field: "trial", type: "quantitative" }, y: { field: "best", type: "quantitative", title: "validation perplexity (line: best so far)" }, color: { field: "search", type: "nominal" } } },
        ],
      })
      return { markdown: reportMarkdown(search, searchTopK, e, samples), tokensBackSvg, trialsSvg }
    }),
})
