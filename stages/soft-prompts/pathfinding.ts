// The procedural pathfinding task of seed 002, made small enough for a 1M-parameter model: a
// square grid with walls, a start S and a goal G, written as text one row per line ("#" wall,
// "." free), followed by the moves of a path from S to G (" north", " south", " east", " west":
// single tokens of the shipped tokenizer, and of any byte-level BPE that knows the words).
//
// Every grid is solvable (BFS from S reaches G); its optimal length is the BFS distance. Paths are
// drawn at several qualities: optimal (a shortest path, ties broken at random) or a detour (a walk
// that steps towards the goal with probability `greed` and anywhere legal otherwise, kept when it
// reaches G within maxMoves). A path's quality is its length ratio optimal / length in (0, 1]: the
// condition a conditional soft prompt receives, so at test time asking for ratio 1 should give
// shorter paths than asking for 0.5.
import { mulberry32 } from "../../src/core/random.ts"

export type Move = "north" | "south" | "east" | "west"
export const moves: ReadonlyArray<Move> = ["north", "south", "east", "west"]
const delta: Record<Move, readonly [number, number]> = { north: [-1, 0], south: [1, 0], east: [0, 1], west: [0, -1] }

export interface Cell {
  readonly row: number
  readonly col: number
}

export interface Grid {
  readonly size: number
  /** row-major, true = wall */
  readonly walls: ReadonlyArray<boolean>
  readonly start: Cell
  readonly goal: Cell
}

export interface PathTask {
  readonly grid: Grid
  /** BFS distance from start to goal */
  readonly optimal: number
  readonly path: ReadonlyArray<Move>
  /** optimal / path.length */
  readonly ratio: number
}

export interface PathfindingOptions {
  /** grid side */
  readonly size: number
  /** probability that a cell other than S and G is a wall */
  readonly wallDensity: number
  /** minimum BFS distance from S to G (short tasks leave no room for detours) */
  readonly minOptimal: number
  /** longest path kept */
  readonly maxMoves: number
  /** share of tasks whose path is a detour rather than optimal */
  readonly detourFraction: number
  /** detour walks step towards the goal with this probability */
  readonly greed: number
}

const inside = (g: Grid, c: Cell) => c.row >= 0 && c.row < g.size && c.col >= 0 && c.col < g.size
const free = (g: Grid, c: Cell) => inside(g, c) && !g.walls[c.row * g.size + c.col]
const step = (c: Cell, m: Move): Cell => ({ row: c.row + delta[m][0], col: c.col + delta[m][1] })

/** BFS distance from every cell to `to` (-1 where unreachable or a wall). */
export const distancesTo = (g: Grid, to: Cell): number[] => {
  const dist = new Array<number>(g.size * g.size).fill(-1)
  dist[to.row * g.size + to.col] = 0
  const queue: Cell[] = [to]
  for (let i = 0; i < queue.length; i++) {
    const c = queue[i]
    for (const m of moves) {
      const n = step(c, m)
      if (free(g, n) && dist[n.row * g.size + n.col] < 0) {
        dist[n.row * g.size + n.col] = dist[c.row * g.size + c.col] + 1
        queue.push(n)
      }
    }
  }
  return dist
}

/** The grid as text: one line per row, each ending in a newline. */
export const gridText = (g: Grid): string => {
  let s = ""
  for (let r = 0; r < g.size; r++) {
    for (let c = 0; c < g.size; c++)
      s += r === g.start.row && c === g.start.col ? "S" : r === g.goal.row && c === g.goal.col ? "G" : g.walls[r * g.size + c] ? "#" : "."
    s += "\n"
  }
  return s
}

export const movesText = (path: ReadonlyArray<Move>): string => path.map((m) => ` ${m}`).join("")

export interface PathScore {
  /** every move stays on free cells and the path ends on the goal */
  readonly valid: boolean
  /** every move stays on free cells (the goal reached or not) */
  readonly legal: boolean
  readonly length: number
  /** optimal / length for a valid path, 0 otherwise */
  readonly ratio: number
  /** why it is invalid */
  readonly problem: string | null
}

