// Stage `bake-plots`: the baking experiment's two plots as SVG, drawn headlessly with the project's
// chart builders (src/plots/charts.ts) so they exist without a browser and go into the run folder:
//   kl-per-epoch.svg  lora-train's validation KL(prompted ‖ base + LoRA) after every epoch (epoch 0:
//                     the base model), against the finished comparison's KL of each variant;
//   behaviour.svg     behaviour rate and factual accuracy of every variant of the comparison.
// The numbers come from the adapter's train_summary (its validation history, part of its content) and
// the comparison, so the plots are cached with them and redrawn only when they change.
import { Effect, Schema } from "effect"
import { decodeArtifact, stage } from "../../src/engine/index.ts"
import { lineChart, rateBars } from "../../src/plots/charts.ts"
import { renderSvg } from "../../src/plots/render.ts"
import { readHeader } from "../../src/core/safetensors.ts"
import { BakeComparison, BakedAdapter } from "./artifacts.ts"
import { Artifact } from "../../src/engine/index.ts"

export const BakePlots = Artifact.json("BakePlots", Schema.Struct({ klPerEpoch: Schema.String, behaviour: Schema.String }))
export type BakePlots = typeof BakePlots.schema.Type

/** What bake-plots reads of lora-train's train_summary metadata: the validation KL before training and after each epoch. */
const TrainSummary = Schema.fromJsonString(Schema.Struct({ valKl: Schema.Array(Schema.Number).check(Schema.isMinLength(1)) }))

export const bakePlots = stage({
  name: "bake-plots",
  version: 1,
  params: Schema.Struct({}),
  inputs: { comparison: BakeComparison, adapter: BakedAdapter },
  output: BakePlots,
  run: ({ inputs }) =>
    Effect.gen(function* () {
      const { comparison: c, adapter } = inputs
      const header = yield* readHeader(adapter.path)
      const summary = yield* decodeArtifact(TrainSummary, adapter.path, "a lora-train adapter with its train_summary", header.metadata.train_summary)
      const ref = c.reference.name
      const training = { name: "baked during training (validation)", points: summary.valKl.map((y, epoch) => ({ x: epoch, y })) }
      // each evaluated variant's KL as a flat line over the epochs, for scale
      const last = summary.valKl.length - 1
      const levels = c.rows
        .filter((r) => r.variant !== ref)
        .map((r) => ({ name: `${r.variant} (held-out evaluation)`, points: [{ x: 0, y: r.kl }, { x: Math.max(last, 1), y: r.kl }] }))
      const klPerEpoch = yield* renderSvg(
        "kl-per-epoch",
        lineChart([training, ...levels], { title: `KL(${ref} ‖ model) per epoch`, x: "epoch", y: "KL, nats/token" }),
      )
      const behaviour = yield* renderSvg(
        "behaviour",
        rateBars(
          c.rows.flatMap((r) => [
            { group: r.variant, measure: "behaviour rate", value: r.behaviour.rate },
            { group: r.variant, measure: "accuracy", value: r.accuracy.rate },
          ]),
          { title: `Behaviour and accuracy: ${c.systemPrompt}`, y: "rate" },
        ),
      )
      return { klPerEpoch, behaviour }
    }),
})
