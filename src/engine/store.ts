// The cache directory: SQLite (WAL) records plus content-addressed payload files.
//   <cache>/cache.sqlite       artifacts, cache (key -> artifact), executions, runs, metrics, claims, external_files
//   <cache>/objects/ab/<hash>  file payloads, named by the sha256 of their bytes
//   <cache>/tmp/<pid>.<n>      payloads being written (removed at start when their process is gone)
//   <cache>/work/<key>/        scratch and checkpoint directory of a node being computed
// Everything here is synchronous: better-sqlite3 calls take microseconds, and a sync API keeps
// transactions obvious. Callers wrap it in Effect where it matters.
import Database from "better-sqlite3"
import { closeSync, existsSync, fsyncSync, mkdirSync, openSync, readdirSync, renameSync, rmSync, statSync, unlinkSync, writeSync, copyFileSync, lstatSync } from "node:fs"
import { hostname } from "node:os"
import { join, relative, resolve } from "node:path"
import { CorruptArtifact, ExternalInputError } from "./errors.ts"
import { hashFile, sha256 } from "./hash.ts"

export type StorageKind = "json" | "file" | "tensors"

export interface StoredArtifact {
  readonly hash: string
  readonly kind: StorageKind
  readonly type: string
  readonly size: number
  readonly json: string | null
}

export interface ExecutionRow {
  readonly id: number
  readonly run_id: string
  readonly key: string
  readonly recipe: string
  readonly node: string
  readonly stage: string
  readonly version: number
  readonly source_hash: string | null
  readonly params: string
  readonly unkeyed_params: string
  readonly inputs: string
  readonly output: string | null
  readonly status: string
  readonly started_at: number
  readonly ended_at: number | null
  readonly device: string
  readonly error: string | null
  readonly log_path: string
}

export interface RunRow {
  readonly id: string
  readonly pipeline: string
  readonly args: string
  readonly status: string
  readonly started_at: number
  readonly ended_at: number | null
  readonly summary: string | null
}

/**
 * When a claim may be taken over. On this host: when its process is gone (or silent for 10 minutes, in
 * case its pid was reused), so a stage that blocks its event loop for a while is not computed twice.
 * From another host sharing the cache directory: when its heartbeat is older than 15 s.
 */
export const CLAIM_STALE_MS = 15_000
const CLAIM_STALE_LOCAL_MS = 600_000
export const HEARTBEAT_MS = 2_000

const SCHEMA = `
CREATE TABLE IF NOT EXISTS artifacts (
  hash TEXT PRIMARY KEY, kind TEXT NOT NULL, type TEXT NOT NULL, size INTEGER NOT NULL, json TEXT, created_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS cache (
  key TEXT PRIMARY KEY, hash TEXT NOT NULL, execution_id INTEGER, created_at INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS cache_by_hash ON cache(hash);
CREATE TABLE IF NOT EXISTS executions (
  id INTEGER PRIMARY KEY, run_id TEXT NOT NULL, key TEXT NOT NULL, recipe TEXT NOT NULL, node TEXT NOT NULL,
  stage TEXT NOT NULL, version INTEGER NOT NULL, source_hash TEXT, params TEXT NOT NULL, unkeyed_params TEXT NOT NULL,
  inputs TEXT NOT NULL, output TEXT, status TEXT NOT NULL,
  started_at INTEGER NOT NULL, ended_at INTEGER, device TEXT NOT NULL, error TEXT, log_path TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS executions_by_node ON executions(node, id);
CREATE INDEX IF NOT EXISTS executions_by_key ON executions(key, id);
CREATE INDEX IF NOT EXISTS executions_by_run ON executions(run_id, id);
CREATE TABLE IF NOT EXISTS runs (
  id TEXT PRIMARY KEY, pipeline TEXT NOT NULL, args TEXT NOT NULL, status TEXT NOT NULL,
  started_at INTEGER NOT NULL, ended_at INTEGER, pid INTEGER NOT NULL, host TEXT NOT NULL, summary TEXT);
CREATE TABLE IF NOT EXISTS metrics (
  execution_id INTEGER NOT NULL, run_id TEXT NOT NULL, node TEXT NOT NULL, name TEXT NOT NULL,
  step INTEGER, value REAL NOT NULL, at INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS metrics_by_execution ON metrics(execution_id);
CREATE TABLE IF NOT EXISTS claims (
  key TEXT PRIMARY KEY, owner TEXT NOT NULL, pid INTEGER NOT NULL, host TEXT NOT NULL, heartbeat_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS external_files (
  path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns TEXT NOT NULL, ino TEXT NOT NULL, hash TEXT NOT NULL);
`

