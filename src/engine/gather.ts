// Fan-in over sweeps. `gather(node)` turns every instance of a swept call into one input of a
// downstream stage, each value with its sweep coordinates (param name -> value as written in the
// pipeline); `gather(node, { over: ["k"] })` gathers along some axes only and leaves the others as
// sweeps of the gathering node. The stage declares such an input with `gathered(ArtifactType)`.
//
// A gathered input's content hash is the hash of its points, (coordinates, artifact hash) pairs in
// canonical order: the gathering node's key does not depend on the order sweep values were declared
// in, adding a point reruns that instance and the gather only, and an instance rerun that yields
// identical bytes leaves the gather cached (early cutoff).
//
// A failed or skipped instance skips the gathering node like any other dependent: a cached table
// is complete or absent, never silently missing a point. `pipe table` shows the survivors of a run
// with the missing points marked.
import { Schema } from "effect"
import { Artifact, type ArtifactType, type JsonArtifact } from "./artifact.ts"
import { canonicalJson, hashJson } from "./hash.ts"
import type { Node } from "./stage.ts"

/** The type of a stage input that receives every instance of a swept node: `inputs: { points: gathered(Metrics) }`. */
export interface GatheredArtifact<E extends ArtifactType> {
  readonly _tag: "gathered"
  readonly element: E
}

export const gathered = <E extends ArtifactType>(element: E): GatheredArtifact<E> => ({ _tag: "gathered", element })

/**
 * The generic JSON type: an input of type `AnyJson` (or `gathered(AnyJson)`) takes any JSON node and
 * receives its encoded value, for stages that work on any JSON (the sweep table).
 */
export const AnyJson: JsonArtifact<"Json", unknown> = Artifact.json("Json", Schema.Unknown)

/** Sweep coordinates: param name -> value as written in the pipeline (`{ rank: 4, lr: 0.003 }`). */
export type Coordinates = Readonly<Record<string, unknown>>

/** One gathered instance as the consuming stage sees it. */
export interface Point<T> {
  readonly coords: Coordinates
  readonly value: T
}

export interface GatherOptions {
  /**
   * The swept params to gather along (bare, `rank`, or qualified by call name, `lora-train.rank`); a
   * zip is gathered as a whole. The node's other sweeps stay sweeps of the gathering node (one
   * gathering instance per value). Default: every sweep the node depends on.
   */
  readonly over?: ReadonlyArray<string>
}

/** `gather(node)`: a source for a `gathered(...)` input. */
export interface Gather<O extends ArtifactType> {
  readonly _tag: "Gather"
  readonly output: GatheredArtifact<O>
  readonly node: Node<O>
  readonly over: ReadonlyArray<string> | undefined
}

export const gather = <O extends ArtifactType>(node: Node<O>, options: GatherOptions = {}): Gather<O> => {
  if (options.over !== undefined && options.over.length === 0)
    throw new Error(`gather(${node.template.label}, { over: [] }): name at least one swept param (or leave "over" out to gather every sweep)`)
  return { _tag: "Gather", output: gathered(node.output), node, over: options.over }
}

/** A point as planned (the instance's node index) and as executed (its artifact hash). */
export interface PlannedPoint {
  readonly coords: Coordinates
  readonly node: number
}
export interface StoredPoint {
  readonly coords: Coordinates
  readonly hash: string
}

/** Numbers by value, anything else by its canonical JSON, so `rank: 4` comes before `rank: 16`. */
export const compareValues = (a: unknown, b: unknown): number => {
  if (typeof a === "number" && typeof b === "number") return a - b
  const [x, y] = [canonicalJson(a), canonicalJson(b)]
  return x < y ? -1 : x > y ? 1 : 0
}

/** The canonical order of points: by coordinate names sorted, then by each coordinate's value. */
const compareCoords = (a: Coordinates, b: Coordinates): number => {
  for (const name of [...new Set([...Object.keys(a), ...Object.keys(b)])].sort()) {
    const c = compareValues(a[name], b[name])
    if (c !== 0) return c
  }
  return 0
}

/** Points in canonical order, one per distinct coordinates (a sweep listing a value twice is one point). */
export const canonicalPoints = <P extends { readonly coords: Coordinates }>(points: ReadonlyArray<P>): ReadonlyArray<P> => {
  const seen = new Set<string>()
  return [...points]
    .sort((a, b) => compareCoords(a.coords, b.coords))
    .filter((p) => {
      const id = canonicalJson(p.coords)
      return !seen.has(id) && (seen.add(id), true)
    })
}

/** The content hash of a gathered input: its points in canonical order (see the top of this file). */
export const pointsHash = (points: ReadonlyArray<StoredPoint>): string => hashJson(points.map((p) => ({ coords: p.coords, hash: p.hash })))
