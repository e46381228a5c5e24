// Seeded pseudo-random numbers for the synthetic corpus. The generator must produce the same bytes
// for the same seed on every machine and Node version, so it cannot use Math.random; mulberry32 is
// a small 32-bit generator with a full 2^32 period, good enough for shuffling templates.
import { hash32, mulberry32 } from "../../core/random.ts"

/** A deterministic stream of random choices. */
export interface Rng {
  /** Uniform float in [0, 1). */
  readonly next: () => number
  /** Uniform integer in [lo, hi] (both inclusive). */
  readonly int: (lo: number, hi: number) => number
  readonly pick: <T>(xs: ReadonlyArray<T>) => T
  /** A new array with the elements of `xs` in random order (Fisher-Yates). */
  readonly shuffle: <T>(xs: ReadonlyArray<T>) => Array<T>
  /** `n` distinct elements of `xs` in random order. */
  readonly sample: <T>(xs: ReadonlyArray<T>, n: number) => Array<T>
}

export const makeRng = (seed: number): Rng => {
  const next = mulberry32(seed)
  const int = (lo: number, hi: number): number => lo + Math.floor(next() * (hi - lo + 1))
  const pick = <T>(xs: ReadonlyArray<T>): T => {
    if (xs.length === 0) throw new Error("pick from an empty list")
    return xs[Math.floor(next() * xs.length)]
  }
  const shuffle = <T>(xs: ReadonlyArray<T>): Array<T> => {
    const out = xs.slice()
    for (let i = out.length - 1; i > 0; i--) {
      const j = Math.floor(next() * (i + 1))
      ;[out[i], out[j]] = [out[j], out[i]]
    }
    return out
  }
  const sample = <T>(xs: ReadonlyArray<T>, n: number): Array<T> => shuffle(xs).slice(0, n)
  return { next, int, pick, shuffle, sample }
}

/** An independent stream derived from `seed` and a label, so adding draws in one part of the
 *  generator does not shift the random choices of another. (FNV-1a over the label.) */
export const deriveRng = (seed: number, label: string): Rng => makeRng(hash32(label, seed))