const pidAlive = (pid: number): boolean => {
  try {
    process.kill(pid, 0)
    return true
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM"
  }
}

const fsyncPath = (path: string, flags = "r") => {
  const fd = openSync(path, flags)
  try {
    fsyncSync(fd)
  } finally {
    closeSync(fd)
  }
}

const claimLive = (c: { pid: number; host: string; heartbeat_at: number }, now: number): boolean =>
  c.host === hostname() ? pidAlive(c.pid) && now - c.heartbeat_at <= CLAIM_STALE_LOCAL_MS : now - c.heartbeat_at <= CLAIM_STALE_MS

let tmpCounter = 0

export class Store {
  readonly db: Database.Database
  readonly objectsDir: string
  readonly tmpDir: string
  readonly workRoot: string
  private readonly stmts

  constructor(readonly dir: string) {
    this.dir = resolve(dir)
    this.objectsDir = join(this.dir, "objects")
    this.tmpDir = join(this.dir, "tmp")
    this.workRoot = join(this.dir, "work")
    for (const d of [this.objectsDir, this.tmpDir, this.workRoot]) mkdirSync(d, { recursive: true })
    this.db = new Database(join(this.dir, "cache.sqlite"))
    this.db.pragma("journal_mode = WAL")
    this.db.pragma("synchronous = NORMAL")
    this.db.pragma("busy_timeout = 30000")
    this.db.exec(SCHEMA)
    this.stmts = {
      lookup: this.db.prepare<[string], StoredArtifact>(
        "SELECT a.hash, a.kind, a.type, a.size, a.json FROM cache c JOIN artifacts a ON a.hash = c.hash WHERE c.key = ?",
      ),
      artifact: this.db.prepare<[string], StoredArtifact>("SELECT hash, kind, type, size, json FROM artifacts WHERE hash = ?"),
      insertArtifact: this.db.prepare(
        "INSERT OR IGNORE INTO artifacts (hash, kind, type, size, json, created_at) VALUES (?, ?, ?, ?, ?, ?)",
      ),
      insertCache: this.db.prepare("INSERT OR REPLACE INTO cache (key, hash, execution_id, created_at) VALUES (?, ?, ?, ?)"),
      claim: this.db.prepare<[string], { owner: string; pid: number; host: string; heartbeat_at: number }>(
        "SELECT owner, pid, host, heartbeat_at FROM claims WHERE key = ?",
      ),
      putClaim: this.db.prepare("INSERT OR REPLACE INTO claims (key, owner, pid, host, heartbeat_at) VALUES (?, ?, ?, ?, ?)"),
      heartbeat: this.db.prepare("UPDATE claims SET heartbeat_at = ? WHERE owner = ?"),
      release: this.db.prepare("DELETE FROM claims WHERE key = ? AND owner = ?"),
      releaseAll: this.db.prepare("DELETE FROM claims WHERE owner = ?"),
      insertMetric: this.db.prepare(
        "INSERT INTO metrics (execution_id, run_id, node, name, step, value, at) VALUES (?, ?, ?, ?, ?, ?, ?)",
      ),
      external: this.db.prepare<[string], { size: number; mtime_ns: string; ino: string; hash: string }>(
        "SELECT size, mtime_ns, ino, hash FROM external_files WHERE path = ?",
      ),
      startExecution: this.db.prepare(
        `INSERT INTO executions (run_id, key, recipe, node, stage, version, source_hash, params, unkeyed_params, inputs, status, started_at, device, log_path)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'running', ?, ?, ?)`,
      ),
      finishExecution: this.db.prepare("UPDATE executions SET status = ?, output = ?, error = ?, ended_at = ? WHERE id = ?"),
      putExternal: this.db.prepare("INSERT OR REPLACE INTO external_files (path, size, mtime_ns, ino, hash) VALUES (?, ?, ?, ?, ?)"),
    }
    this.cleanTemp()
  }

  close(): void {
    this.db.close()
  }

