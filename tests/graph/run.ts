// Test helper: serialize a graph, run it once on the CPU and return the outputs.
import { Effect } from "effect"
import type * as ort from "onnxruntime-node"
import { type Graph, serialize } from "../../src/graph/index.ts"
import { createSession, runSession, type SessionOptions } from "../../src/runtime/session.ts"

export const runGraph = (g: Graph, feeds: Record<string, ort.Tensor>, options: SessionOptions = {}): Promise<Record<string, ort.Tensor>> =>
  Effect.runPromise(Effect.flatMap(createSession(serialize(g), options), (s) => runSession(s, feeds)))

/** Deterministic pseudo-random numbers in [-1, 1) (mulberry32) so failures reproduce. */
export const rng = (seed: number) => {
  let a = seed >>> 0
  return (): number => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return (((t ^ (t >>> 14)) >>> 0) / 4294967296) * 2 - 1
  }
}

export const randArray = (n: number, seed: number, scale = 1): number[] => {
  const r = rng(seed)
  return Array.from({ length: n }, () => r() * scale)
}
