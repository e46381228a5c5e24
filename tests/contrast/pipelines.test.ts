// pipelines/contrast.ts and pipelines/divergence-search.ts end to end through real `pipe`
// processes at reduced size on the shipped tiny family (the local assistant included):
// - contrast: its four pairs each writing their texts, texts sorted by divergence, the HTML view and
//   each pair's divergence histogram in the run folder, `pipe show` printing the coloured texts
//   (ANSI with FORCE_COLOR, plain with NO_COLOR);
// - the search for two cycles: every candidate accounted for, the rerun fully cached, a third
//   cycle reusing the first two, and a run killed during cycle 2 resuming at cycle 2.
import * as fs from "node:fs"
import * as path from "node:path"
import { afterAll, describe, expect, it } from "vitest"
import { Store } from "../../src/engine/index.ts"
import type { ContrastTexts, SearchBank } from "../../stages/contrast/artifacts.ts"
import { cli, sandbox, startCli, until } from "../engine/helpers.ts"

const repo = path.resolve(import.meta.dirname, "../..")
const sb = sandbox()
afterAll(() => fs.rmSync(sb.dir, { recursive: true, force: true }))

const seeds = path.join(sb.dir, "seeds.txt")
fs.writeFileSync(seeds, "What age is Kodis?\nWhat is Kodis's job?\nWhere does Mira live?\n")

const runDirOf = (stdout: string) => /records: (\S+)/.exec(stdout)![1]
const ran = (stdout: string) => [...stdout.matchAll(/^\S+ succeeded (\S+) /gm)].map((m) => m[1]).sort()

describe("pipelines/contrast.ts", () => {
  it("sorts the texts by divergence, writes the HTML view and shows the coloured texts", async () => {
    const pairs = ["contrastive-decode", "contrastive-decode-l", "contrastive-decode-chat", "contrastive-decode-blue"]
    const run = await cli(sb, [
      "run", path.join(repo, "pipelines/contrast.ts"), "--plain",
      "--set", `prompts.path=${seeds}`, "--set", `questions.path=${seeds}`,
      ...pairs.flatMap((n) => ["--set", `${n}.maxNewTokens=8`, "--set", `${n}.generationsPerPrompt=2`]),
    ])
    expect(run.stderr).toBe("")
    expect(run.code).toBe(0)
    const dir = runDirOf(run.stdout)
    const out = JSON.parse(fs.readFileSync(path.join(dir, "texts.json"), "utf8")) as ContrastTexts
    expect(out.texts).toHaveLength(6)
    for (const suffix of ["-l", "-chat", "-blue"]) expect((JSON.parse(fs.readFileSync(path.join(dir, `texts${suffix}.json`), "utf8")) as ContrastTexts).texts).toHaveLength(6)
    // each pair's divergence histogram beside its HTML, titled with its own summary
    for (const suffix of ["", "-l", "-chat", "-blue"]) {
      const texts = JSON.parse(fs.readFileSync(path.join(dir, `texts${suffix}.json`), "utf8")) as ContrastTexts
      const svg = fs.readFileSync(path.join(dir, `divergence${suffix}.svg`), "utf8")
      expect(svg.startsWith("<svg")).toBe(true)
      expect(svg).toContain(`top 10% ${texts.summary.top10TextKl.toFixed(2)} vs median ${texts.summary.medianTextKl.toFixed(2)} nats/token`)
    }
    const means = out.texts.map((t) => t.klMean)
    expect(means).toEqual([...means].sort((a, b) => b - a))
    const html = fs.readFileSync(path.join(dir, "contrast.html"), "utf8")
    expect(html.match(/class="tok"/g)).toHaveLength(out.texts.reduce((n, t) => n + t.tokens.length, 0))
    expect(run.stdout).toContain("| rank | KL mean |")

    const coloured = await cli(sb, ["show", "contrastive-decode"], { FORCE_COLOR: "1" })
    expect(coloured.stdout).toMatch(/\x1b\[48;2;\d+;\d+;\d+m/)
    const plain = await cli(sb, ["show", "contrastive-decode"], { NO_COLOR: "1" })
    expect(plain.stdout).not.toContain("\x1b[")
    expect(plain.stdout).toContain(`${out.texts[0].klMean.toFixed(3)} nats/token] ${out.texts[0].prompt}${out.texts[0].pieces.join("").replaceAll("\n", "\u21b5\n")}`)
  }, 300_000)
})

describe("pipelines/divergence-search.ts with the local assistant", () => {
  const file = path.join(repo, "pipelines/divergence-search.ts")
  const small = (seed: number) => [
    "--set", `seeds.path=${seeds}`,
    ...["seed-bank", "search"].flatMap((n) => ["--set", `${n}.maxNewTokens=8`, "--set", `${n}.generationsPerPrompt=1`, "--set", `${n}.seed=${seed}`]),
    "--set", "search.requests=3",
  ]
  const search = (cycles: number, seed: number) => cli(sb, ["run", file, "--plain", ...small(seed)], { PIPE_SEARCH_CYCLES: String(cycles) })

  it("two cycles end to end, then a cached rerun, then a third cycle on top of them", async () => {
    const first = await search(2, 0)
    expect(first.stderr).toBe("")
    expect(first.code).toBe(0)
    // (prompt-lines may be cached from the contrast test: the same seeds file)
    expect(ran(first.stdout).filter((n) => n !== "prompt-lines")).toEqual(["search", "search#2", "seed-bank"])
    const bank = JSON.parse(fs.readFileSync(path.join(runDirOf(first.stdout), "bank.json"), "utf8")) as SearchBank
    expect(bank.cycles.map((c) => c.cycle)).toEqual([1, 2])
    expect(bank.entries.filter((e) => e.cycle === 0)).toHaveLength(3)
    for (const c of bank.cycles) {
      expect(c.requests).toBe(3)
      // every parsed candidate is rejected for one reason or admitted
      const r = c.rejected
      expect(r.duplicate + r.length + r.criterion + r.similar + r.divergence + c.admitted).toBe(c.parsed)
      expect(bank.entries.filter((e) => e.cycle === c.cycle)).toHaveLength(c.admitted)
      // admitted prompts reach the threshold: the bank's median before the cycle
      for (const e of bank.entries.filter((x) => x.cycle === c.cycle)) expect(e.divergence).toBeGreaterThanOrEqual(c.threshold)
    }
    expect(bank.cycles[1].bankSize).toBe(bank.entries.length)
    expect(first.stdout).toContain("| cycle | requests | malformed replies | parsed |")

    const again = await search(2, 0)
    expect(again.code).toBe(0)
    expect(again.stdout).toMatch(/0 ran, 4 cached/)

    const longer = await search(3, 0)
    expect(longer.code).toBe(0)
    expect(ran(longer.stdout)).toEqual(["search#3"])
  }, 600_000)

  it("a run killed during cycle 2 resumes at cycle 2", async () => {
    const args = ["run", file, "--plain", ...small(7)]
    const killed = startCli(sb, args, { PIPE_SEARCH_CYCLES: "2" })
    const store = new Store(sb.cacheDir)
    try {
      await until("cycle 2 to start", () => store.executionsOf("search#2").some((e) => e.status === "running" && e.params.includes('"seed":7')), 300_000)
    } finally {
      store.close()
    }
    killed.child.kill("SIGKILL")
    expect((await killed.done).signal).toBe("SIGKILL")
    const resumed = await cli(sb, args, { PIPE_SEARCH_CYCLES: "2" })
    expect(resumed.code).toBe(0)
    expect(ran(resumed.stdout)).toEqual(["search#2"])
  }, 600_000)
})