  objectPath(hash: string): string {
    return join(this.objectsDir, hash.slice(0, 2), hash)
  }

  workDir(key: string): string {
    return join(this.workRoot, key)
  }

  /** Removes temp files left by processes that no longer exist (a killed run). */
  private cleanTemp(): void {
    for (const name of readdirSync(this.tmpDir)) {
      const pid = Number(name.split(".")[0])
      if (!Number.isInteger(pid) || !pidAlive(pid)) rmSync(join(this.tmpDir, name), { force: true, recursive: true })
    }
  }

  // ---- cache -------------------------------------------------------------------------------------

  /**
   * The artifact cached under `key`, after a cheap integrity check (inline JSON rehashed, file payload
   * present with its recorded size). A bad entry is dropped so the node is recomputed.
   */
  lookup(key: string): StoredArtifact | undefined {
    const row = this.stmts.lookup.get(key)
    if (row === undefined) return undefined
    const ok =
      row.kind === "json"
        ? row.json !== null && sha256(row.json) === row.hash
        : (() => {
            try {
              return statSync(this.objectPath(row.hash)).size === row.size
            } catch {
              return false
            }
          })()
    if (ok) return row
    this.invalidate(row.hash)
    return undefined
  }

  /** Drops an artifact whose payload is corrupt or missing, and every cache entry pointing at it. */
  invalidate(hash: string): void {
    this.db.transaction(() => {
      this.db.prepare("DELETE FROM cache WHERE hash = ?").run(hash)
      this.db.prepare("DELETE FROM artifacts WHERE hash = ?").run(hash)
    })()
    rmSync(this.objectPath(hash), { force: true })
  }

  /** Reads a JSON artifact's text, verified against its hash. */
  readJson(hash: string): string {
    const artifact = this.stmts.artifact.get(hash)
    if (artifact?.json == null || sha256(artifact.json) !== hash) {
      this.invalidate(hash)
      throw new CorruptArtifact({ hash, message: `artifact ${hash.slice(0, 12)}: stored JSON is missing or does not match its hash; it will be recomputed` })
    }
    return artifact.json
  }

  /** Verifies a file payload by streaming it (large weights are not read into memory) and returns its path. */
  verifiedPath(hash: string): { readonly artifact: StoredArtifact; readonly path: string } {
    const artifact = this.stmts.artifact.get(hash)
    const path = this.objectPath(hash)
    const ok = artifact !== undefined && existsSync(path) && hashFile(path) === hash
    if (!ok) {
      this.invalidate(hash)
      throw new CorruptArtifact({ hash, message: `artifact ${hash.slice(0, 12)}: payload ${path} is missing or does not match its hash; it will be recomputed` })
    }
    return { artifact, path }
  }

  private tempPath(): string {
    return join(this.tmpDir, `${process.pid}.${Date.now()}.${tmpCounter++}`)
  }

  /** Moves a payload file into objects/ under its hash: fsync the file, rename, fsync the directory. */
  private adopt(tempFile: string, hash: string): void {
    const target = this.objectPath(hash)
    mkdirSync(join(this.objectsDir, hash.slice(0, 2)), { recursive: true })
    fsyncPath(tempFile)
    renameSync(tempFile, target)
    fsyncPath(join(this.objectsDir, hash.slice(0, 2)))
  }

  /** Writes bytes as a payload file; returns its hash and size. */
  putBytes(bytes: Uint8Array): { hash: string; size: number } {
    const hash = sha256(bytes)
    const temp = this.tempPath()
    const fd = openSync(temp, "w")
    try {
      let off = 0
      while (off < bytes.byteLength) off += writeSync(fd, bytes, off)
    } finally {
      closeSync(fd)
    }
    this.adopt(temp, hash)
    return { hash, size: bytes.byteLength }
  }

  /** Takes a file a stage wrote (moved if inside the cache dir, else copied) as a payload. */
  putFile(path: string): { hash: string; size: number } {
    const abs = resolve(path)
    const st = lstatSync(abs)
    if (!st.isFile()) throw new Error(`${abs} is not a regular file`)
    const inCache = !relative(this.dir, abs).startsWith("..")
    let temp = abs
    if (!inCache) {
      temp = this.tempPath()
      copyFileSync(abs, temp)
    }
    const hash = hashFile(temp)
    this.adopt(temp, hash)
    return { hash, size: st.size }
  }

