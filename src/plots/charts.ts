// The project's chart builders: Vega-Lite specs for the plots every family draws. Each returns a plain
// spec, so the same object is rendered to SVG in a stage (renderSvg) and interactively in the dashboard
// (vega in the page), and a chart looks the same in a run folder and in the browser.
import type { ChartSpec } from "./render.ts"

/** A recorded metric (as the run records keep it): a name, the step it was recorded at, and its value. */
export interface MetricPoint {
  readonly name: string
  readonly step: number | null
  readonly value: number
}

/** One line of a chart: a name for the legend and its (x, y) points. */
export interface Series {
  readonly name: string
  readonly points: ReadonlyArray<{ readonly x: number; readonly y: number }>
}

const WIDTH = 480
const HEIGHT = 260

// Vega-Lite drops rows whose y is not a number; a NaN or infinite metric is left out of the line
// rather than bending the scale to infinity (pipe show flags such values).
const rows = (series: ReadonlyArray<Series>) =>
  series.flatMap((s) => s.points.filter((p) => Number.isFinite(p.y) && Number.isFinite(p.x)).map((p) => ({ series: s.name, x: p.x, y: p.y })))

export interface LineChartOptions {
  readonly title: string
  readonly x: string
  readonly y: string
  /** a log scale for y (losses spanning decades) */
  readonly logY?: boolean
}

/**
 * Lines with a point mark at every value and a tooltip, one colour per series; in the page, the
 * x axis zooms and pans (a bound interval selection), and the legend names each series.
 */
export const lineChart = (series: ReadonlyArray<Series>, o: LineChartOptions): ChartSpec => ({
  $schema: "https://vega.github.io/schema/vega-lite/v6.json",
  title: o.title,
  width: WIDTH,
  height: HEIGHT,
  data: { values: rows(series) },
  // points only where a line is sparse enough to see them (validations, epochs), lines everywhere
  mark: { type: "line", point: { size: 24 }, tooltip: true },
  params: [{ name: "zoom", select: { type: "interval", encodings: ["x"] }, bind: "scales" }],
  encoding: {
    x: { field: "x", type: "quantitative", title: o.x },
    y: { field: "y", type: "quantitative", title: o.y, scale: o.logY === true ? { type: "log" } : { zero: false } },
    color: { field: "series", type: "nominal", title: null, sort: series.map((s) => s.name), legend: { labelLimit: 400 } },
  },
})

/** Metrics recorded with a step, one series per name, in step order. */
export const stepSeries = (metrics: ReadonlyArray<MetricPoint>, names: ReadonlyArray<string>): ReadonlyArray<Series> =>
  names.flatMap((name) => {
    const points = metrics
      .filter((m) => m.name === name && m.step !== null)
      .map((m) => ({ x: m.step!, y: m.value }))
      .sort((a, b) => a.x - b.x)
    return points.length === 0 ? [] : [{ name, points }]
  })

/**
 * The metrics a training curve shows: the per-step training loss and every validation metric
 * (`val_*`, recorded by the training driver at the optimizer step it validated after, step 0 being
 * the model before training). Per-step bookkeeping (lr, grad_norm, tokens_per_s) is left out.
 */
export const curveMetricNames = (metrics: ReadonlyArray<MetricPoint>): ReadonlyArray<string> => {
  const names = [...new Set(metrics.filter((m) => m.step !== null).map((m) => m.name))]
  return [...names.filter((n) => n === "loss"), ...names.filter((n) => n.startsWith("val_")).sort()]
}

/** Whether a node's metrics make a training curve: a training loss recorded per step. */
export const hasTrainingCurve = (metrics: ReadonlyArray<MetricPoint>): boolean => metrics.some((m) => m.name === "loss" && m.step !== null)

/** Loss and validation metric vs optimizer step, from a training node's recorded metrics. */
export const trainingCurve = (node: string, metrics: ReadonlyArray<MetricPoint>): ChartSpec =>
  lineChart(stepSeries(metrics, curveMetricNames(metrics)), { title: `${node}: training curve`, x: "step", y: "loss / validation metric" })

/** Bars grouped by category (e.g. variants), one bar per measure, values in [0, 1] shown as percent. */
export const rateBars = (
  rows: ReadonlyArray<{ readonly group: string; readonly measure: string; readonly value: number }>,
  o: { readonly title: string; readonly y: string },
): ChartSpec => ({
  $schema: "https://vega.github.io/schema/vega-lite/v6.json",
  title: o.title,
  width: { step: 28 },
  height: HEIGHT,
  data: { values: rows.map((r) => ({ ...r })) },
  mark: { type: "bar", tooltip: true },
  encoding: {
    x: { field: "group", type: "nominal", title: null, sort: [...new Set(rows.map((r) => r.group))], axis: { labelAngle: 0 } },
    xOffset: { field: "measure", type: "nominal", sort: [...new Set(rows.map((r) => r.measure))] },
    y: { field: "value", type: "quantitative", title: o.y, scale: { domain: [0, 1] }, axis: { format: ".0%" } },
    color: { field: "measure", type: "nominal", title: null, sort: [...new Set(rows.map((r) => r.measure))] },
    tooltip: [
      { field: "group", type: "nominal" },
      { field: "measure", type: "nominal" },
      { field: "value", type: "quantitative", title: o.y, format: ".1%" },
    ],
  },
})
