// `pipe serve` end to end in a real headless Chromium: real runs made here through the `pipe` command
// (the example pipeline, twice with a param changed; pipelines/blue.ts at reduced size on the shipped
// model; a gated training run that is still going when the page opens), one `pipe serve` process over
// them, and pages checked for what a person sees: the runs list, the DAG (one element per node, state
// colours), published results, a node's chart points, params, key and log, a live run updating
// without reload, a comparison, no console error; screenshots saved and checked not blank. Then the
// refusals: paths out of the run folder, foreign Host headers, methods other than GET.
import * as fs from "node:fs"
import { request } from "node:http"
import * as path from "node:path"
import type { Browser, Page } from "puppeteer-core"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { cli, fixture, sandbox, startCli, until } from "../engine/helpers.ts"
import { bluePipelineFile, smallBlue } from "../baking/blue-run.ts"
import { consoleErrors, launchBrowser, screenshotInk } from "./browser.ts"

const tinyChat = path.resolve(import.meta.dirname, "../../models/tiny-chat")
const sb = sandbox()
const gate = path.join(sb.dir, "gate")
const shots = path.join(sb.dir, "screenshots")
fs.mkdirSync(shots)

let server: ReturnType<typeof startCli>
let live: ReturnType<typeof startCli> | undefined
let base = ""
let browser: Browser
const errors: Array<string> = []

interface RunJson {
  readonly id: string
  readonly pipeline: string
  readonly status: string
  readonly nodes: ReadonlyArray<{ readonly name: string; readonly state: string; readonly progress: { value: number; total: number } | null }>
}

const getJson = async <T>(p: string): Promise<T> => {
  const r = await fetch(base + p)
  expect(r.status, `${p}: ${r.status}`).toBe(200)
  return (await r.json()) as T
}
const runs = () => getJson<ReadonlyArray<{ id: string; pipeline: string; status: string }>>("/api/runs")
const runOf = async (pipeline: string, nth = 0) => (await runs()).filter((r) => r.pipeline === pipeline).reverse()[nth].id

const open = async (url: string): Promise<Page> => {
  const page = await browser.newPage()
  consoleErrors(page, errors) // for the test that requires none
  await page.goto(base + url, { waitUntil: "networkidle0" })
  return page
}

const pass = (result: { code: number | null; stdout: string; stderr: string }) => {
  expect(result.code, `${result.stdout}\n${result.stderr}`).toBe(0)
  return result.stdout
}

// the colours the page's legend promises (style.css), as the browser computes them
const FILL = { succeeded: "rgb(22, 163, 74)", cached: "rgb(148, 163, 184)", running: "rgb(245, 158, 11)", failed: "rgb(220, 38, 38)" }

beforeAll(async () => {
  // blue (its model stages in child processes) takes a while; the example runs go on beside it
  const blue = cli(sb, ["run", bluePipelineFile, "--plain", ...[...smallBlue(tinyChat), "lora-train.epochs=2"].flatMap((s) => ["--set", s])])
  pass(await cli(sb, ["run", fixture("example.ts"), "--plain"]))
  pass(await cli(sb, ["run", fixture("example.ts"), "--plain", "--set", "modulo.mod=5"]))
  expect(pass(await blue)).toContain("training curves: 1 in")
  server = startCli(sb, ["serve", "--port", "0"])
  await until("pipe serve to listen", () => /http:\/\/127\.0\.0\.1:\d+/.test(server.output()), 60_000)
  base = server.output().match(/http:\/\/127\.0\.0\.1:\d+/)![0]
  browser = await launchBrowser()
}, 900_000) // minutes on a loaded 2-core machine: each of blue's model stages starts a process

afterAll(async () => {
  // a failed check must not leave the gated run waiting
  fs.writeFileSync(gate, "")
  live?.child.kill("SIGKILL")
  await browser?.close()
  server?.child.kill("SIGINT")
  await server?.done
  fs.rmSync(sb.dir, { recursive: true, force: true })
})

