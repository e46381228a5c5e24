// One charting approach for the whole project: charts are Vega-Lite specs. The same spec renders to
// SVG here, headlessly in Node (vega's View with no renderer, then toSVG), and interactively in the
// dashboard's page, so a plot in a run folder and its live chart never disagree.
import * as Data from "effect/Data"
import * as Effect from "effect/Effect"
import type { TopLevelSpec } from "vega-lite"

export type ChartSpec = TopLevelSpec

/** A chart spec that Vega-Lite refuses, or that fails while rendering; `chart` names the plot. */
export class PlotError extends Data.TaggedError("PlotError")<{ readonly chart: string; readonly message: string }> {}

/** The chart as a standalone SVG document (fonts named, not embedded; no script, no external reference). */
export const renderSvg = (chart: string, spec: ChartSpec): Effect.Effect<string, PlotError> =>
  Effect.tryPromise({
    try: async () => {
      // loaded on the first chart, not with the module: every pipeline that wires a plot stage imports
      // this file, and vega + vega-lite would otherwise weigh on `pipe status` and every child process
      const [vega, { compile }] = await Promise.all([import("vega"), import("vega-lite")])
      const view = new vega.View(vega.parse(compile(spec).spec), { renderer: "none" })
      try {
        return await view.toSVG()
      } finally {
        view.finalize()
      }
    },
    catch: (e) => new PlotError({ chart, message: `plot ${chart}: ${e instanceof Error ? e.message : String(e)}` }),
  })