/** Scores a sequence of moves on a grid; `optimal` is its BFS distance. */
export const scorePath = (g: Grid, optimal: number, path: ReadonlyArray<Move>): PathScore => {
  let at = g.start
  for (const [i, m] of path.entries()) {
    const next = step(at, m)
    if (!free(g, next)) return { valid: false, legal: false, length: path.length, ratio: 0, problem: `move ${i + 1} (${m}) runs into ${inside(g, next) ? "a wall" : "the edge"}` }
    at = next
  }
  if (at.row !== g.goal.row || at.col !== g.goal.col) return { valid: false, legal: true, length: path.length, ratio: 0, problem: "the path does not end on the goal" }
  return { valid: true, legal: true, length: path.length, ratio: path.length === 0 ? 1 : optimal / path.length, problem: null }
}

/**
 * Moves from generated text (" north east ..."): the words up to the first that is not a move;
 * `rest` is what came after them, empty when the text was moves only.
 */
export const parseMoves = (text: string): { readonly path: Move[]; readonly rest: string } => {
  const words = text.trim().split(/\s+/).filter((w) => w.length > 0)
  const path: Move[] = []
  for (const [i, w] of words.entries()) {
    if (!(moves as ReadonlyArray<string>).includes(w)) return { path, rest: words.slice(i).join(" ") }
    path.push(w as Move)
  }
  return { path, rest: "" }
}

const randomGrid = (o: PathfindingOptions, rand: () => number): Grid => {
  const n = o.size * o.size
  const s = Math.floor(rand() * n)
  let t = Math.floor(rand() * (n - 1))
  if (t >= s) t++
  const walls = Array.from({ length: n }, (_, i) => i !== s && i !== t && rand() < o.wallDensity)
  return { size: o.size, walls, start: { row: Math.floor(s / o.size), col: s % o.size }, goal: { row: Math.floor(t / o.size), col: t % o.size } }
}

/** A shortest path, choosing at random among the moves that go one step closer. */
const shortestPath = (g: Grid, dist: number[], rand: () => number): Move[] => {
  const path: Move[] = []
  let at = g.start
  while (dist[at.row * g.size + at.col] > 0) {
    const d = dist[at.row * g.size + at.col]
    const closer = moves.filter((m) => {
      const n = step(at, m)
      return free(g, n) && dist[n.row * g.size + n.col] === d - 1
    })
    const m = closer[Math.floor(rand() * closer.length)]
    path.push(m)
    at = step(at, m)
  }
  return path
}

/** A walk to the goal longer than optimal, or undefined when it runs past maxMoves. */
const detourPath = (g: Grid, dist: number[], o: PathfindingOptions, rand: () => number): Move[] | undefined => {
  const path: Move[] = []
  let at = g.start
  while (dist[at.row * g.size + at.col] > 0) {
    if (path.length >= o.maxMoves) return undefined
    const legal = moves.filter((m) => free(g, step(at, m)))
    const d = dist[at.row * g.size + at.col]
    const closer = legal.filter((m) => {
      const n = step(at, m)
      return dist[n.row * g.size + n.col] === d - 1
    })
    const pool = rand() < o.greed ? closer : legal
    const m = pool[Math.floor(rand() * pool.length)]
    path.push(m)
    at = step(at, m)
  }
  return path.length > dist[g.start.row * g.size + g.start.col] ? path : undefined
}

/** `count` tasks from `seed`, a pure function of (options, count, seed). */
export const pathTasks = (o: PathfindingOptions, count: number, seed: number): PathTask[] => {
  const rand = mulberry32(seed)
  const out: PathTask[] = []
  while (out.length < count) {
    const grid = randomGrid(o, rand)
    const dist = distancesTo(grid, grid.goal)
    const optimal = dist[grid.start.row * grid.size + grid.start.col]
    if (optimal < o.minOptimal || optimal > o.maxMoves) continue
    const path = rand() < o.detourFraction ? detourPath(grid, dist, o, rand) : shortestPath(grid, dist, rand)
    if (path === undefined) continue
    out.push({ grid, optimal, path, ratio: optimal / path.length })
  }
  return out
}
