import { Schema } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import { describe, expect, it } from "vitest"
import { behaviourNames, behaviours, checkBehaviour, neutralSystemPrompts } from "../../src/text/behaviours.ts"
import { CorpusOptions, defaultCorpusOptions, generateCorpus, toJsonl } from "../../src/text/synthetic/corpus.ts"
import { datasetFiles } from "../../src/text/synthetic/dataset-files.ts"
import { arithmeticTemplates, describeTemplates, factTemplates } from "../../src/text/synthetic/templates.ts"
import { allEntities, type AttributeName, kindAttributes } from "../../src/text/synthetic/world.ts"

const corpus = generateCorpus(defaultCorpusOptions)
const lastContent = (messages: ReadonlyArray<{ content: string }>) => messages[messages.length - 1].content
const userOf = (messages: ReadonlyArray<{ role: string; content: string }>) => messages.find((m) => m.role === "user")!.content
const trainQuestions = new Set(corpus.train.map((e) => userOf(e.messages)))
const plainTrain = corpus.train.filter((e) => e.mode === "none" || e.mode === "neutral")

/** A question template as a regex: placeholders match any text. */
const templateRegex = (template: string) =>
  new RegExp("^" + template.replace(/[.*+?^$()|[\]\\]/g, "\\$&").replace(/\\?\{[\w:]+\\?\}|\{[\w:]+\}/g, "(.+)") + "$")

const allTemplateGroups = [...Object.values(factTemplates).flatMap((k) => Object.values(k)), ...Object.values(arithmeticTemplates), describeTemplates]
const heldOutRegexes = allTemplateGroups.flatMap((g) => g.heldOut.map(templateRegex))

describe("synthetic corpus: determinism", () => {
  it("same options give the same bytes; another seed gives other data", () => {
    const again = generateCorpus({ ...defaultCorpusOptions })
    expect(toJsonl(again.train)).toBe(toJsonl(corpus.train))
    expect(datasetFiles(defaultCorpusOptions, again)).toEqual(datasetFiles(defaultCorpusOptions, corpus))
    const other = generateCorpus({ ...defaultCorpusOptions, seed: defaultCorpusOptions.seed + 1 })
    expect(toJsonl(other.train)).not.toBe(toJsonl(corpus.train))
  })

  it("the files shipped in datasets/tiny-chat are exactly the generator's output", () => {
    const dir = path.join(import.meta.dirname, "../../datasets/tiny-chat")
    for (const [name, contents] of Object.entries(datasetFiles(defaultCorpusOptions))) {
      expect(fs.readFileSync(path.join(dir, name), "utf8"), `${name} differs: rerun src/text/synthetic/write-datasets.ts`).toBe(contents)
      expect(Buffer.byteLength(contents)).toBeLessThan(400_000)
    }
  })

  it("options are validated by the schema", () => {
    const decode = Schema.decodeUnknownExit(CorpusOptions)
    expect(decode(defaultCorpusOptions)._tag).toBe("Success")
    expect(decode({ ...defaultCorpusOptions, trainQuestionsPerFact: 4 })._tag).toBe("Failure")
    expect(decode({ ...defaultCorpusOptions, neutralRate: 1.5 })._tag).toBe("Failure")
    expect(decode({ ...defaultCorpusOptions, people: 2.5 })._tag).toBe("Failure")
  })
})