  /** Records `key -> artifact` (and the artifact row) in one transaction: the publish point. */
  commit(key: string, a: Omit<StoredArtifact, "json"> & { json?: string | null }, executionId: number | null): void {
    const now = Date.now()
    this.db.transaction(() => {
      this.stmts.insertArtifact.run(a.hash, a.kind, a.type, a.size, a.json ?? null, now)
      this.stmts.insertCache.run(key, a.hash, executionId, now)
    })()
  }

  /** The execution that produced the cached entry of `key` (for source-change checks). */
  cachedExecution(key: string): ExecutionRow | undefined {
    return this.db
      .prepare<[string], ExecutionRow>("SELECT e.* FROM cache c JOIN executions e ON e.id = c.execution_id WHERE c.key = ?")
      .get(key)
  }

  // ---- claims ------------------------------------------------------------------------------------

  /** Claims `key` for `owner`, taking over a stale claim. Returns the live owner when someone else holds it. */
  claim(key: string, owner: string): { readonly ok: true } | { readonly ok: false; readonly owner: string } {
    return this.db
      .transaction((): { ok: true } | { ok: false; owner: string } => {
        const now = Date.now()
        const row = this.stmts.claim.get(key)
        const stale = row !== undefined && !claimLive(row, now)
        if (row !== undefined && row.owner !== owner && !stale) return { ok: false, owner: row.owner }
        this.stmts.putClaim.run(key, owner, process.pid, hostname(), now)
        return { ok: true }
      })
      .immediate()
  }

  heartbeat(owner: string): void {
    this.stmts.heartbeat.run(Date.now(), owner)
  }

  release(key: string, owner: string): void {
    this.stmts.release.run(key, owner)
  }

  releaseAll(owner: string): void {
    this.stmts.releaseAll.run(owner)
  }

  liveClaims(): number {
    const rows = this.db.prepare<[], { pid: number; host: string; heartbeat_at: number }>("SELECT pid, host, heartbeat_at FROM claims").all()
    return rows.filter((r) => claimLive(r, Date.now())).length
  }

  // ---- records -----------------------------------------------------------------------------------

  startRun(id: string, pipeline: string, args: ReadonlyArray<string>): void {
    this.db
      .prepare("INSERT INTO runs (id, pipeline, args, status, started_at, pid, host) VALUES (?, ?, ?, 'running', ?, ?, ?)")
      .run(id, pipeline, JSON.stringify(args), Date.now(), process.pid, hostname())
  }

  finishRun(id: string, status: string, summary: unknown): void {
    this.db.prepare("UPDATE runs SET status = ?, ended_at = ?, summary = ? WHERE id = ?").run(status, Date.now(), JSON.stringify(summary), id)
  }

  runs(limit: number): ReadonlyArray<RunRow> {
    return this.db.prepare<[number], RunRow>("SELECT id, pipeline, args, status, started_at, ended_at, summary FROM runs ORDER BY started_at DESC LIMIT ?").all(limit)
  }

  run(id: string): RunRow | undefined {
    return this.db.prepare<[string], RunRow>("SELECT id, pipeline, args, status, started_at, ended_at, summary FROM runs WHERE id = ?").get(id)
  }

  startExecution(e: Omit<ExecutionRow, "id" | "output" | "ended_at" | "error" | "status" | "started_at">): number {
    const r = this.stmts.startExecution.run(e.run_id, e.key, e.recipe, e.node, e.stage, e.version, e.source_hash, e.params, e.unkeyed_params, e.inputs, Date.now(), e.device, e.log_path)
    return Number(r.lastInsertRowid)
  }

  finishExecution(id: number, status: string, output: string | null, error: string | null): void {
    this.stmts.finishExecution.run(status, output, error, Date.now(), id)
  }

  executionsOfRun(runId: string): ReadonlyArray<ExecutionRow> {
    return this.db.prepare<[string], ExecutionRow>("SELECT * FROM executions WHERE run_id = ? ORDER BY id").all(runId)
  }

  /** Executions of a node, newest first, found by display name or by a key prefix (at least 6 hex digits). */
  executionsOf(node: string): ReadonlyArray<ExecutionRow> {
    const byName = this.db.prepare<[string], ExecutionRow>("SELECT * FROM executions WHERE node = ? ORDER BY id DESC").all(node)
    if (byName.length > 0 || !/^[0-9a-f]{6,64}$/.test(node)) return byName
    return this.db.prepare<[string], ExecutionRow>("SELECT * FROM executions WHERE key LIKE ? ORDER BY id DESC").all(`${node}%`)
  }

