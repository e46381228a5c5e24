// The procedural pathfinding generator (stages/soft-prompts/pathfinding.ts) on fixed seeds: every
// grid is solvable, the optimal length is the BFS distance, checked against an independent
// Bellman-Ford relaxation over the free cells and a hand-made grid; paths are valid, end on the
// goal, and their length ratio is what the condition says; generation is a function of the seed.
import { describe, expect, it } from "vitest"
import { distancesTo, type Grid, type Move, gridText, movesText, parseMoves, type PathfindingOptions, pathTasks, scorePath } from "../../stages/soft-prompts/pathfinding.ts"

const options: PathfindingOptions = { size: 5, wallDensity: 0.3, minOptimal: 3, maxMoves: 14, detourFraction: 0.5, greed: 0.6 }

/** Shortest start-goal distance by relaxing every free cell's 4 neighbours until nothing changes (no queue: independent of BFS). */
const relaxedDistance = (g: Grid): number => {
  const n = g.size
  const dist = new Array<number>(n * n).fill(Infinity)
  dist[g.start.row * n + g.start.col] = 0
  for (let changed = true; changed; ) {
    changed = false
    for (let r = 0; r < n; r++)
      for (let c = 0; c < n; c++) {
        if (g.walls[r * n + c]) continue
        for (const [dr, dc] of [[1, 0], [-1, 0], [0, 1], [0, -1]]) {
          const rr = r + dr
          const cc = c + dc
          if (rr < 0 || rr >= n || cc < 0 || cc >= n || g.walls[rr * n + cc]) continue
          if (dist[rr * n + cc] + 1 < dist[r * n + c]) {
            dist[r * n + c] = dist[rr * n + cc] + 1
            changed = true
          }
        }
      }
  }
  return dist[g.goal.row * n + g.goal.col]
}

describe("pathfinding tasks", () => {
  for (const seed of [0, 1, 7]) {
    it(`seed ${seed}: solvable grids, optimal = shortest distance, valid paths with their length ratio`, () => {
      const tasks = pathTasks(options, 200, seed)
      expect(tasks).toHaveLength(200)
      for (const t of tasks) {
        expect(relaxedDistance(t.grid)).toBe(t.optimal)
        expect(t.optimal).toBeGreaterThanOrEqual(options.minOptimal)
        expect(t.path.length).toBeGreaterThanOrEqual(t.optimal)
        expect(t.path.length).toBeLessThanOrEqual(options.maxMoves)
        const s = scorePath(t.grid, t.optimal, t.path)
        expect(s.problem).toBeNull()
        expect(s.valid).toBe(true)
        expect(t.ratio).toBeCloseTo(t.optimal / t.path.length, 12)
        expect(s.ratio).toBeCloseTo(t.ratio, 12)
      }
      // both kinds of path occur, in about the asked share
      const detours = tasks.filter((t) => t.ratio < 1).length
      expect(detours).toBeGreaterThan(60)
      expect(detours).toBeLessThan(140)
      expect(pathTasks(options, 200, seed)).toEqual(tasks)
    })
  }

  it("a hand-made grid: distance around a wall, invalid paths named", () => {
    // S . # . .
    // . . # . .
    // . . # G .
    // . . . . .
    // . . . . .
    const walls = Array<boolean>(25).fill(false)
    for (const r of [0, 1, 2]) walls[r * 5 + 2] = true
    const g: Grid = { size: 5, walls, start: { row: 0, col: 0 }, goal: { row: 2, col: 3 } }
    expect(gridText(g)).toBe("S.#..\n..#..\n..#G.\n.....\n.....\n")
    // down 3 to row 3, right 3 to col 3, up 1: 7
    expect(distancesTo(g, g.goal)[0]).toBe(7)
    expect(relaxedDistance(g)).toBe(7)
    const best = parseMoves(movesText(["south", "south", "south", "east", "east", "east", "north"]))
    expect(best.rest).toBe("")
    expect(scorePath(g, 7, best.path)).toEqual({ valid: true, legal: true, length: 7, ratio: 1, problem: null })
    expect(scorePath(g, 7, ["east", "east"]).problem).toBe("move 2 (east) runs into a wall")
    expect(scorePath(g, 7, ["north"]).problem).toBe("move 1 (north) runs into the edge")
    expect(scorePath(g, 7, ["south"]).problem).toBe("the path does not end on the goal")
    expect([["east", "east"], ["north"], ["south"]].map((p) => scorePath(g, 7, p as Move[]).legal)).toEqual([false, false, true])
    expect(parseMoves(" south east blue north")).toEqual({ path: ["south", "east"], rest: "blue north" })
  })
})
