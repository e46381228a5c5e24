// Rollouts of pathfinding tasks: the model writes the moves after a grid, and each path is scored
// (pathfinding.ts scorePath). Greedy rollouts give the model's single most likely path; sampled ones
// (temperature 1, several per grid) show the distribution of its paths, which is where a condition
// asking for detours shows: a detour is a random walk with no most likely move of its own (at every
// step a move towards the goal stays the likeliest), so greedy decoding turns every detour into a
// shortest path. Shared by soft-prompt-evaluate and the navigator's own evaluation.
import { Effect, Schema } from "effect"
import { hash32 } from "../../src/core/random.ts"
import type { Generator } from "../../src/models/generate.ts"
import type { RolloutTask } from "./examples.ts"
import { parseMoves, scorePath } from "./pathfinding.ts"

export const Decoding = Schema.Struct({
  /** 0: greedy (one rollout per grid, `samples` ignored) */
  temperature: Schema.Finite.check(Schema.isGreaterThanOrEqualTo(0)),
  /** rollouts per grid when sampling */
  samples: Schema.Int.check(Schema.isGreaterThan(0)),
})
export type Decoding = typeof Decoding.Type

export const RolloutStats = Schema.Struct({
  /** sampling temperature, 0 for greedy */
  temperature: Schema.Number,
  tasks: Schema.Int,
  rollouts: Schema.Int,
  /** share of rollouts that are valid paths */
  validity: Schema.Number,
  /** share of rollouts with at least one move and every move on a free cell, the goal reached or not */
  legal: Schema.Number,
  /** mean optimal / length over the valid rollouts (0 when none is valid) */
  lengthRatio: Schema.Number,
  /** mean moves per rollout */
  meanMoves: Schema.Number,
  /** mean optimal (BFS) length of the tasks: meanMoves / meanOptimal is the length asked for's effect even where no rollout is valid */
  meanOptimal: Schema.Number,
})
export type RolloutStats = typeof RolloutStats.Type

/** How many rollouts a decoding makes per grid. */
export const rolloutsPerTask = (d: Decoding) => (d.temperature === 0 ? 1 : d.samples)

/**
 * Rolls out every task under `decoding` (seeded per task and sample, so a rerun draws the same
 * paths) and scores the paths: a rollout is valid when its text is moves only, they stay on free
 * cells, end on the goal and the model stopped by itself. `condition` goes with every request (a
 * conditional soft prompt's input). Also returns the first rollout's text, for the log.
 */
export const rollOut = (
  generator: Generator,
  tasks: ReadonlyArray<RolloutTask>,
  decoding: Decoding,
  options: { readonly maxNewTokens: number; readonly batchSize: number; readonly seed: number; readonly condition?: ReadonlyArray<number> },
) =>
  Effect.gen(function* () {
    const per = rolloutsPerTask(decoding)
    const requests = tasks.flatMap((t, i) =>
      Array.from({ length: per }, (_, s) => ({
        prompt: t.prompt,
        maxNewTokens: options.maxNewTokens,
        temperature: decoding.temperature,
        seed: hash32(`rollout ${i} ${s}`, options.seed),
        ...(options.condition === undefined ? {} : { condition: options.condition }),
      })),
    )
    const outs = yield* generator.generate(requests, { batchSize: options.batchSize })
    const scores = outs.map((o, r) => {
      const task = tasks[Math.floor(r / per)]
      const { path, rest } = parseMoves(o.text ?? "")
      const s = scorePath(task, task.optimal, path)
      return { ...s, valid: s.valid && rest === "" && o.finishReason === "stop_token" }
    })
    const valid = scores.filter((s) => s.valid)
    const stats: RolloutStats = {
      temperature: decoding.temperature,
      tasks: tasks.length,
      rollouts: scores.length,
      validity: valid.length / scores.length,
      // an empty rollout stays on free cells trivially: only paths with moves count
      legal: scores.filter((s) => s.legal && s.length > 0).length / scores.length,
      lengthRatio: valid.length === 0 ? 0 : valid.reduce((a, s) => a + s.ratio, 0) / valid.length,
      meanMoves: scores.reduce((a, s) => a + s.length, 0) / scores.length,
      meanOptimal: tasks.reduce((a, t) => a + t.optimal, 0) / tasks.length,
    }
    return { stats, first: { text: outs[0]?.text, finishReason: outs[0]?.finishReason } }
  })

/** How the paths were decoded, as logs, reports and READMEs name it: "greedy", "sampled, T = 1, 4 per grid". */
export const decodingLabel = (s: RolloutStats) => (s.temperature === 0 ? "greedy" : `sampled, T = ${s.temperature}, ${s.rollouts / s.tasks} per grid`)

/** One log line of a rollout's figures. */
export const describeRollouts = (s: RolloutStats) =>
  `${decodingLabel(s)}: ${(100 * s.validity).toFixed(1)}% valid paths, ${(100 * s.legal).toFixed(1)}% legal, ` +
  `mean length ratio ${s.lengthRatio.toFixed(3)}, ${s.meanMoves.toFixed(1)} moves (optimal ${s.meanOptimal.toFixed(1)}) over ${s.rollouts} rollouts`
