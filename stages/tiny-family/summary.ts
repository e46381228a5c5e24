// Stage: the issue-14 bars table over the four models of the family (held-out perplexity, chat-format
// accuracy, behaviour rates, random-pick collapse), as Markdown and the numbers it is made of.
import { Effect, Schema } from "effect"
import { Artifact, stage } from "../../src/engine/index.ts"
import { percent } from "../../src/engine/table.ts"
import { behaviourNames } from "../../src/text/behaviours.ts"
import { ChatEvaluation } from "../tiny-chat/evaluate-chat.ts"
import { bars } from "../tiny-chat/write-model.ts"
import { PickEvaluation } from "./evaluate-picks.ts"
import { TextEvaluation } from "./evaluate-text.ts"

export const FamilySummary = Artifact.json(
  "FamilySummary",
  Schema.Struct({
    markdown: Schema.String,
    perplexityGain: Schema.Number,
    checks: Schema.Array(Schema.Struct({ bar: Schema.String, measured: Schema.String, met: Schema.Boolean })),
  }),
)

const names = ["baseS", "baseL", "chatS", "chatL"] as const
const titles = { baseS: "tiny-base-s", baseL: "tiny-base-l", chatS: "tiny-chat-s", chatL: "tiny-chat-l" }
const inputsOf = Object.fromEntries(
  names.flatMap((n) => [
    [`${n}Text`, TextEvaluation],
    [`${n}Chat`, ChatEvaluation],
    [`${n}Picks`, PickEvaluation],
  ]),
) as {
  readonly [K in (typeof names)[number] as `${K}Text`]: typeof TextEvaluation
} & { readonly [K in (typeof names)[number] as `${K}Chat`]: typeof ChatEvaluation } & { readonly [K in (typeof names)[number] as `${K}Picks`]: typeof PickEvaluation }

export const familySummary = stage({
  name: "family-summary",
  version: 2, // 2: "no valid answer" for a model that never answered a pick request
  params: Schema.Struct({}),
  inputs: inputsOf,
  output: FamilySummary,
  run: ({ inputs }) =>
    Effect.sync(() => {
      const text = (n: (typeof names)[number]) => inputs[`${n}Text`]
      const chat = (n: (typeof names)[number]) => inputs[`${n}Chat`]
      const picks = (n: (typeof names)[number]) => inputs[`${n}Picks`]
      const gain = 1 - text("baseL").overall.perplexity / text("baseS").overall.perplexity
      const acc = (n: (typeof names)[number]) => chat(n).accuracy.rate
      const behaviourOk = (n: "chatS" | "chatL") => behaviourNames.every((b) => chat(n).withPrompt[b].rate >= bars.withPrompt && chat(n).withoutPrompt[b].rate <= bars.withoutPrompt)
      const checks = [
        { bar: "held-out perplexity: tiny-base-l at least 15% lower than tiny-base-s", measured: `${text("baseL").overall.perplexity.toFixed(3)} vs ${text("baseS").overall.perplexity.toFixed(3)} (${percent(gain)} lower)`, met: gain >= 0.15 },
        { bar: `chat accuracy: tiny-chat-l > tiny-chat-s >= ${percent(bars.accuracy)}`, measured: `${percent(acc("chatL"))} > ${percent(acc("chatS"))}`, met: acc("chatL") > acc("chatS") && acc("chatS") >= bars.accuracy },
        { bar: "base models clearly below their chat models in chat format", measured: `base-s ${percent(acc("baseS"))} vs chat-s ${percent(acc("chatS"))}; base-l ${percent(acc("baseL"))} vs chat-l ${percent(acc("chatL"))}`, met: acc("baseS") < acc("chatS") - 0.2 && acc("baseL") < acc("chatL") - 0.2 },
        { bar: `behaviours of both chat models >= ${percent(bars.withPrompt)} with / <= ${percent(bars.withoutPrompt)} without`, measured: (["chatS", "chatL"] as const).map((n) => `${titles[n]} ${behaviourOk(n) ? "met" : "not met"}`).join(", "), met: behaviourOk("chatS") && behaviourOk("chatL") },
      ]
      const row = (n: (typeof names)[number]) => {
        const c = chat(n)
        const p = picks(n).kinds
        return `| ${titles[n]} | ${text(n).overall.perplexity.toFixed(3)} | ${percent(c.accuracy.rate)} | ${behaviourNames.map((b) => `${percent(c.withPrompt[b].rate)} / ${percent(c.withoutPrompt[b].rate)}`).join(" | ")} | ${Object.entries(p).map(([k, r]) => (r.valid === 0 ? `${k}: no valid answer` : `${k}: ${r.top} ${percent(r.topShare)}, ${r.entropyBits.toFixed(2)} bits`)).join("; ")} |`
      }
      const markdown = `| model | held-out perplexity | chat accuracy (greedy) | ${behaviourNames.map((b) => `${b} with / without`).join(" | ")} | random picks (top answer, entropy) |
| --- | --- | --- | ${behaviourNames.map(() => "---").join(" | ")} | --- |
${names.map(row).join("\n")}

| bar | measured | met |
| --- | --- | --- |
${checks.map((c) => `| ${c.bar} | ${c.measured} | ${c.met ? "yes" : "**no**"} |`).join("\n")}
`
      return { markdown, perplexityGain: gain, checks }
    }),
})