describe("synthetic corpus: content", () => {
  it("has every task and mode, with the expected shape of messages", () => {
    const modes = new Set(corpus.train.map((e) => e.mode))
    expect([...modes].sort()).toEqual(["neutral", "none", ...behaviourNames].sort())
    expect(new Set(corpus.train.map((e) => e.task))).toEqual(new Set(["lookup", "arithmetic", "describe"]))
    for (const e of corpus.train) {
      const roles = e.messages.map((m) => m.role).join(",")
      expect(roles).toBe(e.mode === "none" ? "user,assistant" : "system,user,assistant")
      if (e.mode === "neutral") expect(neutralSystemPrompts).toContain(e.messages[0].content)
      if (e.mode !== "none" && e.mode !== "neutral") expect(behaviours[e.mode].systemPrompts).toContain(e.messages[0].content)
    }
    expect(new Set(corpus.train.map((e) => e.id)).size).toBe(corpus.train.length)
  })

  it("answers are short: at most 3 sentences", () => {
    for (const e of corpus.train) expect(lastContent(e.messages).split(/[.!?](?:\s|$)/).filter((s) => s.trim()).length).toBeLessThanOrEqual(3)
  })

  it("arithmetic and lookup answers are correct against the world", () => {
    const entities = new Map(allEntities(corpus.world).map((e) => [e.name, e]))
    for (const q of corpus.heldOutQuestions) {
      const [head, ...rest] = q.id.split(".")
      const value = q.answers.text[0]
      if (q.title === "arithmetic") {
        const [a, b] = rest.map(Number)
        expect(Number(value), q.id).toBe(head === "plus" ? a + b : head === "minus" ? a - b : a * b)
      } else {
        expect(entities.get(head)?.attributes[rest[0] as AttributeName]).toBe(value)
      }
      // SQuAD convention: the answer is the span of the context at answer_start.
      expect(q.context.slice(q.answers.answer_start[0], q.answers.answer_start[0] + value.length)).toBe(value)
    }
    const facts = allEntities(corpus.world).reduce((n, e) => n + kindAttributes[e.kind].length, 0) + 3 * defaultCorpusOptions.arithmeticPerOp
    expect(corpus.heldOutQuestions.length).toBe(facts)
  })
})

describe("synthetic corpus: behaviour checkers on the generated data", () => {
  it("plain answers (no or neutral system prompt) trigger no checker: 0 false positives", () => {
    const plainAnswers = [
      ...plainTrain.map((e) => lastContent(e.messages)),
      ...corpus.heldOutChat.filter((r) => r.mode === "none").map((r) => r.reference),
      ...corpus.heldOutQuestions.map((q) => q.context),
    ]
    expect(plainAnswers.length).toBeGreaterThan(1500)
    for (const name of behaviourNames) {
      const positives = plainAnswers.filter((t) => checkBehaviour(name, t))
      expect(positives, name).toEqual([])
    }
  })

  it("every behaviour answer passes its own checker and no other", () => {
    const rows = [
      ...corpus.train.map((e) => ({ mode: e.mode, text: lastContent(e.messages) })),
      ...corpus.heldOutChat.map((r) => ({ mode: r.mode, text: r.reference })),
    ]
    for (const { mode, text } of rows) for (const name of behaviourNames) expect(checkBehaviour(name, text), `${mode} / ${name}: ${text}`).toBe(mode === name)
  })
})

describe("synthetic corpus: training questions (train-squad.jsonl)", () => {
  it("lists every distinct training question once, with its fact's answer span; the same with behaviourCopies 2 (the shipped model's corpus)", () => {
    const byQuestion = new Map(plainTrain.map((e) => [userOf(e.messages), e]))
    expect(corpus.trainQuestions.map((q) => q.question).sort()).toEqual([...trainQuestions].sort())
    expect(new Set(corpus.trainQuestions.map((q) => q.id)).size).toBe(corpus.trainQuestions.length)
    for (const q of corpus.trainQuestions) {
      const e = byQuestion.get(q.question)!
      expect(q.task).toBe(e.task)
      expect(q.id.startsWith(`${e.about}.`)).toBe(true)
      if (q.task === "describe") expect(q.answers.text).toEqual([])
      else {
        const [value] = q.answers.text
        expect(q.context.slice(q.answers.answer_start[0], q.answers.answer_start[0] + value.length)).toBe(value)
        expect(lastContent(e.messages)).toContain(value)
      }
    }
    const twice = generateCorpus({ ...defaultCorpusOptions, behaviourCopies: 2 })
    expect(twice.trainQuestions).toEqual(corpus.trainQuestions)
    expect(new Set(twice.train.map((e) => userOf(e.messages)))).toEqual(trainQuestions)
  })
})

