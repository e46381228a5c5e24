// Training curves as files: after a run, every node that recorded a per-step training loss (every
// stage that trains through src/runtime/train-loop.ts: lora-train, train-lm, and any trainer added
// later) gets runs/<id>/curves/<node>.svg, its loss and validation metric vs optimizer step. Drawn
// from the run records, for nodes computed in this run and for cached ones (from the execution that
// made the cached value), so a fully cached run still has them.
import { Effect } from "effect"
import { mkdirSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import { storageError, type StorageError } from "../engine/errors.ts"
import { fileSafe } from "../engine/publish.ts"
import type { NodeOutcome } from "../engine/scheduler.ts"
import type { Store } from "../engine/store.ts"
import { hasTrainingCurve, trainingCurve } from "./charts.ts"
import type { PlotError } from "./render.ts"

const MAX_NAME = 200

/** Writes the curves of the run's training nodes into `<runDir>/curves/`; returns the files written. */
export const writeTrainingCurves = (store: Store, nodes: ReadonlyArray<NodeOutcome>, runDir: string): Effect.Effect<ReadonlyArray<string>, PlotError | StorageError> => {
  const curves = nodes.flatMap((n) => {
    if ((n.status !== "succeeded" && n.status !== "cached") || n.key === undefined) return []
    const producer = store.cachedExecution(n.key)
    const metrics = producer === undefined ? [] : store.metricsOf(producer.id)
    return hasTrainingCurve(metrics) ? [{ n, metrics, producer: producer! }] : []
  })
  if (curves.length === 0) return Effect.succeed([])
  // vega loads only for a run that has a curve to draw: `pipe run` of anything else starts no faster without it
  return Effect.flatMap(
    Effect.promise(() => import("./render.ts")),
    ({ renderSvg }) =>
      Effect.forEach(curves, ({ n, metrics, producer }) =>
        Effect.gen(function* () {
          const svg = yield* renderSvg(`training curve of ${n.name}`, trainingCurve(n.name, metrics))
          const safe = fileSafe(n.name)
          const dir = join(runDir, "curves")
          const file = join(dir, `${safe.length <= MAX_NAME ? safe : `${safe.slice(0, MAX_NAME - 9)}~${producer.key.slice(0, 8)}`}.svg`)
          yield* Effect.try({
            try: () => {
              mkdirSync(dir, { recursive: true })
              writeFileSync(file, svg)
            },
            catch: (e) => storageError("writing", file, e),
          })
          return file
        }),
      ),
  )
}
