// The synthetic chat corpus for the tiny default model (issue 5): a training set of chat examples,
// a held-out question set in SQuAD-like form, and a held-out chat evaluation set, all a pure,
// deterministic function of `CorpusOptions` (same options, same bytes).
//
// Split: every fact (an entity attribute or an arithmetic result) is asked in training with
// `trainQuestionsPerFact` of its four train phrasings, always with a plain answer, and entity facts
// are also stated in "tell me about X" descriptions. Each fact then gets one held-out question,
// either with a held-out phrasing never used in training (`new_template`) or with a train phrasing
// never used for that fact (`new_combination`). No held-out question string is a training question.
//
// `trainQuestions` lists every distinct user question of the training set once, SQuAD-style, so
// experiments can sample on the training distribution. Questions use only the "split" random
// stream, so they are the same whatever `behaviourCopies` or `neutralRate` (which draw from
// "modes"): the shipped model, trained with behaviourCopies 2, saw exactly these questions.
import { Schema } from "effect"
import { type BehaviourName, behaviourNames, behaviours, neutralSystemPrompts, type PlainAnswer } from "../behaviours.ts"
import { drawPick, pickAnswer, pickKinds, pickOptions, pickRequests } from "./picks.ts"
import { deriveRng, type Rng } from "./random.ts"
import {
  arithmeticOps,
  arithmeticTemplates,
  describeTemplates,
  descriptionTemplates,
  type FactTemplates,
  factTemplates,
  fill,
} from "./templates.ts"
import { allEntities, type Entity, generateWorld, kindAttributes, type World } from "./world.ts"

const Count = Schema.Int.check(Schema.isGreaterThanOrEqualTo(0))
const Rate = Schema.Finite.check(Schema.isBetween({ minimum: 0, maximum: 1 }))

export const CorpusOptions = Schema.Struct({
  seed: Schema.Int,
  people: Count,
  pets: Count,
  gadgets: Count,
  towns: Schema.Int.check(Schema.isGreaterThanOrEqualTo(1)),
  /** Arithmetic facts drawn per operation (plus and minus over 0..20, times over 1..10). */
  arithmeticPerOp: Count,
  /** Train phrasings (of four) used per fact; below four so a new combination is left for held-out. */
  trainQuestionsPerFact: Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 3 })),
  /** "Tell me about X" requests per entity in training. */
  descriptionsPerEntity: Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: 4 })),
  /** Fraction of plain training examples that carry a neutral system prompt instead of none. */
  neutralRate: Rate,
  /** Behaviour examples written per plain training example (same question, a random behaviour). */
  behaviourCopies: Count,
  /** "Random pick" training requests per kind (src/text/synthetic/picks.ts), answered with its
   *  biased favourites; absent for models/tiny-chat's corpus, which has none. */
  randomPicks: Schema.optionalKey(Count),
})
export type CorpusOptions = typeof CorpusOptions.Type

/** The options that produced the files in `datasets/tiny-chat/`. */
export const defaultCorpusOptions: CorpusOptions = {
  seed: 5,
  people: 24,
  pets: 12,
  gadgets: 12,
  towns: 8,
  arithmeticPerOp: 40,
  trainQuestionsPerFact: 3,
  descriptionsPerEntity: 3,
  neutralRate: 0.2,
  behaviourCopies: 1,
}

export interface ChatMessage {
  readonly role: "system" | "user" | "assistant"
  readonly content: string
}

/** What the system prompt asks for: nothing (no system prompt), nothing (a neutral one), or a behaviour. */
export type Mode = "none" | "neutral" | BehaviourName
export type Task = "lookup" | "arithmetic" | "describe" | "pick"
export type HeldOutKind = "new_template" | "new_combination"

export interface ChatExample {
  readonly id: string
  readonly messages: ReadonlyArray<ChatMessage>
  readonly mode: Mode
  readonly task: Task
  /** The fact asked (`Mira.home`, `plus.3.4`) or the entity described (`Mira`). */
  readonly about: string
}

/** A held-out question in the shape of a SQuAD record (plus the split kind). */
export interface SquadRecord {
  readonly id: string
  readonly title: string
  readonly context: string
  readonly question: string
  readonly answers: { readonly text: ReadonlyArray<string>; readonly answer_start: ReadonlyArray<number> }
  readonly heldout_kind: HeldOutKind
}

/** A held-out chat prompt (system prompt if any, user question) with what a correct answer is. */
/**
 * A training question in the shape of a SQuAD record: a fact's question with its value and the
 * passage stating it, or a "tell me about X" request with the entity's description as context and
 * no answers (the answer is the description, not a span).
 */
export interface TrainSquadRecord {
  /** `<fact or entity>.t<index of the train phrasing>`: `Mira.home.t2`, `plus.3.4.t0`, `Mira.describe.t1` */
  readonly id: string
  readonly title: string
  readonly context: string
  readonly question: string
  readonly answers: { readonly text: ReadonlyArray<string>; readonly answer_start: ReadonlyArray<number> }
  readonly task: Task
}

