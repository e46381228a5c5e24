// Shared helpers for the engine tests: temp cache/runs dirs, runs through the API and through real
// `pipe` processes, and the trace file the toy stages append to.
import { Effect } from "effect"
import { spawn, type ChildProcess } from "node:child_process"
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join, resolve } from "node:path"
import { runPipeline, silentReporter, Store } from "../../src/engine/index.ts"

export const fixture = (name: string) => (name.startsWith("/") ? name : resolve(import.meta.dirname, "fixtures", name))

/**
 * Writes a pipeline file into the sandbox (a fresh module, so paths baked into it are this test's).
 * `body` may import from "@stages", "@engine" and "effect" (all resolved to this checkout).
 */
export const writePipeline = (sb: Sandbox, name: string, body: string): string => {
  const file = join(sb.dir, name)
  writeFileSync(join(sb.dir, "package.json"), '{ "type": "module" }\n') // as in the repository: .ts files are ESM
  writeFileSync(
    file,
    body
      .replaceAll("@stages", resolve(import.meta.dirname, "fixtures/stages.ts"))
      .replaceAll("@engine", resolve(import.meta.dirname, "../../src/engine/index.ts"))
      .replaceAll('"effect"', JSON.stringify(resolve(repo, "node_modules/effect/dist/index.js"))),
  )
  return file
}
const repo = resolve(import.meta.dirname, "../..")

export interface Sandbox {
  readonly dir: string
  readonly cacheDir: string
  readonly runsDir: string
  readonly trace: string
  readonly env: NodeJS.ProcessEnv
  /** Lines the toy stages appended (one per execution). */
  readonly traced: () => ReadonlyArray<string>
}

export const sandbox = (): Sandbox => {
  const dir = mkdtempSync(join(tmpdir(), "pipe-test-"))
  const trace = join(dir, "trace")
  const env = { ...process.env, PIPE_CACHE_DIR: join(dir, "cache"), PIPE_RUNS_DIR: join(dir, "runs"), PIPE_TEST_TRACE: trace }
  return {
    dir,
    cacheDir: join(dir, "cache"),
    runsDir: join(dir, "runs"),
    trace,
    env,
    traced: () => (existsSync(trace) ? readFileSync(trace, "utf8").split("\n").filter((l) => l.length > 0) : []),
  }
}

/** Runs a pipeline in this process through the public API (fast: no process start-up). */
export const runApi = async (
  sb: Sandbox,
  file: string,
  options: { overrides?: ReadonlyArray<string>; rerun?: ReadonlyArray<string>; failFast?: boolean; jobs?: number; gpus?: ReadonlyArray<number> } = {},
) => {
  const saved = { ...process.env }
  Object.assign(process.env, sb.env)
  const store = new Store(sb.cacheDir)
  try {
    return await Effect.runPromise(runPipeline({ store, pipelineFile: fixture(file), runsDir: sb.runsDir, reporter: silentReporter, ...options }))
  } finally {
    store.close()
    for (const k of Object.keys(sb.env)) if (saved[k] === undefined) delete process.env[k]
    Object.assign(process.env, saved)
  }
}

export interface CliResult {
  readonly code: number | null
  readonly signal: NodeJS.Signals | null
  readonly stdout: string
  readonly stderr: string
}

/** Starts a real `pipe` process (bin/pipe.js, as `npx pipe` does: the compiled CLI) in the sandbox directory. */
export const startCli = (sb: Sandbox, args: ReadonlyArray<string>, env: NodeJS.ProcessEnv = {}) => {
  const child: ChildProcess = spawn(process.execPath, [join(repo, "bin/pipe.js"), ...args], {
    cwd: repo,
    env: { ...sb.env, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  })
  let stdout = ""
  let stderr = ""
  child.stdout!.on("data", (d) => (stdout += d))
  child.stderr!.on("data", (d) => (stderr += d))
  const done = new Promise<CliResult>((resolve) => child.on("close", (code, signal) => resolve({ code, signal, stdout, stderr })))
  return { child, done, output: () => stdout }
}

export const cli = (sb: Sandbox, args: ReadonlyArray<string>, env: NodeJS.ProcessEnv = {}) => startCli(sb, args, env).done

/** Polls until `check` holds (no fixed sleeps: tests wait for events, not for time). */
export const until = async (what: string, check: () => boolean, limitMs = 60_000) => {
  const start = Date.now()
  while (!check()) {
    if (Date.now() - start > limitMs) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 25))
  }
}
