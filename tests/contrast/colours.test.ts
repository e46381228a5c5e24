// The token-colour views: in the HTML page each token's background follows its divergence on the
// stated scale (white at 0, red at the scale's top, the channels monotone in between), the hover
// text names its divergence and both models' top tokens, the page is self-contained and escapes
// text; the ANSI view colours the same tokens the same way.
import { describe, expect, it } from "vitest"
import type { ContrastText } from "../../stages/contrast/artifacts.ts"
import { ansiTexts, divergenceColour, htmlTexts, scaleMax } from "../../stages/contrast/colours.ts"

const text = (pieces: string[], kl: number[]): ContrastText => ({
  prompt: "Q: <b>?",
  promptIndex: 0,
  sample: 0,
  text: pieces.join(""),
  tokens: pieces.map((_, i) => i + 10),
  pieces,
  kl,
  klSum: kl.reduce((a, b) => a + b, 0),
  klMean: kl.reduce((a, b) => a + b, 0) / kl.length,
  logProbs: { start: kl.map(() => -0.5), compare: kl.map(() => -2) },
  perplexity: { start: 1.6, compare: 7.4 },
  top: { start: kl.map(() => [{ piece: " blue", logProb: Math.log(0.8) }]), compare: kl.map(() => [{ piece: " green", logProb: Math.log(0.6) }]) },
})

const spans = (html: string) =>
  [...html.matchAll(/<span class="tok" style="background:rgb\((\d+), (\d+), (\d+)\)" data-kl="([^"]+)" title="([^"]*)">([^<]*)<\/span>/g)].map((m) => ({
    rgb: [Number(m[1]), Number(m[2]), Number(m[3])],
    kl: Number(m[4]),
    title: m[5],
    piece: m[6],
  }))

describe("token colours", () => {
  // 100 tokens so the 99th percentile is the 99th smallest: KL 0, 0.01, ..., 0.99
  const kls = Array.from({ length: 100 }, (_, i) => i / 100)
  const texts = [text(kls.map((_, i) => ` t${i}`), kls)]

  it("the scale's top is the 99th percentile of the token KLs; white at 0, red at the top and beyond", () => {
    expect(scaleMax(texts)).toBe(0.98)
    expect(divergenceColour(0, 1)).toEqual([255, 255, 255])
    expect(divergenceColour(1, 1)).toEqual([215, 48, 39])
    expect(divergenceColour(7, 1)).toEqual([215, 48, 39])
    expect(divergenceColour(0.5, 1)).toEqual([254, 224, 139])
  })

  it("in the HTML page a token's colour follows its divergence", () => {
    const html = htmlTexts(texts, { title: "t" })
    const s = spans(html)
    expect(s).toHaveLength(100)
    expect(s.map((x) => x.kl)).toEqual(kls)
    // more divergence, never lighter: every channel is non-increasing along increasing KL, and strictly darker overall
    for (let i = 1; i < s.length; i++) {
      s[i].rgb.forEach((c, j) => expect(c).toBeLessThanOrEqual(s[i - 1].rgb[j]))
      expect(s[i].rgb.reduce((a, b) => a + b, 0)).toBeLessThanOrEqual(s[i - 1].rgb.reduce((a, b) => a + b, 0))
    }
    expect(s[0].rgb).toEqual([255, 255, 255])
    expect(s[98].rgb).toEqual([215, 48, 39])
    expect(s[99].rgb).toEqual([215, 48, 39])
    expect(s[20].rgb.reduce((a, b) => a + b)).toBeGreaterThan(s[80].rgb.reduce((a, b) => a + b))
    // the hover: divergence and both models' top tokens
    expect(s[42].title).toContain("KL(start || compare) = 0.4200 nats")
    expect(s[42].title).toContain("start top: &quot; blue&quot; 0.800")
    expect(s[42].title).toContain("compare top: &quot; green&quot; 0.600")
    expect(html).toContain("&ge; 0.980 nats")
  })

  it("the page is self-contained and escapes the texts", () => {
    const html = htmlTexts([text(["<script>", " & ok"], [0.1, 0.2])], { title: "a < b" })
    expect(html).not.toMatch(/<script|https?:\/\/|<link|@import|url\(/)
    expect(html).toContain("&lt;script&gt;")
    expect(html).toContain("Q: &lt;b&gt;?")
    expect(html).toContain("<title>a &lt; b</title>")
  })

  it("the ANSI view gives each token the HTML page's colour", () => {
    const ansi = ansiTexts(texts)
    const coloured = [...ansi.matchAll(/\x1b\[48;2;(\d+);(\d+);(\d+)m\x1b\[30m t(\d+)\x1b\[0m/g)]
    expect(coloured).toHaveLength(100)
    const html = spans(htmlTexts(texts, { title: "t" }))
    for (const m of coloured) expect([Number(m[1]), Number(m[2]), Number(m[3])]).toEqual(html[Number(m[4])].rgb)
    expect(ansiTexts(texts, { limit: 0 })).toContain("(1 more texts in the HTML view)")
  })
})