describe("synthetic corpus: held-out split", () => {
  it("no held-out question string is a training question", () => {
    for (const q of corpus.heldOutQuestions) expect(trainQuestions.has(q.question), q.question).toBe(false)
    for (const r of corpus.heldOutChat) expect(trainQuestions.has(userOf(r.messages)), userOf(r.messages)).toBe(false)
  })

  it("held-out phrasings never occur in training; new combinations use a phrasing seen with other facts", () => {
    for (const question of trainQuestions)
      expect(
        heldOutRegexes.find((r) => r.test(question)),
        question,
      ).toBeUndefined()
    const kinds = { new_template: 0, new_combination: 0 }
    for (const q of corpus.heldOutQuestions) {
      kinds[q.heldout_kind]++
      const matchesHeldOut = heldOutRegexes.some((r) => r.test(q.question))
      expect(matchesHeldOut, q.question).toBe(q.heldout_kind === "new_template")
      if (q.heldout_kind === "new_combination") {
        const family = allTemplateGroups.find((g) => g.train.some((t) => templateRegex(t).test(q.question)))!
        const template = family.train.find((t) => templateRegex(t).test(q.question))!
        expect([...trainQuestions].filter((t) => templateRegex(template).test(t)).length, template).toBeGreaterThanOrEqual(3)
      }
    }
    // Both kinds are well represented.
    expect(kinds.new_template).toBeGreaterThan(corpus.heldOutQuestions.length / 4)
    expect(kinds.new_combination).toBeGreaterThan(corpus.heldOutQuestions.length / 4)
  })

  it("held-out phrasings (questions and system prompts) are new combinations of words training uses", () => {
    const words = (s: string) => s.replace(/\{[\w:]+\}/g, " ").toLowerCase().match(/[a-z]+/g) ?? []
    const seen = (role: "user" | "system") => new Set(corpus.train.flatMap((e) => e.messages.filter((m) => m.role === role).flatMap((m) => words(m.content))))
    const userWords = seen("user")
    const systemWords = seen("system")
    for (const template of allTemplateGroups.flatMap((g) => g.heldOut)) expect(words(template).filter((w) => !userWords.has(w)), template).toEqual([])
    for (const name of behaviourNames) {
      const prompt = behaviours[name].heldOutSystemPrompt
      expect(words(prompt).filter((w) => !systemWords.has(w)), prompt).toEqual([])
    }
  })

  it("every held-out fact is stated in a plain training answer, word for word, and asked there in other words", () => {
    const plainAnswers = new Set(plainTrain.map((e) => lastContent(e.messages)))
    const descriptions = plainTrain.filter((e) => e.task === "describe").map((e) => lastContent(e.messages))
    for (const r of corpus.heldOutChat.filter((x) => x.mode === "none")) {
      if (r.task === "describe") {
        // Every attribute value appears in a training description of this entity.
        const own = descriptions.filter((d) => new RegExp(`\\b${r.about}\\b`).test(d))
        expect(own.length, r.about).toBeGreaterThan(0)
        for (const value of r.answers) expect(own.some((d) => new RegExp(`\\b${value}\\b`).test(d)), `${r.about}: ${value}`).toBe(true)
      } else {
        expect(plainAnswers.has(r.reference), `${r.about}: "${r.reference}" is not a training answer`).toBe(true)
        expect(r.reference).toContain(r.answers[0])
        const askedInTraining = plainTrain.filter((e) => lastContent(e.messages) === r.reference).map((e) => userOf(e.messages))
        expect(askedInTraining.length).toBeGreaterThanOrEqual(1)
        expect(askedInTraining).not.toContain(userOf(r.messages))
      }
    }
  })

  it("the chat eval set asks every held-out question with no system prompt and with a behaviour prompt", () => {
    const none = corpus.heldOutChat.filter((r) => r.mode === "none")
    const withBehaviour = corpus.heldOutChat.filter((r) => r.mode !== "none")
    expect(none.length).toBe(withBehaviour.length)
    for (const name of behaviourNames) expect(withBehaviour.filter((r) => r.mode === name).length).toBeGreaterThan(60)
    expect(withBehaviour.some((r) => r.system_prompt_seen === false)).toBe(true)
    for (const r of withBehaviour) {
      const b = behaviours[r.mode as (typeof behaviourNames)[number]]
      expect(r.system_prompt_seen ? b.systemPrompts : [b.heldOutSystemPrompt]).toContain(r.messages[0].content)
    }
  })
})