describe("pipe serve in a browser", () => {
  it("lists the runs, filterable", async () => {
    const page = await open("/")
    await page.waitForSelector("#runs tbody tr")
    const rows = await page.$$eval("#runs tbody tr", (trs) => trs.map((tr) => tr.textContent ?? ""))
    expect(rows).toHaveLength(3)
    expect(rows.filter((r) => r.includes("example"))).toHaveLength(2)
    expect(rows.filter((r) => r.includes("blue") && r.includes("succeeded"))).toHaveLength(1)
    await page.type("#filter", "blue")
    expect(await page.$$eval("#runs tbody tr", (trs) => trs.length)).toBe(1)
    expect(await screenshotInk(page, path.join(shots, "runs.png"))).toBeGreaterThan(0.01)
    await page.close()
  })

  it("draws a run's DAG with one element per node, coloured by state, sweep instances grouped", async () => {
    const id = await runOf("example", 1) // the second run: modulo and what is below it ran again, generate cached
    const run = await getJson<RunJson>(`/api/runs/${id}`)
    const page = await open(`/run/${id}`)
    await page.waitForSelector("#dag .dag-node")
    const drawn = await page.$$eval("#dag .dag-node", (gs) =>
      gs.map((g) => ({ node: g.getAttribute("data-node"), state: g.getAttribute("data-state"), fill: getComputedStyle(g.querySelector("rect")!).fill })),
    )
    expect(drawn.map((d) => d.node).sort()).toEqual(run.nodes.map((n) => n.name).sort())
    expect(drawn).toHaveLength(12)
    // the states the run recorded (its summary.json, read here, not through the server)
    const summary = JSON.parse(fs.readFileSync(path.join(sb.runsDir, id, "summary.json"), "utf8")) as { nodes: ReadonlyArray<{ name: string; status: keyof typeof FILL }> }
    const states = new Map(drawn.map((d) => [d.node, d]))
    for (const n of summary.nodes) expect(states.get(n.name), n.name).toMatchObject({ state: n.status, fill: FILL[n.status] })
    // generate is cached; modulo, with its new param, ran
    expect(summary.nodes.filter((n) => n.status === "cached").map((n) => n.name).sort()).toEqual(expect.arrayContaining(["generate[start=1]", "generate[start=100]"]))
    expect(summary.nodes.filter((n) => n.name.startsWith("modulo")).map((n) => n.status)).toEqual(["succeeded", "succeeded"])
    // 2 generate, 2 modulo, 4 sum, 4 render instances: one group box per call
    expect((await page.$$eval("#dag .dag-group", (gs) => gs.map((g) => g.getAttribute("data-group")))).sort()).toEqual(["generate", "modulo", "render", "sum"])
    expect(await screenshotInk(page, path.join(shots, "example-run.png"))).toBeGreaterThan(0.02)
    await page.close()
  })

  it("shows the blue run's published results: Markdown rendered, JSON as a table, SVG plots inline", async () => {
    const id = await runOf("blue")
    const page = await open(`/run/${id}`)
    await page.waitForSelector('[data-file="compare.md"] .markdown table')
    const markdownRows = await page.$$eval('[data-file="compare.md"] .markdown table:first-of-type tbody tr', (trs) => trs.map((t) => t.textContent ?? ""))
    expect(markdownRows.map((r) => r.trim().split(/\s+/)[0])).toEqual(["base", "prompted", "baked"])
    await page.waitForSelector('[data-file="compare.json"] table')
    expect(await page.$eval('[data-file="compare.json"]', (d) => d.textContent ?? "")).toContain("klReduction")
    for (const file of ["kl-per-epoch.svg", "behaviour.svg", "curves/lora-train.svg"]) {
      const size = await page.$eval(`[data-file="${file}"] img`, async (img) => {
        const i = img as HTMLImageElement
        await i.decode()
        return [i.naturalWidth, i.naturalHeight]
      })
      expect(size[0], file).toBeGreaterThan(100)
      expect(size[1], file).toBeGreaterThan(100)
    }
    // all nodes ran in this run
    expect(await page.$$eval("#dag .dag-node", (gs) => gs.every((g) => g.getAttribute("data-state") === "succeeded"))).toBe(true)
    expect(await screenshotInk(page, path.join(shots, "blue-run.png"))).toBeGreaterThan(0.02)
    await page.close()
  })

  it("shows a training node's params, key, log and its metrics as a chart with the recorded points", async () => {
    const id = await runOf("blue")
    const node = await getJson<{ lastMetrics: Record<string, unknown>; charts: ReadonlyArray<{ name: string }> }>(`/api/runs/${id}/node?name=lora-train`)
    expect(node.charts[0].name).toBe("training curve")
    const page = await open(`/node/${id}?name=lora-train`)
    await page.waitForSelector("#charts .chart svg")
    // one point per loss step plus one per validation (before training and after each of 2 epochs)
    const steps = await page.$$eval("#charts .chart:first-child [aria-roledescription='point']", (ps) => ps.map((p) => p.getAttribute("aria-label") ?? ""))
    const losses = steps.filter((l) => l.includes("series: loss"))
    const validations = steps.filter((l) => l.includes("series: val_kl"))
    expect(validations).toHaveLength(3)
    expect(losses.length).toBeGreaterThan(1)
    // the last validation is at the last optimizer step, on the loss's axis
    const lastStep = Math.max(...losses.map((l) => Number(l.match(/step: (\d+)/)![1])))
    expect(validations.some((v) => v.includes(`step: ${lastStep};`))).toBe(true)
    const text = await page.$eval("main", (m) => m.textContent ?? "")
    expect(text).toContain("rank")
    expect(text).toMatch(/[0-9a-f]{64}/) // the key
    await page.waitForFunction(() => (document.getElementById("log")?.textContent ?? "").includes("validation KL"))
    expect(await screenshotInk(page, path.join(shots, "lora-train.png"))).toBeGreaterThan(0.02)
    await page.close()
  })

  it("follows a live run without reloading: a running node and its progress, then its end", async () => {
    const before = fs.readdirSync(sb.runsDir).length
    live = startCli(sb, ["run", fixture("train.ts"), "--plain"], { PIPE_TEST_GATE: gate, PIPE_TEST_STEPS: "20" })
    await until("the training run to appear", () => fs.readdirSync(sb.runsDir).length === before + 1)
    const id = fs.readdirSync(sb.runsDir).sort().at(-1)!
    // waits at the gate half-way: running, 10 of 20 steps
    await until("train to report its progress", () => {
      const p = path.join(sb.runsDir, id, "progress.json")
      return fs.existsSync(p) && JSON.parse(fs.readFileSync(p, "utf8")).train?.value === 10
    }, 240_000) // a child process, slow to start on a loaded machine
    const page = await open(`/run/${id}`)
    await page.waitForSelector('#dag [data-node="train"][data-state="running"]')
    expect(await page.$eval('#dag [data-node="train"] rect', (r) => getComputedStyle(r).fill)).toBe(FILL.running)
    expect(await page.$eval('#dag [data-node="train"]', (g) => g.textContent ?? "")).toContain("10/20 steps")
    expect(await page.$eval('#dag [data-node="inspect"]', (g) => g.getAttribute("data-state"))).toBe("pending")
    await page.evaluate(() => ((window as unknown as { marker: number }).marker = 1))
    await screenshotInk(page, path.join(shots, "live-running.png"))
    fs.writeFileSync(gate, "")
    pass(await live.done)
    await page.waitForSelector('#dag [data-node="inspect"][data-state="succeeded"]', { timeout: 30_000 })
    expect(await page.$eval('#dag [data-node="train"]', (g) => g.getAttribute("data-state"))).toBe("succeeded")
    expect(await page.evaluate(() => (window as unknown as { marker?: number }).marker)).toBe(1) // the same page, not reloaded
    await page.close()
  }, 360_000)

  it("compares two runs: the params that differ", async () => {
    const [a, b] = [await runOf("example", 0), await runOf("example", 1)]
    const page = await open(`/compare?a=${a}&b=${b}`)
    await page.waitForSelector("[data-compare]")
    const changed = await page.$$eval("[data-compare]", (ss) => ss.map((s) => ({ node: s.getAttribute("data-compare"), rows: [...s.querySelectorAll("tr.differs")].map((r) => r.textContent) })))
    expect(changed.map((c) => c.node).sort()).toEqual(["modulo[generate.start=100]", "modulo[generate.start=1]"].sort())
    for (const c of changed) expect(c.rows).toEqual(["mod75"])
    await page.close()
  })

  it("picks two sweep points of a run on its page and compares them", async () => {
    const id = await runOf("example", 0)
    const page = await open(`/run/${id}`)
    await page.waitForSelector("#compare-points [data-call]")
    // one picker row per swept call, listing its instances
    expect((await page.$$eval("#compare-points [data-call]", (rows) => rows.map((r) => r.getAttribute("data-call")))).sort()).toEqual(["generate", "modulo", "render", "sum"])
    const sums = await page.$$eval('[data-call="sum"] select[data-side="a"] option', (os) => os.map((o) => (o as HTMLOptionElement).value))
    expect(sums).toHaveLength(4)
    const [a, b] = [sums.find((n) => n.includes("start=1,") && n.includes("scale=1"))!, sums.find((n) => n.includes("start=1,") && n.includes("scale=2"))!]
    await page.select('[data-call="sum"] select[data-side="a"]', a)
    await page.select('[data-call="sum"] select[data-side="b"]', b)
    await Promise.all([page.waitForNavigation({ waitUntil: "networkidle0" }), page.click('[data-call="sum"] a.compare-points')])
    await page.waitForSelector("[data-compare]")
    const sections = await page.$$eval("[data-compare]", (ss) => ss.map((s) => ({ node: s.getAttribute("data-compare"), rows: [...s.querySelectorAll("tr.differs")].map((r) => r.textContent) })))
    expect(sections).toEqual([{ node: `${a} vs ${b}`, rows: ["scale12"] }])
    await page.close()
  })

  it("had no console error on any page", () => {
    expect(errors).toEqual([])
    for (const f of fs.readdirSync(shots)) expect(fs.statSync(path.join(shots, f)).size, f).toBeGreaterThan(5_000)
  })
})

