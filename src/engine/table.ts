// Sweep tables: one row per sweep point, its coordinates then chosen values, rendered as Markdown
// and CSV (and kept as JSON). Shared by the sweep-table stage (stages/table.ts), which builds one
// from a gather, and `pipe table` (src/cli/table.ts), which builds one from the records.
//
// Values are picked from a JSON value by a path: `klReduction`, `rows.2.kl`, `rows[2].kl`, or
// `rows[variant=baked].behaviour.rate` (the first element whose `variant` is "baked").
import { Data, Schema } from "effect"
import { Artifact } from "./artifact.ts"
import { compareValues } from "./gather.ts"
import { canonicalJson } from "./hash.ts"

/** A path, a column or a sort key that does not fit the values; the message says which and why. */
export class TableError extends Data.TaggedError("TableError")<{ readonly message: string }> {}

/** How a column is shown in Markdown (CSV and JSON keep full values): fixed digits, or a 0..1 rate as a percentage. */
export const ColumnFormat = Schema.Struct({
  name: Schema.String,
  digits: Schema.optionalKey(Schema.Int.check(Schema.isGreaterThanOrEqualTo(0))),
  percent: Schema.optionalKey(Schema.Boolean),
})
export type ColumnFormat = typeof ColumnFormat.Type

export interface Table {
  readonly columns: ReadonlyArray<ColumnFormat>
  /** Cells by column name; a missing or null cell is shown as "-" (Markdown) or empty (CSV). */
  readonly rows: ReadonlyArray<Readonly<Record<string, unknown>>>
}

/** The published form: the table with its Markdown and CSV renderings. `pipe table` recognises it by this type name. */
export const SweepTable = Artifact.json(
  "SweepTable",
  Schema.Struct({
    title: Schema.String,
    columns: Schema.Array(ColumnFormat),
    rows: Schema.Array(Schema.Record(Schema.String, Schema.Unknown)),
    markdown: Schema.String,
    csv: Schema.String,
  }),
)
export type SweepTable = typeof SweepTable.schema.Type

// ---- paths ---------------------------------------------------------------------------------------

type Segment = { readonly key: string } | { readonly index: number } | { readonly field: string; readonly equals: string }

const SEGMENT = /(?:^|\.)([^.[\]]+)|\[(\d+)\]|\[([^\]=]+)=([^\]]*)\]/y

const parsePath = (path: string): ReadonlyArray<Segment> => {
  const segments: Array<Segment> = []
  SEGMENT.lastIndex = 0
  while (SEGMENT.lastIndex < path.length) {
    const at = SEGMENT.lastIndex
    const m = SEGMENT.exec(path)
    if (m === null)
      throw new TableError({ message: `path ${JSON.stringify(path)}: cannot read it at character ${at + 1} (expected name.name, name[2] or name[field=value])` })
    segments.push(m[1] !== undefined ? { key: m[1] } : m[2] !== undefined ? { index: Number(m[2]) } : { field: m[3], equals: m[4] })
  }
  if (segments.length === 0) throw new TableError({ message: "an empty path" })
  return segments
}

const step = (value: unknown, s: Segment): unknown => {
  if (Array.isArray(value)) {
    if ("field" in s) return value.find((e) => typeof e === "object" && e !== null && String((e as Record<string, unknown>)[s.field]) === s.equals)
    const i = "index" in s ? s.index : /^\d+$/.test(s.key) ? Number(s.key) : undefined
    return i === undefined ? undefined : value[i]
  }
  if (typeof value === "object" && value !== null && "key" in s) return (value as Record<string, unknown>)[s.key]
  return undefined
}

/** The value at `path`, or undefined where the path leads nowhere (throws TableError for a malformed path). */
export const pick = (value: unknown, path: string): unknown => parsePath(path).reduce<unknown>((v, s) => (v === undefined ? undefined : step(v, s)), value)

/** Every number in a JSON value with its path (`rows.2.kl`), in document order: the default columns of `pipe table`. */
export const numericLeaves = (value: unknown, prefix = ""): ReadonlyArray<readonly [string, number]> => {
  if (typeof value === "number") return prefix ? [[prefix, value]] : []
  if (typeof value !== "object" || value === null) return []
  return Object.entries(value).flatMap(([k, v]) => numericLeaves(v, prefix ? `${prefix}.${k}` : k))
}

// ---- shaping -------------------------------------------------------------------------------------

const columnNames = (t: Table) => t.columns.map((c) => c.name)

const known = (t: Table, name: string, what: string) => {
  if (!columnNames(t).includes(name)) throw new TableError({ message: `${what} "${name}": no such column (columns: ${columnNames(t).join(", ")})` })
}

/** Keeps the named columns, in the order given. */
export const selectColumns = (t: Table, names: ReadonlyArray<string>): Table => {
  for (const n of names) known(t, n, "column")
  return { columns: names.map((n) => t.columns.find((c) => c.name === n)!), rows: t.rows }
}

/** Sorts by the named columns in turn; `-name` sorts descending. Empty cells go last either way. */
export const sortRows = (t: Table, keys: ReadonlyArray<string>): Table => {
  const parsed = keys.map((k) => (k.startsWith("-") ? { name: k.slice(1), sign: -1 } : { name: k, sign: 1 }))
  for (const k of parsed) known(t, k.name, "sort key")
  const rows = [...t.rows].sort((a, b) => {
    for (const { name, sign } of parsed) {
      const [x, y] = [a[name], b[name]]
      const c = x == null || y == null ? Number(x == null) - Number(y == null) : sign * compareValues(x, y)
      if (c !== 0) return c
    }
    return 0
  })
  return { columns: t.columns, rows }
}

// ---- rendering -----------------------------------------------------------------------------------

/** A 0..1 rate as a percentage: 0.9774 -> "97.7%". */
export const percent = (rate: number, digits = 1): string => `${(100 * rate).toFixed(digits)}%`

const number = (v: number, f: ColumnFormat): string => {
  if (f.percent) return percent(v, f.digits)
  if (f.digits !== undefined) return v.toFixed(f.digits)
  // four significant digits unless the value is an integer: a table is for comparing, not for copying
  return Number.isInteger(v) ? String(v) : String(Number(v.toPrecision(4)))
}

const text = (v: unknown, f: ColumnFormat): string =>
  v === null || v === undefined ? "-"
  : typeof v === "number" ? number(v, f)
  : typeof v === "string" ? v
  : canonicalJson(v)

/** A Markdown table under an optional `# title`; cells have pipes escaped and newlines as spaces. */
export const markdown = (t: Table, title?: string): string => {
  const cell = (s: string) => s.replace(/\|/g, "\\|").replace(/\s*\n\s*/g, " ")
  const line = (cells: ReadonlyArray<string>) => `| ${cells.map(cell).join(" | ")} |`
  return [
    ...(title ? [`# ${title}`, ""] : []),
    line(columnNames(t)),
    line(t.columns.map(() => "---")),
    ...t.rows.map((r) => line(t.columns.map((c) => text(r[c.name], c)))),
    "",
  ].join("\n")
}

/** CSV (RFC 4180): full-precision numbers, empty cells for missing values, non-string values as JSON. */
export const csv = (t: Table): string => {
  const field = (v: unknown) => {
    const s = v === null || v === undefined ? "" : typeof v === "string" ? v : typeof v === "number" ? String(v) : canonicalJson(v)
    return /[",\r\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s
  }
  return [columnNames(t), ...t.rows.map((r) => columnNames(t).map((n) => r[n]))].map((cells) => cells.map(field).join(",")).join("\r\n") + "\r\n"
}
