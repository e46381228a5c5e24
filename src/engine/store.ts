// The cache directory: SQLite (WAL) records plus content-addressed payload files.
//   <cache>/cache.sqlite       artifacts, cache (key -> artifact), executions, runs, metrics, claims, external_files
//   <cache>/objects/ab/<hash>  file payloads, named by the sha256 of their bytes
//   <cache>/tmp/<pid>.<n>      payloads being written (removed at start when their process is gone);
//                              <pid>@<host>.<n> when written by a cluster job on another machine
//   <cache>/work/<key>/        scratch and checkpoint directory of a node being computed
//   <cache>/index/ab/<key>.json  one per cache entry (key, artifact, stage, node; inline JSON values too),
//                              written atomically at publish: `pipe doctor --cache` rebuilds a lost or
//                              damaged cache.sqlite's entries from them, and gc refuses to delete payloads
//                              they name while the database does not
// Everything here is synchronous: better-sqlite3 calls take microseconds, and a sync API keeps
// transactions obvious. Callers wrap it in Effect where it matters.
import Database from "better-sqlite3"
import { closeSync, existsSync, mkdtempSync, fsyncSync, mkdirSync, openSync, readdirSync, readFileSync, renameSync, rmSync, statSync, unlinkSync, writeFileSync, writeSync, copyFileSync, lstatSync } from "node:fs"
import { hostname, tmpdir } from "node:os"
import { dirname, join, relative, resolve } from "node:path"
import { CacheError, CorruptArtifact, ExternalInputError, StorageError, errorMessage, isDamagedDatabase, storageError } from "./errors.ts"
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
  /** The Slurm job running it (`--executor slurm`), e.g. "1234" or "1230_4" for an array task. */
  readonly slurm_job: string | null
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
 * When a claim may be taken over. On this host: when its process is gone or its pid now belongs to
 * another process (told by the start time; where that is unknown, after 10 minutes of silence), so a
 * stage that blocks its event loop for a while is not computed twice. From another host sharing the
 * cache directory: when its heartbeat is older than 15 s.
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
-- value is REAL, or the TEXT 'NaN' / 'Infinity' / '-Infinity' for a non-finite metric (SQLite keeps such
-- text as text in a REAL column; a NaN bound as a number would be stored as NULL).
CREATE TABLE IF NOT EXISTS metrics (
  execution_id INTEGER NOT NULL, run_id TEXT NOT NULL, node TEXT NOT NULL, name TEXT NOT NULL,
  step INTEGER, value REAL NOT NULL, at INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS metrics_by_execution ON metrics(execution_id);
CREATE TABLE IF NOT EXISTS claims (
  key TEXT PRIMARY KEY, owner TEXT NOT NULL, pid INTEGER NOT NULL, host TEXT NOT NULL, heartbeat_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS external_files (
  path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns TEXT NOT NULL, ino TEXT NOT NULL, hash TEXT NOT NULL);
`

/** A cache entry's sidecar in index/: enough to restore the entry without the database. */
export interface IndexEntry {
  readonly key: string
  readonly hash: string
  readonly kind: StorageKind
  readonly type: string
  readonly size: number
  readonly json: string | null
  readonly stage?: string
  readonly node?: string
}

/**
 * Writes a file whole or not at all: a temp file (next to it unless given, on the same filesystem)
 * renamed over it. Errors name `path`.
 */
export const writeFileAtomic = (path: string, data: string | Uint8Array, temp = `${path}.${process.pid}.tmp`): void => {
  try {
    writeFileSync(temp, data)
    renameSync(temp, path)
  } catch (e) {
    rmSync(temp, { force: true })
    throw storageError("writing", path, e)
  }
}

/**
 * The start time of a process (clock ticks since boot, field 22 of /proc/<pid>/stat): with the pid it
 * tells the process that started a run from a later one that reused its pid. Undefined when the
 * process does not exist, or on systems without /proc.
 */
const processStart = (pid: number): string | undefined => {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8")
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19]
  } catch {
    return undefined
  }
}
const HAS_PROC = existsSync("/proc/self/stat")
const OWN_START = processStart(process.pid) ?? null

/** Whether a process of this host still runs: its pid exists and, when its start time is known, it started then. */
const processAlive = (pid: number, start: string | null): boolean => {
  if (!HAS_PROC) return pidAlive(pid)
  const now = processStart(pid)
  return now !== undefined && (start === null || start === now)
}

/** Whether the process that started a run still runs it. A run from another host cannot be checked here. */
const runAlive = (r: { pid: number; host: string; pid_start: string | null }): boolean => r.host !== hostname() || processAlive(r.pid, r.pid_start)

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

type ClaimRow = { pid: number; host: string; heartbeat_at: number; pid_start: string | null }
const claimLive = (c: ClaimRow, now: number): boolean =>
  c.host !== hostname() ? now - c.heartbeat_at <= CLAIM_STALE_MS
  : processAlive(c.pid, c.pid_start) && (c.pid_start !== null || now - c.heartbeat_at <= CLAIM_STALE_LOCAL_MS)

let tmpCounter = 0

/** This machine's name up to its first dot (temp file names use dots as separators). */
export const shortHost = (): string => hostname().split(".")[0]

/** What the user can do about a cache database that cannot be opened, by SQLite's error code. */
const openError = (dbPath: string, readOnly: boolean, e: unknown): Error => {
  if (isDamagedDatabase(e))
    return new CacheError({
      path: dbPath,
      message: `the cache database ${dbPath} is damaged (${errorMessage(e)}). Run pipe doctor --cache to check it, move it aside and rebuild the cache entries from ${join(dirname(dbPath), "index")}; the payloads in ${join(dirname(dbPath), "objects")} are kept`,
    })
  if (readOnly && !existsSync(dbPath)) return new CacheError({ path: dbPath, message: `no cache database at ${dbPath} (nothing has run with this cache directory)` })
  return storageError(readOnly ? "reading the cache database" : "opening the cache database", dbPath, e)
}

/** The payload files under objects/. */
const payloadFiles = (objectsDir: string): Array<{ hash: string; path: string }> =>
  readdirSync(objectsDir).flatMap((shard) => readdirSync(join(objectsDir, shard)).map((hash) => ({ hash, path: join(objectsDir, shard, hash) })))

export interface StoreOptions {
  /**
   * Open for reading only (pipe ls, show, logs, why, status on a cache this user cannot write): nothing in
   * the cache directory is created, cleaned or changed; the database is a private snapshot taken at open.
   */
  readonly readOnly?: boolean
}

/**
 * The cache directory's payload files, without its database: objects/, tmp/ and work/. A Slurm job
 * publishes through this alone (the coordinating `pipe run` is the only writer of cache.sqlite, which
 * must not be shared over NFS); `Store` adds the database.
 */
export class Payloads {
  readonly dir: string
  readonly objectsDir: string
  readonly tmpDir: string
  readonly workRoot: string

  /** `tempPrefix` starts the names of temp files: the pid (see cleanTemp), and the host for a job elsewhere. */
  constructor(dir: string, private readonly tempPrefix = String(process.pid)) {
    this.dir = resolve(dir)
    this.objectsDir = join(this.dir, "objects")
    this.tmpDir = join(this.dir, "tmp")
    this.workRoot = join(this.dir, "work")
  }

  objectPath(hash: string): string {
    return join(this.objectsDir, hash.slice(0, 2), hash)
  }

  workDir(key: string): string {
    return join(this.workRoot, key)
  }

  protected tempPath(): string {
    return join(this.tmpDir, `${this.tempPrefix}.${Date.now()}.${tmpCounter++}`)
  }

  /** Moves a payload file into objects/ under its hash: fsync the file, rename, fsync the directory. */
  private adopt(tempFile: string, hash: string): void {
    const target = this.objectPath(hash)
    try {
      mkdirSync(join(this.objectsDir, hash.slice(0, 2)), { recursive: true })
      fsyncPath(tempFile)
      renameSync(tempFile, target)
      fsyncPath(join(this.objectsDir, hash.slice(0, 2)))
    } catch (e) {
      throw storageError("storing the payload", target, e)
    }
  }

  /** Writes bytes as a payload file; returns its hash and size. A failed write leaves no temp file behind. */
  putBytes(bytes: Uint8Array): { hash: string; size: number } {
    const hash = sha256(bytes)
    const temp = this.tempPath()
    try {
      const fd = openSync(temp, "w")
      try {
        let off = 0
        while (off < bytes.byteLength) off += writeSync(fd, bytes, off)
      } finally {
        closeSync(fd)
      }
      this.adopt(temp, hash)
    } catch (e) {
      rmSync(temp, { force: true })
      throw storageError("writing the payload", temp, e)
    }
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
      try {
        copyFileSync(abs, temp)
      } catch (e) {
        rmSync(temp, { force: true })
        throw storageError(`copying ${abs} into the cache as`, temp, e)
      }
    }
    const hash = hashFile(temp)
    this.adopt(temp, hash)
    return { hash, size: st.size }
  }

}

export class Store extends Payloads {
  readonly db: Database.Database
  readonly dbPath: string
  readonly indexDir: string
  readonly readOnly: boolean
  private readonly snapshotDir: string | undefined
  /** index/ shard directories known to exist (saves a mkdir per publish). */
  private readonly indexShards = new Set<string>()
  private readonly stmts

  constructor(dir: string, options: StoreOptions = {}) {
    super(dir)
    this.indexDir = join(this.dir, "index")
    this.dbPath = join(this.dir, "cache.sqlite")
    this.readOnly = options.readOnly ?? false
    try {
      if (this.readOnly) {
        // SQLite cannot read a WAL database where it may not create the -shm file next to it: work on a
        // private snapshot (the database and its WAL, as committed when copied) in a temp directory.
        // What the store writes (dead runs marked, the schema brought up to date) goes there only.
        this.snapshotDir = mkdtempSync(join(tmpdir(), "pipe-cache-"))
        const snapshot = join(this.snapshotDir, "cache.sqlite")
        copyFileSync(this.dbPath, snapshot)
        if (existsSync(`${this.dbPath}-wal`)) copyFileSync(`${this.dbPath}-wal`, `${snapshot}-wal`)
        this.db = new Database(snapshot, { fileMustExist: true })
        process.once("exit", this.dropSnapshot) // commands that only read may exit without closing
      } else {
        for (const d of [this.objectsDir, this.tmpDir, this.workRoot, this.indexDir]) mkdirSync(d, { recursive: true })
        this.db = new Database(this.dbPath)
      }
      this.db.pragma("journal_mode = WAL")
      this.db.pragma("synchronous = NORMAL")
      this.db.pragma("busy_timeout = 30000")
      this.db.exec(SCHEMA)
      // Caches from before runs and claims recorded their process's start time.
      for (const table of ["runs", "claims"])
        if (!this.db.prepare<[], { name: string }>(`PRAGMA table_info(${table})`).all().some((c) => c.name === "pid_start"))
          this.db.exec(`ALTER TABLE ${table} ADD COLUMN pid_start TEXT`)
      // Caches from before the Slurm executor.
      if (!this.db.prepare<[], { name: string }>("PRAGMA table_info(executions)").all().some((c) => c.name === "slurm_job"))
        this.db.exec("ALTER TABLE executions ADD COLUMN slurm_job TEXT")
    } catch (e) {
      this.dropSnapshot()
      throw openError(this.dbPath, this.readOnly, e)
    }
    this.stmts = {
      lookup: this.db.prepare<[string], StoredArtifact>(
        "SELECT a.hash, a.kind, a.type, a.size, a.json FROM cache c JOIN artifacts a ON a.hash = c.hash WHERE c.key = ?",
      ),
      artifact: this.db.prepare<[string], StoredArtifact>("SELECT hash, kind, type, size, json FROM artifacts WHERE hash = ?"),
      insertArtifact: this.db.prepare(
        "INSERT OR IGNORE INTO artifacts (hash, kind, type, size, json, created_at) VALUES (?, ?, ?, ?, ?, ?)",
      ),
      insertCache: this.db.prepare("INSERT OR REPLACE INTO cache (key, hash, execution_id, created_at) VALUES (?, ?, ?, ?)"),
      claim: this.db.prepare<[string], ClaimRow & { owner: string }>("SELECT owner, pid, host, heartbeat_at, pid_start FROM claims WHERE key = ?"),
      putClaim: this.db.prepare("INSERT OR REPLACE INTO claims (key, owner, pid, host, heartbeat_at, pid_start) VALUES (?, ?, ?, ?, ?, ?)"),
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
    if (!this.readOnly) this.cleanTemp()
    this.write(() => this.markDeadRuns())
  }

  /** Runs a database write; a failure (disk full, read-only) becomes a StorageError naming cache.sqlite. */
  private write<T>(f: () => T): T {
    try {
      return f()
    } catch (e) {
      throw storageError("writing", this.dbPath, e)
    }
  }

  close(): void {
    this.db.close()
    this.dropSnapshot()
  }

  private readonly dropSnapshot = () => {
    if (this.snapshotDir === undefined) return
    process.off("exit", this.dropSnapshot)
    rmSync(this.snapshotDir, { recursive: true, force: true })
  }

  /**
   * Removes temp files left by processes that no longer exist (a killed run). Those of a cluster job on
   * another host (`<pid>@<host>`) cannot be checked from here: they go once a day old.
   */
  private cleanTemp(): void {
    for (const name of readdirSync(this.tmpDir)) {
      const [pidText, host] = name.split(".")[0].split("@")
      const pid = Number(pidText)
      const path = join(this.tmpDir, name)
      const elsewhere = host !== undefined && host !== shortHost()
      // statSync may race with the job renaming its temp file into place: then it is gone already.
      const gone = elsewhere ? Date.now() - (statSync(path, { throwIfNoEntry: false })?.mtimeMs ?? 0) > 86_400_000 : !Number.isInteger(pid) || !pidAlive(pid)
      if (gone) rmSync(path, { force: true, recursive: true })
    }
  }

  // ---- cache -------------------------------------------------------------------------------------

  indexPath(key: string): string {
    return join(this.indexDir, key.slice(0, 2), `${key}.json`)
  }

  /** Why a cached artifact cannot be trusted (cheap checks: inline JSON rehashed, payload size), or undefined. */
  private defect(row: StoredArtifact): string | undefined {
    if (row.kind === "json") return row.json !== null && sha256(row.json) === row.hash ? undefined : "its JSON value does not match its hash"
    const path = this.objectPath(row.hash)
    let size: number
    try {
      size = statSync(path).size
    } catch {
      return `its payload ${path} is missing`
    }
    return size === row.size ? undefined : `its payload ${path} is ${size} bytes, ${row.size} were published`
  }

  /**
   * The artifact cached under `key`, after a cheap integrity check. A bad entry is dropped so the node is
   * recomputed, and `warn` is told which file and why.
   */
  lookup(key: string, warn?: (message: string) => void): StoredArtifact | undefined {
    const row = this.stmts.lookup.get(key)
    if (row === undefined) return undefined
    const defect = this.defect(row)
    if (defect === undefined) return row
    warn?.(`cached result ${row.hash.slice(0, 12)} dropped: ${defect}; recomputing it`)
    if (!this.readOnly) this.invalidate(row.hash)
    return undefined
  }

  /** Drops an artifact whose payload is corrupt or missing, every cache entry pointing at it and their sidecars. */
  invalidate(hash: string): void {
    const keys = this.db.prepare<[string], { key: string }>("SELECT key FROM cache WHERE hash = ?").all(hash)
    this.write(() =>
      this.db.transaction(() => {
        this.db.prepare("DELETE FROM cache WHERE hash = ?").run(hash)
        this.db.prepare("DELETE FROM artifacts WHERE hash = ?").run(hash)
      })(),
    )
    for (const { key } of keys) rmSync(this.indexPath(key), { force: true })
    rmSync(this.objectPath(hash), { force: true })
  }

  /** An artifact's record (a Slurm job gets those of its inputs with its request). */
  artifact(hash: string): StoredArtifact | undefined {
    return this.stmts.artifact.get(hash)
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

  /** The text of an inline JSON artifact, or undefined for a payload artifact, an unknown hash or stored JSON that does not match it (read-only: nothing is invalidated). */
  inlineJson(hash: string): string | undefined {
    const json = this.stmts.artifact.get(hash)?.json
    return json != null && sha256(json) === hash ? json : undefined
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

  /**
   * Records `key -> artifact` (and the artifact row) in one transaction: the publish point. The entry's
   * sidecar in index/ is written first, so every entry the database holds can be rebuilt from one.
   */
  commit(
    key: string,
    a: Omit<StoredArtifact, "json"> & { json?: string | null },
    executionId: number | null,
    origin: { readonly stage?: string; readonly node?: string } = {},
  ): void {
    const entry: IndexEntry = { key, hash: a.hash, kind: a.kind, type: a.type, size: a.size, json: a.json ?? null, ...origin }
    this.writeSidecar(entry)
    try {
      this.restore(entry, executionId)
    } catch (e) {
      rmSync(this.indexPath(key), { force: true }) // not published: gc must not take the sidecar for an entry the database lost
      throw e
    }
  }

  writeSidecar(entry: IndexEntry): void {
    const path = this.indexPath(entry.key)
    if (!this.indexShards.has(entry.key.slice(0, 2)))
      try {
        mkdirSync(dirname(path), { recursive: true })
        this.indexShards.add(entry.key.slice(0, 2))
      } catch (e) {
        throw storageError("creating", dirname(path), e)
      }
    writeFileAtomic(path, JSON.stringify(entry), this.tempPath()) // in tmp/, cleaned at start if a kill leaves it
  }

  /** Cache entries that have no sidecar in index/ (published before the cache kept them). */
  entriesWithoutSidecar(): Array<IndexEntry> {
    return this.db
      .prepare<[], IndexEntry & { stage: string | null; node: string | null }>(
        `SELECT c.key, a.hash, a.kind, a.type, a.size, a.json, e.stage, e.node
         FROM cache c JOIN artifacts a ON a.hash = c.hash LEFT JOIN executions e ON e.id = c.execution_id`,
      )
      .all()
      .filter((e) => !existsSync(this.indexPath(e.key)))
      .map(({ stage, node, ...e }) => ({ ...e, ...(stage === null ? {} : { stage }), ...(node === null ? {} : { node }) }))
  }

  /** Records an entry in the database only (its sidecar exists): publishing, and `pipe doctor --cache`. */
  restore(e: IndexEntry, executionId: number | null = null): void {
    const now = Date.now()
    this.write(() =>
      this.db.transaction(() => {
        this.stmts.insertArtifact.run(e.hash, e.kind, e.type, e.size, e.json, now)
        this.stmts.insertCache.run(e.key, e.hash, executionId, now)
      })(),
    )
  }

  /** Every readable sidecar in index/, and the paths of those that cannot be read or parsed. */
  indexEntries(): { readonly entries: Array<IndexEntry>; readonly unreadable: Array<string> } {
    const entries: Array<IndexEntry> = []
    const unreadable: Array<string> = []
    if (!existsSync(this.indexDir)) return { entries, unreadable }
    for (const shard of readdirSync(this.indexDir))
      for (const name of readdirSync(join(this.indexDir, shard))) {
        if (!name.endsWith(".json")) continue
        const path = join(this.indexDir, shard, name)
        try {
          const e = JSON.parse(readFileSync(path, "utf8")) as IndexEntry
          if (`${e.key}.json` !== name || typeof e.hash !== "string") throw new Error("not a cache entry")
          entries.push(e)
        } catch {
          unreadable.push(path)
        }
      }
    return { entries, unreadable }
  }

  /** Why an entry read from index/ cannot be restored (payload gone or of another size, JSON not matching), or undefined. */
  entryDefect(e: IndexEntry): string | undefined {
    return this.defect({ hash: e.hash, kind: e.kind, type: e.type, size: e.size, json: e.json })
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
    return this.write(() => this.db
      .transaction((): { ok: true } | { ok: false; owner: string } => {
        const now = Date.now()
        const row = this.stmts.claim.get(key)
        const stale = row !== undefined && !claimLive(row, now)
        if (row !== undefined && row.owner !== owner && !stale) return { ok: false, owner: row.owner }
        this.stmts.putClaim.run(key, owner, process.pid, hostname(), now, OWN_START)
        return { ok: true }
      })
      .immediate())
  }

  heartbeat(owner: string): void {
    this.write(() => this.stmts.heartbeat.run(Date.now(), owner))
  }

  release(key: string, owner: string): void {
    this.write(() => this.stmts.release.run(key, owner))
  }

  releaseAll(owner: string): void {
    this.write(() => this.stmts.releaseAll.run(owner))
  }

  /** Keys claimed by a live run (on this cache, from any process). */
  liveClaims(): Set<string> {
    const rows = this.db.prepare<[], ClaimRow & { key: string }>("SELECT key, pid, host, heartbeat_at, pid_start FROM claims").all()
    return new Set(rows.filter((r) => claimLive(r, Date.now())).map((r) => r.key))
  }

  // ---- records -----------------------------------------------------------------------------------

  startRun(id: string, pipeline: string, args: ReadonlyArray<string>): void {
    this.write(() =>
      this.db
        .prepare("INSERT INTO runs (id, pipeline, args, status, started_at, pid, host, pid_start) VALUES (?, ?, ?, 'running', ?, ?, ?, ?)")
        .run(id, pipeline, JSON.stringify(args), Date.now(), process.pid, hostname(), OWN_START),
    )
  }

  finishRun(id: string, status: string, summary: unknown): void {
    this.write(() => this.db.prepare("UPDATE runs SET status = ?, ended_at = ?, summary = ? WHERE id = ?").run(status, Date.now(), JSON.stringify(summary), id))
  }

  /**
   * Marks runs of this host whose process is gone (killed, crashed, or its pid reused by another process)
   * as interrupted, with the executions they left running.
   */
  private markDeadRuns(): void {
    const dead = this.db
      .prepare<[], { id: string; pid: number; host: string; pid_start: string | null }>("SELECT id, pid, host, pid_start FROM runs WHERE status = 'running'")
      .all()
      .filter((r) => !runAlive(r))
    if (dead.length === 0) return
    const run = this.db.prepare("UPDATE runs SET status = 'interrupted' WHERE id = ? AND status = 'running'")
    const executions = this.db.prepare("UPDATE executions SET status = 'interrupted', error = ? WHERE run_id = ? AND status = 'running'")
    this.db.transaction(() => {
      for (const r of dead) {
        run.run(r.id)
        executions.run(`interrupted: the run's process (pid ${r.pid}) ended without finishing it (killed or crashed)`, r.id)
      }
    })()
  }

  runs(limit: number): ReadonlyArray<RunRow> {
    return this.db.prepare<[number], RunRow>("SELECT id, pipeline, args, status, started_at, ended_at, summary FROM runs ORDER BY started_at DESC LIMIT ?").all(limit)
  }

  run(id: string): RunRow | undefined {
    return this.db.prepare<[string], RunRow>("SELECT id, pipeline, args, status, started_at, ended_at, summary FROM runs WHERE id = ?").get(id)
  }

  startExecution(e: Omit<ExecutionRow, "id" | "output" | "ended_at" | "error" | "status" | "started_at" | "slurm_job">): number {
    const r = this.write(() =>
      this.stmts.startExecution.run(e.run_id, e.key, e.recipe, e.node, e.stage, e.version, e.source_hash, e.params, e.unkeyed_params, e.inputs, Date.now(), e.device, e.log_path),
    )
    return Number(r.lastInsertRowid)
  }

  /** Records the Slurm job that runs an execution (shown by pipe show and pipe status). */
  setExecutionJob(id: number, job: string): void {
    this.write(() => this.db.prepare("UPDATE executions SET slurm_job = ? WHERE id = ?").run(job, id))
  }

  finishExecution(id: number, status: string, output: string | null, error: string | null): void {
    this.write(() => this.stmts.finishExecution.run(status, output, error, Date.now(), id))
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
    this.write(() =>
      this.db.transaction(() => {
        for (const [id, run, node, name, step, value, at] of rows) this.stmts.insertMetric.run(id, run, node, name, step, Number.isFinite(value) ? value : String(value), at)
      })(),
    )
  }

  /** A node's metrics in the order recorded; non-finite values come back as NaN / ±Infinity. */
  metricsOf(executionId: number): ReadonlyArray<{ name: string; step: number | null; value: number }> {
    return this.db
      .prepare<[number], { name: string; step: number | null; value: number | string }>("SELECT name, step, value FROM metrics WHERE execution_id = ? ORDER BY rowid")
      .all(executionId)
      .map((m) => ({ ...m, value: Number(m.value) }))
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
    this.write(() => this.stmts.putExternal.run(abs, Number(st.size), String(st.mtimeNs), String(st.ino), hash))
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

  /**
   * Why deleting unreferenced payloads now would destroy results, or undefined. A database that was
   * truncated or replaced lists none of the payloads it used to: either it looks new (no entries, no runs)
   * while payloads exist, or sidecars in index/ name entries it lacks.
   */
  private gcRefusal(payloads: ReadonlyArray<{ hash: string }>): string | undefined {
    const recover = `Run pipe doctor --cache to rebuild the database's entries from ${this.indexDir}; gc deletes nothing until the database lists them`
    const entries = this.db.prepare<[], { n: number }>("SELECT count(*) AS n FROM cache").get()!.n
    const runs = this.db.prepare<[], { n: number }>("SELECT count(*) AS n FROM runs").get()!.n
    if (entries === 0 && runs === 0 && payloads.length > 0)
      return `${this.dbPath} has no cache entries and no runs, but ${this.objectsDir} holds ${payloads.length} payloads: the database looks new or truncated, and gc would delete every payload. ${recover} (if you do mean to drop them all, delete ${this.objectsDir} yourself)`
    const known = this.db.prepare<[string], { hash: string }>("SELECT hash FROM cache WHERE key = ?")
    const lost = this.indexEntries().entries.filter((e) => known.get(e.key) === undefined && this.entryDefect(e) === undefined)
    if (lost.length > 0)
      return `${this.dbPath} lacks ${lost.length} cache entries whose sidecars are in ${this.indexDir} (e.g. ${lost[0].node ?? lost[0].key}): the database was probably truncated or replaced. ${recover}`
    return undefined
  }

  /**
   * Deletes payload files and artifact rows no cache entry refers to (but the payloads in `keep.payloads`),
   * and the work directories of nodes that were interrupted (none a live run has claimed, none in
   * `keep.workKeys`: Slurm jobs left running without a coordinator, see slurm.ts unrecordedSlurmJobs).
   * Refuses (CacheError) when the database looks like it lost its entries. Returns what was freed.
   */
  gc(keep: { readonly workKeys?: ReadonlySet<string>; readonly payloads?: ReadonlySet<string> } = {}): { files: number; workDirs: number; bytes: number } {
    const payloads = payloadFiles(this.objectsDir)
    const refusal = this.gcRefusal(payloads)
    if (refusal !== undefined) throw new CacheError({ path: this.dbPath, message: refusal })
    const referenced = new Set(this.db.prepare<[], { hash: string }>("SELECT DISTINCT hash FROM cache").all().map((r) => r.hash))
    this.write(() => this.db.prepare("DELETE FROM artifacts WHERE hash NOT IN (SELECT hash FROM cache)").run())
    let files = 0
    let bytes = 0
    const youngMs = 60_000 // a payload renamed into place whose commit is a moment away
    for (const { hash, path } of payloads) {
      if (referenced.has(hash) || keep.payloads?.has(hash)) continue
      const st = statSync(path)
      if (Date.now() - st.mtimeMs < youngMs) continue
      unlinkSync(path)
      files++
      bytes += st.size
    }
    // Sidecars of entries the database does not hold, none restorable (checked above): their payload is gone.
    const known = this.db.prepare<[string], { key: string }>("SELECT key FROM cache WHERE key = ?")
    for (const e of this.indexEntries().entries) if (known.get(e.key) === undefined) rmSync(this.indexPath(e.key), { force: true })
    const claimed = this.liveClaims()
    let workDirs = 0
    for (const key of readdirSync(this.workRoot)) {
      if (claimed.has(key) || keep.workKeys?.has(key)) continue
      const dir = join(this.workRoot, key)
      bytes += du(dir)
      rmSync(dir, { recursive: true, force: true })
      workDirs++
    }
    return { files, workDirs, bytes }
  }
}

/** Opens a cache to read it (pipe ls, show, logs, why, status): writable when it can be, else read-only. */
export const openStoreForReading = (dir: string): Store => {
  try {
    return new Store(dir)
  } catch (e) {
    if (e instanceof StorageError) return new Store(dir, { readOnly: true })
    throw e
  }
}

/** Bytes in a directory tree (symlinks not followed). */
const du = (path: string): number => {
  const st = lstatSync(path)
  return st.isDirectory() ? readdirSync(path).reduce((n, name) => n + du(join(path, name)), 0) : st.size
}
