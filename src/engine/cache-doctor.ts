// `pipe doctor --cache`: checks the cache database (PRAGMA integrity_check), moves a damaged one aside
// and rebuilds the cache entries from the sidecars in index/ (written at each publish), whose payloads
// are checked first. The run history (runs, executions, metrics) lives only in the database: a
// damaged one keeps it in the file moved aside, for `sqlite3 <file> .recover`.
import Database from "better-sqlite3"
import { existsSync, renameSync, statSync } from "node:fs"
import { join, resolve } from "node:path"
import { errorMessage } from "./errors.ts"
import { Store } from "./store.ts"

export interface CacheDoctorReport {
  readonly lines: ReadonlyArray<string>
  /** The cache is usable now (it was, or it has been repaired). */
  readonly ok: boolean
}

/** What is wrong with the database file, or undefined when SQLite finds it intact. */
const damage = (dbPath: string): string | undefined => {
  let db: Database.Database | undefined
  try {
    db = new Database(dbPath, { fileMustExist: true })
    const rows = db.prepare<[], { integrity_check: string }>("PRAGMA integrity_check").all()
    return rows.length === 1 && rows[0].integrity_check === "ok" ? undefined : rows.map((r) => r.integrity_check).slice(0, 5).join("; ")
  } catch (e) {
    return errorMessage(e)
  } finally {
    db?.close()
  }
}

export const doctorCache = (dir: string): CacheDoctorReport => {
  const lines: Array<string> = []
  const dbPath = join(resolve(dir), "cache.sqlite")
  if (!existsSync(dbPath)) lines.push(`${dbPath}: absent (a new one is created)`)
  else {
    const size = statSync(dbPath).size
    const damaged = damage(dbPath)
    if (damaged === undefined) lines.push(`${dbPath}: integrity ok${size === 0 ? " (an empty file: a new database)" : ""}`)
    else {
      const aside = `${dbPath}.damaged-${new Date().toISOString().replace(/[:.]/g, "-")}`
      try {
        for (const suffix of ["", "-wal", "-shm"]) if (existsSync(dbPath + suffix)) renameSync(dbPath + suffix, aside + suffix)
      } catch (e) {
        lines.push(`${dbPath}: damaged (${damaged}), and moving it aside failed: ${errorMessage(e)}`)
        return { lines, ok: false }
      }
      lines.push(`${dbPath}: damaged (${damaged})`)
      lines.push(`  moved aside to ${aside}: it holds the run history (pipe ls, show, logs); sqlite3 ${aside} .recover may save some of it`)
    }
  }
  let store: Store
  try {
    store = new Store(dir)
  } catch (e) {
    lines.push(`cannot open the cache: ${errorMessage(e)}`)
    return { lines, ok: false }
  }
  try {
    const { entries, unreadable } = store.indexEntries()
    let restored = 0
    const unusable: Array<string> = []
    for (const e of entries) {
      if (store.lookup(e.key) !== undefined) continue
      const defect = store.entryDefect(e)
      if (defect === undefined) {
        store.restore(e)
        restored++
      } else unusable.push(`${e.node ?? e.key} (${defect})`)
    }
    lines.push(`${store.indexDir}: ${entries.length} cache entries; ${restored} restored into the database, ${entries.length - restored - unusable.length} already there`)
    if (unusable.length > 0) lines.push(`  ${unusable.length} not restorable, recomputed when needed: ${unusable.slice(0, 5).join(", ")}${unusable.length > 5 ? ", ..." : ""}`)
    if (unreadable.length > 0) lines.push(`  ${unreadable.length} unreadable sidecars (ignored): ${unreadable.slice(0, 3).join(", ")}`)
    // Entries published before the cache kept sidecars: written now, so a later loss can be repaired too.
    const bare = store.entriesWithoutSidecar()
    for (const e of bare) store.writeSidecar(e)
    if (bare.length > 0) lines.push(`  ${bare.length} entries had no sidecar (published before pipe kept them): written`)
    return { lines, ok: true }
  } catch (e) {
    lines.push(`rebuilding the entries failed: ${errorMessage(e)}`)
    return { lines, ok: false }
  } finally {
    store.close()
  }
}
