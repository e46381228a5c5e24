// Counter-based random numbers inside a graph: element i of a tensor gets hash(i, seed), with the
// seed a graph value fed at run time. The same seed gives the same numbers in any session, so a
// training run resumed in a new session draws what the uninterrupted run drew (onnxruntime's
// Dropout and RandomUniform keep their generator state in the session and restart with it).
//
// The hash works in the field of integers modulo the prime P = 2^31 - 1, held in int64: every
// product of two residues stays below 2^62, so no op relies on integer overflow, and only Add,
// Mul and Mod are used (int64 kernels in the CPU and CUDA providers). A linear step places
// (index, seed) in the field, then three rounds x -> x^2 + c mod P scramble it: squaring modulo a
// prime mixes every bit of x into every bit of the result. tests/graph/random.test.ts checks the
// histogram, neighbour and seed-to-seed independence against binomial bounds.
import type { Graph } from "./builder.ts"
import type { Value } from "./ir.ts"

/** The hash's values lie in [0, PRIME). */
export const PRIME = 2 ** 31 - 1

const ROUNDS = [0x297a2d39, 0x68e31da4, 0x1b56c4e9]

/** int64 values in [0, PRIME), one per element of `like` (same shape), a function of (element
 * index, seed) only; `seed` is an int64 scalar in [0, 2^31). */
export const hashBits = (g: Graph, like: Value, seed: Value): Value => {
  const int = (v: number) => g.scalar(v, "int64")
  const modP = (v: Value) => g.node("Mod", [v, int(PRIME)], { fmod: 0 }, [{ dtype: "int64", shape: v.shape }])[0]
  const index = g.range(int(0), g.size(like), int(1))
  let x = modP(g.add(g.add(g.mul(index, int(0x5bd1e995)), g.mul(seed, int(0x2c1b3c6d))), int(12345)))
  for (const c of ROUNDS) x = modP(g.add(g.mul(x, x), int(c)))
  return g.reshapeLike(x, like)
}

/**
 * Inverted dropout with a fed seed: x * keep / (1 - p), keep[i] = hash(i, seed) >= p * PRIME.
 * `seed` is an int64 scalar in [0, 2^31); other seeds (per step, per layer) give independent
 * masks. The mask is a constant to autodiff (it comes from integers).
 */
export const dropout = (g: Graph, x: Value, p: number, seed: Value): Value => {
  if (!(p >= 0 && p < 1)) throw new Error(`dropout: rate must be in [0, 1), got ${p}`)
  const keep = g.greaterOrEqual(hashBits(g, x, seed), g.scalar(Math.ceil(p * PRIME), "int64"))
  return g.mul(x, g.mul(g.cast(keep, x.dtype), g.scalarLike(1 / (1 - p), x)))
}