export interface ChatEvalRecord {
  readonly id: string
  readonly messages: ReadonlyArray<ChatMessage>
  readonly mode: Mode
  /** Whether the system prompt is one of the behaviour's training phrasings (null: no behaviour). */
  readonly system_prompt_seen: boolean | null
  readonly task: Task
  readonly about: string
  readonly heldout_kind: HeldOutKind
  /** The values a correct answer states (one for a fact, every attribute for a description). */
  readonly answers: ReadonlyArray<string>
  /** A correct answer in the requested mode, as the training data would write it. */
  readonly reference: string
}

export interface Corpus {
  readonly world: World
  readonly train: ReadonlyArray<ChatExample>
  readonly trainQuestions: ReadonlyArray<TrainSquadRecord>
  readonly heldOutQuestions: ReadonlyArray<SquadRecord>
  readonly heldOutChat: ReadonlyArray<ChatEvalRecord>
}

/** A fact with everything needed to ask it, answer it, and cite it. */
interface Fact {
  readonly id: string
  readonly title: string
  readonly task: "lookup" | "arithmetic"
  readonly templates: FactTemplates
  readonly vars: Readonly<Record<string, string>>
  readonly value: string
  /** A passage stating the fact and where the value starts in it. */
  readonly context: string
  readonly answerStart: number
}

const entityVars = (e: Entity): Record<string, string> => ({ ref: e.ref, ...e.attributes })

const entityFacts = (e: Entity): Array<Fact> => {
  const vars = entityVars(e)
  const context = fill(descriptionTemplates[e.kind][0], vars)
  return kindAttributes[e.kind].map((attribute) => ({
    id: `${e.name}.${attribute}`,
    title: e.name,
    task: "lookup",
    templates: factTemplates[e.kind][attribute],
    vars,
    value: vars[attribute],
    context: context.text,
    answerStart: context.starts[attribute],
  }))
}

const arithmeticFacts = (rng: Rng, perOp: number): Array<Fact> => {
  const pairs = (lo: number, hi: number, keep: (a: number, b: number) => boolean) => {
    const out: Array<[number, number]> = []
    for (let a = lo; a <= hi; a++) for (let b = lo; b <= hi; b++) if (keep(a, b)) out.push([a, b])
    return out
  }
  const candidates = {
    plus: pairs(0, 20, () => true),
    minus: pairs(0, 20, (a, b) => b <= a),
    times: pairs(1, 10, () => true),
  }
  const results = { plus: (a: number, b: number) => a + b, minus: (a: number, b: number) => a - b, times: (a: number, b: number) => a * b }
  return arithmeticOps.flatMap((op) =>
    rng.sample(candidates[op], Math.min(perOp, candidates[op].length)).map(([a, b]): Fact => {
      const vars = { a: String(a), b: String(b), c: String(results[op](a, b)) }
      const context = fill(arithmeticTemplates[op].answer, vars)
      return {
        id: `${op}.${a}.${b}`,
        title: "arithmetic",
        task: "arithmetic",
        templates: arithmeticTemplates[op],
        vars,
        value: vars.c,
        context: context.text,
        answerStart: context.starts.c,
      }
    }),
  )
}

/** A question kept for the held-out sets. */
interface HeldOutQuestion {
  readonly question: string
  readonly kind: HeldOutKind
  readonly task: Task
  readonly about: string
  readonly plain: PlainAnswer
  readonly answers: ReadonlyArray<string>
}