  /** The latest execution of each node name (to explain why a node is not cached). */
  latestByNode(): Map<string, ExecutionRow> {
    const rows = this.db
      .prepare<[], ExecutionRow>("SELECT e.* FROM executions e JOIN (SELECT node, max(id) AS id FROM executions GROUP BY node) l ON l.id = e.id")
      .all()
    return new Map(rows.map((r) => [r.node, r]))
  }

  /** Mean duration (ms) of successful executions per stage: the scheduler's cost estimate. */
  stageDurations(): Map<string, number> {
    const rows = this.db
      .prepare<[], { stage: string; ms: number }>("SELECT stage, avg(ended_at - started_at) AS ms FROM executions WHERE status = 'succeeded' GROUP BY stage")
      .all()
    return new Map(rows.map((r) => [r.stage, r.ms]))
  }

  insertMetrics(rows: ReadonlyArray<readonly [executionId: number, runId: string, node: string, name: string, step: number | null, value: number, at: number]>): void {
    this.db.transaction(() => {
      for (const r of rows) this.stmts.insertMetric.run(...r)
    })()
  }

  metricsOf(executionId: number): ReadonlyArray<{ name: string; step: number | null; value: number }> {
    return this.db.prepare<[number], { name: string; step: number | null; value: number }>("SELECT name, step, value FROM metrics WHERE execution_id = ? ORDER BY rowid").all(executionId)
  }

  // ---- external inputs ---------------------------------------------------------------------------

  /** Content hash of an external file, recomputed only when (size, mtime, inode) changed. */
  hashExternalFile(path: string): string {
    const abs = resolve(path)
    let st
    try {
      st = statSync(abs, { bigint: true })
    } catch {
      throw new ExternalInputError({ path: abs, message: `external input ${abs} does not exist` })
    }
    if (!st.isFile()) throw new ExternalInputError({ path: abs, message: `external input ${abs} is not a file` })
    const memo = this.stmts.external.get(abs)
    if (memo && memo.size === Number(st.size) && memo.mtime_ns === String(st.mtimeNs) && memo.ino === String(st.ino)) return memo.hash
    const hash = hashFile(abs)
    this.stmts.putExternal.run(abs, Number(st.size), String(st.mtimeNs), String(st.ino), hash)
    return hash
  }

  /** Content hash of an external directory: over its files' relative paths and content hashes (symlinks followed). */
  hashExternalDir(path: string): string {
    const abs = resolve(path)
    if (!existsSync(abs) || !statSync(abs).isDirectory())
      throw new ExternalInputError({ path: abs, message: `external input ${abs} is not a directory` })
    const entries: Array<string> = []
    const walk = (dir: string) => {
      for (const name of readdirSync(dir).sort()) {
        const p = join(dir, name)
        const st = statSync(p)
        if (st.isDirectory()) walk(p)
        else if (st.isFile()) entries.push(`${relative(abs, p)}\0${this.hashExternalFile(p)}`)
      }
    }
    walk(abs)
    return sha256(entries.join("\n"))
  }

  // ---- gc ----------------------------------------------------------------------------------------

  /** Deletes payload files and artifact rows no cache entry refers to. Returns what was freed. */
  gc(): { files: number; bytes: number } {
    const referenced = new Set(this.db.prepare<[], { hash: string }>("SELECT DISTINCT hash FROM cache").all().map((r) => r.hash))
    this.db.prepare("DELETE FROM artifacts WHERE hash NOT IN (SELECT hash FROM cache)").run()
    let files = 0
    let bytes = 0
    const youngMs = 60_000 // a payload renamed into place whose commit is a moment away
    for (const shard of readdirSync(this.objectsDir)) {
      for (const name of readdirSync(join(this.objectsDir, shard))) {
        if (referenced.has(name)) continue
        const p = join(this.objectsDir, shard, name)
        const st = statSync(p)
        if (Date.now() - st.mtimeMs < youngMs) continue
        unlinkSync(p)
        files++
        bytes += st.size
      }
    }
    return { files, bytes }
  }
}
