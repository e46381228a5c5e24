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

/** A bin of a histogram: [lo, hi) (the last bin includes hi) and how many values fell in it. */
export interface Bin {
  readonly lo: number
  readonly hi: number
  readonly count: number
}

/**
 * Equal-width bins over [min, max] of the finite values: on a log scale (edges equally spaced in
 * log10) when every value is positive and they span more than `logRange` (a decade by default), so
 * a long right tail does not squash the bulk into the first bar. Bin count sqrt(n), within [5, 30].
 * All values equal: one bin around them.
 */
export const histogramBins = (values: ReadonlyArray<number>, o: { readonly logRange?: number } = {}): { readonly bins: ReadonlyArray<Bin>; readonly log: boolean } => {
  const xs = values.filter(Number.isFinite)
  if (xs.length === 0) return { bins: [], log: false }
  const min = Math.min(...xs)
  const max = Math.max(...xs)
  if (min === max) {
    const half = min === 0 ? 0.5 : Math.abs(min) * 0.1
    return { bins: [{ lo: min - half, hi: max + half, count: xs.length }], log: false }
  }
  const log = min > 0 && max / min > (o.logRange ?? 10)
  const n = Math.min(30, Math.max(5, Math.ceil(Math.sqrt(xs.length))))
  const [a, b] = log ? [Math.log10(min), Math.log10(max)] : [min, max]
  const edge = (i: number) => (i === 0 ? min : i === n ? max : log ? 10 ** (a + ((b - a) * i) / n) : a + ((b - a) * i) / n)
  const counts = new Array<number>(n).fill(0)
  for (const x of xs) {
    const t = ((log ? Math.log10(x) : x) - a) / (b - a)
    counts[Math.min(n - 1, Math.floor(t * n))]++
  }
  return { bins: counts.map((count, i) => ({ lo: edge(i), hi: edge(i + 1), count })), log }
}

export interface HistogramOptions {
  readonly title: string
  readonly x: string
  /** values marked by a vertical rule across the bars (e.g. the median), named in the legend */
  readonly marks?: ReadonlyArray<{ readonly name: string; readonly value: number }>
  readonly logRange?: number
}

/**
 * The distribution of the values as bars over their bins (histogramBins; the x axis is log when the
 * bins are), each marked value a rule in its own colour. The x domain is exactly the bins' range
 * (no rounding outward), widened to take in a marked value outside it.
 */
export const histogram = (values: ReadonlyArray<number>, o: HistogramOptions): ChartSpec => {
  const { bins, log } = histogramBins(values, o.logRange === undefined ? {} : { logRange: o.logRange })
  const marks = (o.marks ?? []).filter((m) => Number.isFinite(m.value) && (!log || m.value > 0))
  const ends = [...bins.flatMap((b) => [b.lo, b.hi]), ...marks.map((m) => m.value)]
  const domain = ends.length === 0 ? [0, 1] : [Math.min(...ends), Math.max(...ends)]
  // (Vega-Lite warns that zero does not apply to a log scale, so it is set on the linear one only)
  const scale = log ? ({ type: "log", domain, nice: false } as const) : ({ type: "linear", domain, nice: false, zero: false } as const)
  const x = { type: "quantitative", title: o.x, scale } as const
  return {
    $schema: "https://vega.github.io/schema/vega-lite/v6.json",
    title: o.title,
    width: WIDTH,
    height: HEIGHT,
    layer: [
      {
        data: { values: bins.map((b) => ({ ...b })) },
        mark: { type: "rect", tooltip: true, stroke: "white", strokeWidth: 0.5 },
        encoding: {
          x: { field: "lo", ...x },
          x2: { field: "hi" },
          y: { field: "count", type: "quantitative", title: "count" },
          tooltip: [
            { field: "lo", type: "quantitative", title: "from", format: ".3g" },
            { field: "hi", type: "quantitative", title: "to", format: ".3g" },
            { field: "count", type: "quantitative" },
          ],
        },
      },
      {
        data: { values: marks.map((m) => ({ ...m })) },
        mark: { type: "rule", strokeWidth: 2, strokeDash: [6, 3], tooltip: true },
        encoding: {
          x: { field: "value", ...x },
          color: { field: "name", type: "nominal", title: null, sort: marks.map((m) => m.name), scale: { range: ["#d62728", "#2ca02c", "#9467bd", "#ff7f0e"] } },
          tooltip: [
            { field: "name", type: "nominal", title: "mark" },
            { field: "value", type: "quantitative", title: o.x, format: ".4g" },
          ],
        },
      },
    ],
  }
}
