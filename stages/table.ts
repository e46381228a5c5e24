// Stage `sweep-table`: a gather of any JSON node turned into one table, a row per sweep point with
// its coordinates then the chosen values, published as Markdown, CSV and JSON:
//
//   const table = sweepTable({ title: "LoRA sweep", columns: [{ name: "KL", path: "rows[variant=baked].kl" }] }, { points: gather(comparison) })
//   pipeline("sweep", { table }, { publish: publishTable(table, "sweep"), print: ["sweep.md"] })
//
// Values come from the points' JSON outputs only: the table is cached by its inputs' content, and
// recorded metrics (timings, throughput) are not part of that content. `pipe table` shows metrics.
import { Effect, Schema } from "effect"
import { AnyJson, gathered, stage, type Node } from "../src/engine/index.ts"
import { ColumnFormat, SweepTable, TableError, csv, markdown, pick, sortRows, type Table } from "../src/engine/table.ts"
import { errorMessage } from "../src/engine/errors.ts"
import { canonicalJson } from "../src/engine/hash.ts"

export { SweepTable }

const Column = Schema.Struct({
  ...ColumnFormat.fields,
  /** where the value is in each point's JSON output: `klReduction`, `rows[variant=baked].kl`, `rows.2.kl` */
  path: Schema.String,
})

export const sweepTable = stage({
  name: "sweep-table",
  version: 1,
  params: Schema.Struct({
    title: Schema.String,
    /** the coordinate columns, in order (default: every swept param, by name) */
    coordinates: Schema.optionalKey(Schema.Array(Schema.String)),
    columns: Schema.Array(Column),
    /** column names to sort by, `-name` descending (default: by coordinates) */
    sort: Schema.optionalKey(Schema.Array(Schema.String)),
  }),
  inputs: { points: gathered(AnyJson) },
  output: SweepTable,
  run: ({ params, inputs }) =>
    Effect.try({
      try: (): SweepTable => {
        const swept = [...new Set(inputs.points.flatMap((p) => Object.keys(p.coords)))].sort()
        const coordinates = params.coordinates ?? swept
        for (const c of coordinates)
          if (!swept.includes(c)) throw new TableError({ message: `coordinate "${c}" is not swept (coordinates: ${swept.join(", ") || "none"})` })
        const clash = params.columns.find((c) => coordinates.includes(c.name))
        if (clash) throw new TableError({ message: `column "${clash.name}" has the name of a coordinate; rename it` })
        const rows = inputs.points.map((p) => ({
          ...Object.fromEntries(coordinates.map((c) => [c, p.coords[c]])),
          ...Object.fromEntries(
            params.columns.map((c) => {
              const v = pick(p.value, c.path)
              if (v === undefined) throw new TableError({ message: `column "${c.name}": nothing at ${JSON.stringify(c.path)} in the output of the point ${canonicalJson(p.coords)}` })
              return [c.name, v]
            }),
          ),
        }))
        const unsorted: Table = { columns: [...coordinates.map((name) => ({ name })), ...params.columns.map(({ path: _, ...format }) => format)], rows }
        const table = params.sort === undefined ? unsorted : sortRows(unsorted, params.sort)
        return { title: params.title, ...table, markdown: markdown(table, params.title), csv: csv(table) }
      },
      catch: (e) => (e instanceof TableError ? e : new TableError({ message: errorMessage(e) })),
    }),
})

/** Publish entries for a sweep table: `<stem>.md`, `<stem>.csv` and `<stem>.json` (the rows without the renderings). */
export const publishTable = <S extends string>(table: Node<typeof SweepTable>, stem: S) =>
  ({
    [`${stem}.md`]: { from: table, as: (t: SweepTable) => t.markdown },
    [`${stem}.csv`]: { from: table, as: (t: SweepTable) => t.csv },
    [`${stem}.json`]: { from: table, as: ({ markdown: _, csv: __, ...rest }: SweepTable) => rest },
  }) as { readonly [F in `${S}.md` | `${S}.csv` | `${S}.json`]: { readonly from: Node<typeof SweepTable>; readonly as: (t: SweepTable) => unknown } }
