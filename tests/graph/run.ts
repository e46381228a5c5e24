// Test helper: serialize a graph, run it once on the CPU and return the outputs.
import { Effect } from "effect"
import type * as ort from "onnxruntime-node"
import { type Graph, serialize } from "../../src/graph/index.ts"
import { createSession, runSession, type SessionOptions } from "../../src/runtime/session.ts"
import { mulberry32 } from "../../src/core/random.ts"

export const runGraph = (g: Graph, feeds: Record<string, ort.Tensor>, options: SessionOptions = {}): Promise<Record<string, ort.Tensor>> =>
  Effect.runPromise(Effect.flatMap(createSession(serialize(g), options), (s) => runSession(s, feeds)))

/** Deterministic pseudo-random numbers in [-1, 1) (mulberry32) so failures reproduce. */
export const rng = (seed: number) => {
  const next = mulberry32(seed)
  return (): number => next() * 2 - 1
}

export const randArray = (n: number, seed: number, scale = 1): number[] => {
  const r = rng(seed)
  return Array.from({ length: n }, () => r() * scale)
}