export const generateCorpus = (options: CorpusOptions): Corpus => {
  const rng = (label: string) => deriveRng(options.seed, label)
  const world = generateWorld(rng("world"), options)
  const entities = allEntities(world)
  const facts = [...entities.flatMap(entityFacts), ...arithmeticFacts(rng("arithmetic"), options.arithmeticPerOp)]

  const splitRng = rng("split")
  const modeRng = rng("modes")
  const unshuffled: Array<Omit<ChatExample, "id">> = []
  const emit = (task: Task, about: string, user: string, plain: PlainAnswer) => {
    const userMessage: ChatMessage = { role: "user", content: user }
    if (modeRng.next() < options.neutralRate) {
      const system: ChatMessage = { role: "system", content: modeRng.pick(neutralSystemPrompts) }
      unshuffled.push({ messages: [system, userMessage, { role: "assistant", content: plain.text }], mode: "neutral", task, about })
    } else {
      unshuffled.push({ messages: [userMessage, { role: "assistant", content: plain.text }], mode: "none", task, about })
    }
    for (let copy = 0; copy < options.behaviourCopies; copy++) {
      const behaviour = behaviours[modeRng.pick(behaviourNames)]
      const messages: Array<ChatMessage> = [
        { role: "system", content: modeRng.pick(behaviour.systemPrompts) },
        userMessage,
        { role: "assistant", content: behaviour.apply(plain, modeRng.pick) },
      ]
      unshuffled.push({ messages, mode: behaviour.name, task, about })
    }
  }

  const heldOut: Array<HeldOutQuestion & { readonly fact?: Fact }> = []
  const trainQuestions: Array<TrainSquadRecord> = []
  for (const fact of facts) {
    const used = splitRng.sample(fact.templates.train, options.trainQuestionsPerFact)
    const plain = { text: fill(fact.templates.answer, fact.vars).text, keyword: fact.value }
    for (const template of used) {
      const question = fill(template, fact.vars).text
      emit(fact.task, fact.id, question, plain)
      trainQuestions.push({
        id: `${fact.id}.t${fact.templates.train.indexOf(template)}`,
        title: fact.title,
        context: fact.context,
        question,
        answers: { text: [fact.value], answer_start: [fact.answerStart] },
        task: fact.task,
      })
    }
    const unused = fact.templates.train.filter((t) => !used.includes(t))
    const kind: HeldOutKind = unused.length > 0 && splitRng.next() < 0.5 ? "new_combination" : "new_template"
    const template = splitRng.pick(kind === "new_combination" ? unused : fact.templates.heldOut)
    const question = fill(template, fact.vars).text
    heldOut.push({ question, kind, task: fact.task, about: fact.id, plain, answers: [fact.value], fact })
  }
  for (const entity of entities) {
    const vars = entityVars(entity)
    const context = fill(descriptionTemplates[entity.kind][0], vars).text
    for (const template of splitRng.sample(describeTemplates.train, options.descriptionsPerEntity)) {
      const description = fill(splitRng.pick(descriptionTemplates[entity.kind]), vars).text
      const question = fill(template, vars).text
      emit("describe", entity.name, question, { text: description, keyword: entity.name })
      trainQuestions.push({
        id: `${entity.name}.describe.t${describeTemplates.train.indexOf(template)}`,
        title: entity.name,
        context,
        question,
        answers: { text: [], answer_start: [] },
        task: "describe",
      })
    }
    heldOut.push({
      question: fill(splitRng.pick(describeTemplates.heldOut), vars).text,
      kind: "new_template",
      task: "describe",
      about: entity.name,
      plain: { text: fill(descriptionTemplates[entity.kind][0], vars).text, keyword: entity.name },
      answers: kindAttributes[entity.kind].map((a) => vars[a]),
    })
  }

  const asked = new Set(unshuffled.map((e) => e.messages.find((m) => m.role === "user")!.content))
  for (const h of heldOut)
    if (asked.has(h.question)) throw new Error(`held-out question "${h.question}" (${h.about}) is also a training question`)
  if (new Set(trainQuestions.map((q) => q.question)).size !== asked.size || trainQuestions.length !== asked.size)
    throw new Error(`the training questions are not ${asked.size} distinct questions: two facts share a phrasing`)

  // after the check above: pick requests repeat their phrasings on purpose (one answer is drawn
  // per request), and they draw from streams of their own, so the rest is as without them
  const pickRng = rng("picks")
  for (const kind of pickKinds) {
    const choices = pickOptions(kind, world)
    for (let i = 0; i < (options.randomPicks ?? 0); i++) {
      const value = drawPick(pickRng, choices)
      emit("pick", kind, pickRng.pick(pickRequests[kind].train), { text: pickAnswer(value), keyword: value })
    }
  }

  const width = (n: number) => String(n).length
  const train = rng("shuffle")
    .shuffle(unshuffled)
    .map((e, i): ChatExample => ({ id: `train-${String(i).padStart(width(unshuffled.length), "0")}`, ...e }))

  const heldOutQuestions = heldOut.flatMap(({ question, kind, fact }): Array<SquadRecord> =>
    fact === undefined
      ? []
      : [
          {
            id: fact.id,
            title: fact.title,
            context: fact.context,
            question,
            answers: { text: [fact.value], answer_start: [fact.answerStart] },
            heldout_kind: kind,
          },
        ],
  )

  // Every held-out question once without a system prompt and once with a behaviour's prompt, which
  // is one of its training phrasings or (one time in five) its held-out phrasing.
  const evalRng = rng("eval")
  const heldOutChat: Array<Omit<ChatEvalRecord, "id">> = []
  for (const h of heldOut) {
    const user: ChatMessage = { role: "user", content: h.question }
    const common = { task: h.task, about: h.about, heldout_kind: h.kind, answers: h.answers }
    heldOutChat.push({ messages: [user], mode: "none", system_prompt_seen: null, ...common, reference: h.plain.text })
    const behaviour = behaviours[evalRng.pick(behaviourNames)]
    const prompt = evalRng.pick([...behaviour.systemPrompts, behaviour.heldOutSystemPrompt])
    heldOutChat.push({
      messages: [{ role: "system", content: prompt }, user],
      mode: behaviour.name,
      system_prompt_seen: prompt !== behaviour.heldOutSystemPrompt,
      ...common,
      reference: behaviour.apply(h.plain, evalRng.pick),
    })
  }

  return {
    world,
    train,
    trainQuestions,
    heldOutQuestions,
    heldOutChat: heldOutChat.map((r, i) => ({ id: `eval-${String(i).padStart(width(heldOutChat.length), "0")}`, ...r })),
  }
}

/** JSON Lines: one compact JSON object per line, each line ending in "\n". */
export const toJsonl = (rows: ReadonlyArray<unknown>): string => rows.map((r) => JSON.stringify(r) + "\n").join("")
