// A Tree-structured Parzen Estimator (Bergstra et al. 2011), the sampler Optuna uses by default
// and the one seed 003 tuned its blend with: minimise a black-box objective over a box of
// continuous parameters (each on a linear or a log scale).
//
//   suggestTpe(space, history, options) -> the next point to try
//
// Stateless: the suggestion is a function of (space, history, seed) only. The generator for trial
// n is seeded with hash32("tpe", seed + n), so a search that is killed and restarted with the
// recorded history suggests exactly what the uninterrupted search would have.
//
// Algorithm (Optuna's independent TPE): the first `startup` trials are uniform in the box (in log
// space for log parameters). After that the trials are split into the best ceil(gamma * n) ("good")
// and the rest; per dimension each group becomes a Parzen mixture of truncated Gaussians — one at
// every observation, with bandwidth the larger gap to its sorted neighbours (clipped to
// [range / min(100, n + 1), range]), plus a prior Gaussian at the middle with sigma = range — and
// `candidates` points drawn from the good mixtures are ranked by log l(x) - log g(x) summed over
// dimensions; the best one is suggested.
import { hash32, mulberry32 } from "./random.ts"

export interface Dimension {
  readonly name: string
  readonly low: number
  readonly high: number
  /** search log(x) uniformly instead of x (for scales such as temperatures); needs low > 0 */
  readonly log?: boolean
}

export interface Trial {
  readonly params: Readonly<Record<string, number>>
  readonly value: number
}

export interface TpeOptions {
  readonly seed: number
  /** random trials before the model is used (default 10) */
  readonly startup?: number
  /** candidates drawn from the good mixture per suggestion (default 24) */
  readonly candidates?: number
  /** share of trials counted as good (default 0.1, at most 25 trials: Optuna's; 0.25 converged
   *  an order of magnitude less close on tests/blend/tpe.test.ts's objective) */
  readonly gamma?: number
}

/** The problem with a search space, or undefined. */
export const spaceProblem = (space: ReadonlyArray<Dimension>): string | undefined => {
  if (space.length === 0) return "the search space has no dimension"
  for (const d of space) {
    if (!(Number.isFinite(d.low) && Number.isFinite(d.high) && d.low < d.high)) return `dimension ${d.name}: needs finite low < high, got [${d.low}, ${d.high}]`
    if (d.log && !(d.low > 0)) return `dimension ${d.name}: a log-scale dimension needs low > 0, got ${d.low}`
  }
  const names = space.map((d) => d.name)
  const twice = names.find((n, i) => names.indexOf(n) !== i)
  return twice === undefined ? undefined : `dimension ${twice} is given twice`
}

const toInternal = (d: Dimension, x: number) => (d.log ? Math.log(x) : x)
const fromInternal = (d: Dimension, u: number) => (d.log ? Math.exp(u) : u)
const bounds = (d: Dimension) => [toInternal(d, d.low), toInternal(d, d.high)] as const

// Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7), enough for ranking candidates
const erf = (x: number) => {
  const s = Math.sign(x)
  const a = Math.abs(x)
  const t = 1 / (1 + 0.3275911 * a)
  const y = 1 - ((((1.061405429 * t - 1.453152027) * t + 1.421413741) * t - 0.284496735) * t + 0.254829592) * t * Math.exp(-a * a)
  return s * y
}
const normalCdf = (z: number) => 0.5 * (1 + erf(z / Math.SQRT2))

interface Mixture {
  readonly mus: number[]
  readonly sigmas: number[]
  readonly lo: number
  readonly hi: number
}

/** The Parzen mixture of `points` (internal coordinates) on [lo, hi], prior included; equal weights. */
const parzen = (points: ReadonlyArray<number>, lo: number, hi: number, nTotal: number): Mixture => {
  const range = hi - lo
  const mus = [...points, (lo + hi) / 2]
  const sorted = [...points].sort((a, b) => a - b)
  const minSigma = range / Math.min(100, nTotal + 1)
  const sigmas = points.map((p) => {
    const i = sorted.indexOf(p)
    const left = p - (i > 0 ? sorted[i - 1] : lo)
    const right = (i < sorted.length - 1 ? sorted[i + 1] : hi) - p
    return Math.min(Math.max(left, right, minSigma), range)
  })
  return { mus, sigmas: [...sigmas, range], lo, hi }
}

const logDensity = (m: Mixture, x: number) => {
  let total = 0
  for (let i = 0; i < m.mus.length; i++) {
    const s = m.sigmas[i]
    const z = (x - m.mus[i]) / s
    const mass = normalCdf((m.hi - m.mus[i]) / s) - normalCdf((m.lo - m.mus[i]) / s)
    total += Math.exp(-0.5 * z * z) / (s * Math.sqrt(2 * Math.PI) * Math.max(mass, 1e-12))
  }
  return Math.log(total / m.mus.length)
}

const sample = (m: Mixture, rand: () => number) => {
  const i = Math.min(m.mus.length - 1, Math.floor(rand() * m.mus.length))
  // rejection from the chosen truncated Gaussian; every component keeps at least a tail inside
  for (let tries = 0; tries < 100; tries++) {
    const normal = Math.sqrt(-2 * Math.log(1 - rand())) * Math.cos(2 * Math.PI * rand())
    const x = m.mus[i] + m.sigmas[i] * normal
    if (x >= m.lo && x <= m.hi) return x
  }
  return Math.min(m.hi, Math.max(m.lo, m.mus[i]))
}

/** The next point to evaluate, given every finished trial (see the file header). */
export const suggestTpe = (space: ReadonlyArray<Dimension>, history: ReadonlyArray<Trial>, options: TpeOptions): Record<string, number> => {
  const problem = spaceProblem(space)
  if (problem) throw new Error(`TPE: ${problem}`)
  const rand = mulberry32(hash32("tpe", options.seed + history.length))
  // a non-finite value (a diverged point) ranks last
  const done = history.filter((t) => space.every((d) => Number.isFinite(t.params[d.name])))
  if (done.length < (options.startup ?? 10))
    return Object.fromEntries(space.map((d) => {
      const [lo, hi] = bounds(d)
      return [d.name, fromInternal(d, lo + rand() * (hi - lo))]
    }))
  const ranked = [...done].sort((a, b) => (Number.isFinite(a.value) ? a.value : Infinity) - (Number.isFinite(b.value) ? b.value : Infinity))
  const nGood = Math.min(25, Math.max(1, Math.ceil((options.gamma ?? 0.1) * ranked.length)))
  const models = space.map((d) => {
    const [lo, hi] = bounds(d)
    const at = (ts: ReadonlyArray<Trial>) => ts.map((t) => Math.min(hi, Math.max(lo, toInternal(d, t.params[d.name]))))
    return { good: parzen(at(ranked.slice(0, nGood)), lo, hi, ranked.length), bad: parzen(at(ranked.slice(nGood)), lo, hi, ranked.length) }
  })
  let best: number[] = []
  let bestScore = -Infinity
  for (let c = 0; c < (options.candidates ?? 24); c++) {
    const x = models.map((m) => sample(m.good, rand))
    const score = models.reduce((s, m, i) => s + logDensity(m.good, x[i]) - logDensity(m.bad, x[i]), 0)
    if (score > bestScore) [best, bestScore] = [x, score]
  }
  return Object.fromEntries(space.map((d, i) => [d.name, fromInternal(d, best[i])]))
}
