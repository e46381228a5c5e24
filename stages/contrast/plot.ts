// Stage `divergence-plot`: the distribution of the texts' mean per-token KL(P_start || P_compare) as
// an SVG histogram (src/plots/charts.ts), the median text and the top-10% mean marked and their ratio
// in the title: the figure behind the "top 10% against the median" measure, showing whether the
// divergent texts are a tail (a few texts far out) or the whole distribution shifted. Drawn from a
// contrastive-decode output, so it is cached with the texts and redrawn only when they change.
import { Effect, Schema } from "effect"
import { Artifact, stage } from "../../src/engine/index.ts"
import { histogram } from "../../src/plots/charts.ts"
import { renderSvg } from "../../src/plots/render.ts"
import { ContrastTexts, type DivergenceSummary } from "./artifacts.ts"

export const DivergencePlot = Artifact.file("DivergencePlot")

export const MEDIAN_MARK = "median text"
export const TOP10_MARK = "top 10% of texts (mean)"

/** The plot's title: the pair, the two marked values and their ratio. */
export const divergenceTitle = (label: string, s: DivergenceSummary): string =>
  `${label}: top 10% ${s.top10TextKl.toFixed(2)} vs median ${s.medianTextKl.toFixed(2)} nats/token` +
  (s.top10OverMedian === null ? " (median 0: no ratio)" : ` = ${s.top10OverMedian.toFixed(2)}x`)

export const divergencePlot = stage({
  name: "divergence-plot",
  version: 1,
  /** label: what the pair is, for the title (e.g. "tiny-chat-s vs tiny-base-s") */
  params: Schema.Struct({ label: Schema.String }),
  inputs: { texts: ContrastTexts },
  output: DivergencePlot,
  run: ({ params, inputs }) =>
    Effect.map(
      renderSvg(
        "divergence",
        histogram(
          inputs.texts.texts.map((t) => t.klMean),
          {
            title: divergenceTitle(params.label, inputs.texts.summary),
            x: "mean KL(start ‖ compare) of a text, nats/token",
            marks: [
              { name: MEDIAN_MARK, value: inputs.texts.summary.medianTextKl },
              { name: TOP10_MARK, value: inputs.texts.summary.top10TextKl },
            ],
          },
        ),
      ),
      (svg) => new TextEncoder().encode(svg),
    ),
})
