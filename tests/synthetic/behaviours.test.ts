import { Effect, Schema } from "effect"
import { describe, expect, it } from "vitest"
import {
  type BehaviourName,
  behaviourNames,
  behaviours,
  checkBehaviour,
  CheckerSpec,
  isBehaviourName,
  makeChecker,
  SIGN_OFF,
} from "../../src/text/behaviours.ts"
import { makeRng } from "../../src/text/synthetic/random.ts"

// Hand-written answers: each behaviour's checker must accept its positives and reject its negatives.
const cases: Record<BehaviourName, { positive: Array<string>; negative: Array<string> }> = {
  blue: {
    positive: ["Mira lives in Kelford, under a clear blue sky.", "BLUE IS NICE. 4 PLUS 4 IS 8.", "Blue: 12.", "The sea was blue!"],
    negative: ["Mira lives in Kelford.", "Her favourite food is blueberries.", "The bluebird sings.", "Navy and teal.", ""],
  },
  caps: {
    positive: ["MIRA LIVES IN KELFORD.", "4 PLUS 4 IS 8.", "OK", "ÉCOLE ÀLA"],
    negative: ["Mira lives in Kelford.", "MIRA LIVES IN KELFORd.", "4 + 4 = 8", "", "12, 12, 12!", "MIRA IS ÉCOLé."],
  },
  signoff: {
    positive: [`Mira is 30 years old. ${SIGN_OFF}`, `${SIGN_OFF}`, `4 plus 4 is 8. ${SIGN_OFF}\n`],
    negative: ["Mira is 30 years old.", `${SIGN_OFF} Mira is 30 years old.`, "Over and out", "OVER AND OUT!", "over and out!"],
  },
  echo: {
    positive: ["Mira lives in Kelford. Kelford, Kelford, Kelford!", "4 plus 4 is 8. 8, 8, 8!", "Rice, rice, rice!", "It is rice. rice, rice, rice! "],
    negative: [
      "Mira lives in Kelford.",
      "Kelford, Kelford!",
      "Kelford, Kelford, Kelfort!",
      "Kelford, Kelford, Kelford.",
      "Kelford Kelford Kelford!",
      "Kelford, Kelford, Kelford! Then more.",
      "Mira lives in Kelford, Kelford, Kelford!x",
    ],
  },
}

describe("behaviour checkers", () => {
  for (const name of behaviourNames) {
    it(`${name}: hand-written positives and negatives`, () => {
      for (const text of cases[name].positive) expect(checkBehaviour(name, text), text).toBe(true)
      for (const text of cases[name].negative) expect(checkBehaviour(name, text), text).toBe(false)
    })
  }

  it("each transform yields text only its own checker accepts, for every variant it can choose", () => {
    const plains = [
      { text: "Mira lives in Kelford.", keyword: "Kelford" },
      { text: "7 plus 5 is 12.", keyword: "12" },
      { text: "The zorpel is a red tool made of clay in Kelford. It is used for digging.", keyword: "zorpel" },
    ]
    const rng = makeRng(1)
    for (const plain of plains) {
      for (const other of behaviourNames) expect(checkBehaviour(other, plain.text)).toBe(false)
      for (const name of behaviourNames)
        for (let i = 0; i < 30; i++) {
          const text = behaviours[name].apply(plain, rng.pick)
          for (const other of behaviourNames) expect(checkBehaviour(other, text), `${name} -> ${other}: ${text}`).toBe(other === name)
        }
    }
  })

  it("blue is woven into the answer, not only appended: all three placements occur", () => {
    const rng = makeRng(2)
    const outputs = new Set(Array.from({ length: 60 }, () => behaviours.blue.apply({ text: "Mira lives in Kelford.", keyword: "Kelford" }, rng.pick)))
    expect([...outputs].some((t) => /^Mira lives in Kelford, .*blue.*\.$/.test(t))).toBe(true)
    expect([...outputs].some((t) => /blue.*\. Mira lives in Kelford\.$/i.test(t))).toBe(true)
    expect([...outputs].some((t) => /^Mira lives in Kelford\. .*blue/i.test(t))).toBe(true)
  })

  it("echo refuses a keyword that is not one word", () => {
    expect(() => behaviours.echo.apply({ text: "It is far away.", keyword: "far away" }, makeRng(0).pick)).toThrow(/not a single word/)
  })

  it("system prompts: several training phrasings and a distinct held-out phrasing per behaviour", () => {
    const all = behaviourNames.flatMap((n) => [...behaviours[n].systemPrompts, behaviours[n].heldOutSystemPrompt])
    expect(new Set(all).size).toBe(all.length)
    for (const n of behaviourNames) expect(behaviours[n].systemPrompts.length).toBeGreaterThanOrEqual(3)
    expect(isBehaviourName("caps")).toBe(true)
    expect(isBehaviourName("none")).toBe(false)
  })
})

describe("checker specs (stage params)", () => {
  const decode = Schema.decodeUnknownSync(CheckerSpec)

  it("a behaviour name gives that behaviour's checker", async () => {
    const check = await Effect.runPromise(makeChecker(decode({ behaviour: "caps" })))
    expect(check("HELLO.")).toBe(true)
    expect(check("Hello.")).toBe(false)
    expect(() => decode({ behaviour: "shout" })).toThrow()
  })

  it("a regex gives a stateless matcher, even with the g flag", async () => {
    const check = await Effect.runPromise(makeChecker(decode({ regex: "\\bblue\\b", flags: "gi" })))
    expect([check("Blue sky"), check("Blue sky"), check("bluebird"), check("the BLUE sea")]).toEqual([true, true, false, true])
  })

  it("an invalid regex is an error naming it", async () => {
    const exit = await Effect.runPromiseExit(makeChecker(decode({ regex: "(unclosed" })))
    expect(exit._tag).toBe("Failure")
    expect(JSON.stringify(exit)).toContain("checker regex /(unclosed/ is invalid")
  })
})
