// Per-token divergence as coloured text: ANSI (24-bit background colours) for the terminal and a
// self-contained HTML page (inline CSS, no scripts or fonts from elsewhere) for the run folder.
// Both use one colour scale: KL 0 is white, `max` is red, through yellow; linear in KL, so equal
// colour steps are equal nats. `max` is the 99th percentile of the token KLs shown (stated in the
// legend as "≥"): a few tokens with KL in the tens of nats would otherwise wash every other token out.
import type { ContrastText, DivergenceSummary, TopToken } from "./artifacts.ts"

export type Rgb = readonly [number, number, number]

const STOPS: ReadonlyArray<Rgb> = [
  [255, 255, 255],
  [254, 224, 139],
  [215, 48, 39],
]

/** The scale's colour of divergence `d` when `max` is the top of the scale (d beyond max is max's colour). */
export const divergenceColour = (d: number, max: number): Rgb => {
  const t = max > 0 && Number.isFinite(d) ? Math.min(Math.max(d / max, 0), 1) : 0
  const x = t * (STOPS.length - 1)
  const i = Math.min(Math.floor(x), STOPS.length - 2)
  const f = x - i
  return STOPS[i].map((c, j) => Math.round(c + (STOPS[i + 1][j] - c) * f)) as unknown as Rgb
}

/** The top of the colour scale for these texts: the 99th percentile of their token KLs (nearest rank). */
export const scaleMax = (texts: ReadonlyArray<ContrastText>): number => {
  const all = texts.flatMap((t) => t.kl).sort((a, b) => a - b)
  return all.length === 0 ? 0 : all[Math.min(all.length - 1, Math.ceil(0.99 * all.length) - 1)]
}

const visible = (piece: string) => piece.replaceAll("\n", "\u21b5\n")

/** The texts for a terminal: the prompt dimmed, each token on its divergence's colour, one text per paragraph. */
export const ansiTexts = (texts: ReadonlyArray<ContrastText>, options: { readonly limit?: number } = {}): string => {
  const max = scaleMax(texts)
  const reset = "\x1b[0m"
  const shown = texts.slice(0, options.limit ?? texts.length)
  const legend = [0, 0.25, 0.5, 0.75, 1].map((f) => `${bg(divergenceColour(f * max, max))}\x1b[30m ${f === 1 ? "≥" : ""}${(f * max).toFixed(2)} ${reset}`).join("")
  const lines = shown.map((t) => {
    const body = t.pieces.map((p, i) => `${bg(divergenceColour(t.kl[i], max))}\x1b[30m${visible(p)}${reset}`).join("")
    return `[${t.klMean.toFixed(3)} nats/token] \x1b[2m${t.prompt}${reset}${body}`
  })
  const more = texts.length > shown.length ? [`(${texts.length - shown.length} more texts in the HTML view)`] : []
  return [`KL(start || compare) per token, nats: ${legend}`, ...lines, ...more].join("\n\n")
}

const bg = ([r, g, b]: Rgb) => `\x1b[48;2;${r};${g};${b}m`
const css = ([r, g, b]: Rgb) => `rgb(${r}, ${g}, ${b})`

const escapeHtml = (s: string) => s.replaceAll("&", "&amp;").replaceAll("<", "&lt;").replaceAll(">", "&gt;").replaceAll('"', "&quot;")

const tops = (list: ReadonlyArray<TopToken>) => list.map((x) => `${JSON.stringify(x.piece)} ${Math.exp(x.logProb).toFixed(3)}`).join(", ")

/** A token's hover text: its divergence, its log-prob under each model and each model's top tokens. */
export const tokenTitle = (t: ContrastText, i: number): string =>
  [
    `${JSON.stringify(t.pieces[i])}  KL(start || compare) = ${t.kl[i].toFixed(4)} nats`,
    `log p: start ${t.logProbs.start[i].toFixed(3)}, compare ${t.logProbs.compare[i].toFixed(3)}`,
    ...(t.top.start[i].length > 0 ? [`start top: ${tops(t.top.start[i])}`, `compare top: ${tops(t.top.compare[i])}`] : []),
  ].join("\n")

/** A self-contained HTML page of the texts, with a colour legend; hovering a token shows tokenTitle. */
export const htmlTexts = (texts: ReadonlyArray<ContrastText>, options: { readonly title: string; readonly summary?: DivergenceSummary }): string => {
  const max = scaleMax(texts)
  const gradient = Array.from({ length: 11 }, (_, i) => `${css(divergenceColour((i / 10) * max, max))} ${i * 10}%`).join(", ")
  const s = options.summary
  const summary = s
    ? `<p class="summary">${s.texts} texts, ${s.tokens} tokens; mean KL ${s.meanKl.toFixed(4)} nats/token; median text ${s.medianTextKl.toFixed(4)}, top 10% of texts ${s.top10TextKl.toFixed(4)}${s.top10OverMedian === null ? "" : ` (${s.top10OverMedian.toFixed(2)}x the median)`}</p>`
    : ""
  const items = texts
    .map((t) => {
      const spans = t.pieces
        .map((p, i) => `<span class="tok" style="background:${css(divergenceColour(t.kl[i], max))}" data-kl="${t.kl[i]}" title="${escapeHtml(tokenTitle(t, i))}">${escapeHtml(p)}</span>`)
        .join("")
      return `<div class="text"><div class="meta">KL ${t.klMean.toFixed(4)} nats/token (sum ${t.klSum.toFixed(3)}), perplexity start ${t.perplexity.start.toFixed(2)}, compare ${t.perplexity.compare.toFixed(2)}; prompt ${t.promptIndex}, sample ${t.sample}</div><span class="prompt">${escapeHtml(t.prompt)}</span>${spans}</div>`
    })
    .join("\n")
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${escapeHtml(options.title)}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 60em; color: #222 }
.legend { display: flex; align-items: center; gap: .6em; margin: 1em 0 }
.bar { width: 20em; height: 1em; border: 1px solid #999; background: linear-gradient(to right, ${gradient}) }
.text { margin: 1.2em 0; font-family: ui-monospace, monospace; white-space: pre-wrap; line-height: 1.6 }
.meta { font-family: system-ui, sans-serif; font-size: .85em; color: #666 }
.prompt { color: #888 }
.tok { border-radius: 2px; cursor: help }
.tok:hover { outline: 1px solid #333 }
</style></head><body>
<h1>${escapeHtml(options.title)}</h1>
${summary}
<div class="legend"><span>KL(start &#8214; compare) per token:</span><span>0</span><span class="bar"></span><span>&ge; ${max.toFixed(3)} nats</span></div>
<p class="summary">Hover a token for its divergence, its log-probability under each model and each model's top tokens.</p>
${items}
</body></html>
`
}