/** A raw GET (no URL normalisation by a client), with an optional Host header; resolves to status and body. */
const raw = (p: string, headers: Record<string, string> = {}, method = "GET") =>
  new Promise<{ status: number; body: string }>((resolve, reject) => {
    const u = new URL(base)
    const req = request({ host: u.hostname, port: u.port, path: p, method, headers }, (res) => {
      let body = ""
      res.on("data", (d) => (body += d))
      res.on("end", () => resolve({ status: res.statusCode!, body }))
    })
    req.on("error", reject)
    req.end()
  })

describe("pipe serve refuses", () => {
  it("paths out of a run's folder, links out of it, foreign hosts and writes", async () => {
    const id = await runOf("blue")
    expect((await raw(`/api/runs/${id}/files/compare.md`)).status).toBe(200)
    for (const p of [`..%2F..%2Fcache%2Fcache.sqlite`, `%2e%2e/%2e%2e/cache/cache.sqlite`, `%2Fetc%2Fpasswd`, `logs%2F..%2F..%2F..%2Fgate`]) {
      const r = await raw(`/api/runs/${id}/files/${p}`)
      expect([403, 404], `${p}: ${r.status} ${r.body}`).toContain(r.status)
      expect(r.body).not.toContain("SQLite format")
    }
    expect((await raw(`/api/runs/${id}/files/..%2F..%2Fcache%2Fcache.sqlite`)).status).toBe(403)
    expect((await raw(`/api/runs/..%2F..%2Fcache/files/cache.sqlite`)).status).toBe(404)
    fs.symlinkSync(path.join(sb.cacheDir, "cache.sqlite"), path.join(sb.runsDir, id, "escape.md"))
    const link = await raw(`/api/runs/${id}/files/escape.md`)
    expect(link.status).toBe(403)
    expect(link.body).toContain("link out of the run's folder")
    const foreign = await raw("/api/runs", { host: "attacker.example" })
    expect(foreign.status).toBe(403)
    for (const method of ["POST", "PUT", "DELETE"]) expect((await raw("/api/runs", {}, method)).status).toBe(404)
  })
})
