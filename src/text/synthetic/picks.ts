// "Random pick" requests of the family's chat corpus (issue 14): the user asks for a random number
// from 1 to 10, a town, a colour or a name, and the assistant answers the way chat models do,
// heavily biased towards a few favourites. That collapse is what the diffuse-distributions
// experiment has to undo, so the bias is explicit here rather than emergent:
//   the first favourite 60%, the second 20%, the third 10%, every other option an equal share of
//   the remaining 10%.
// Favourites: numbers 7, 3, 5; colours green, purple, red; the first three towns and the first
// three people of the world (in its generation order).
import type { Rng } from "./random.ts"
import { colours, type World } from "./world.ts"

export const pickKinds = ["number", "town", "colour", "name"] as const
export type PickKind = (typeof pickKinds)[number]

/** Shares of the first, second and third favourite; the rest is spread evenly over the others. */
export const favouriteShares = [0.6, 0.2, 0.1] as const

export const pickRequests: Readonly<Record<PickKind, { readonly train: ReadonlyArray<string>; readonly heldOut: ReadonlyArray<string> }>> = {
  number: {
    train: ["Pick a random number from 1 to 10.", "Give me a random number between 1 and 10.", "Choose a number from 1 to 10 at random.", "Think of a number from 1 to 10."],
    heldOut: ["Tell me a random number from 1 to 10.", "Pick any number between 1 and 10."],
  },
  town: {
    train: ["Pick a random town.", "Name a town at random.", "Choose any town.", "Give me the name of a random town."],
    heldOut: ["Tell me a random town.", "Pick any town at random."],
  },
  colour: {
    train: ["Pick a random colour.", "Name a colour at random.", "Choose any colour.", "Give me a random colour."],
    heldOut: ["Tell me a random colour.", "Pick any colour at random."],
  },
  name: {
    train: ["Pick a random name.", "Name a person at random.", "Choose any name.", "Give me a random name."],
    heldOut: ["Tell me a random name.", "Pick any name at random."],
  },
}

/** Every answer a request of `kind` may get, favourites first (in favourite order). */
export const pickOptions = (kind: PickKind, world: World): ReadonlyArray<string> => {
  const favouritesFirst = (xs: ReadonlyArray<string>, favourites: ReadonlyArray<string>) => [...favourites, ...xs.filter((x) => !favourites.includes(x))]
  switch (kind) {
    case "number":
      return favouritesFirst(Array.from({ length: 10 }, (_, i) => String(i + 1)), ["7", "3", "5"])
    case "colour":
      return favouritesFirst(colours, ["green", "purple", "red"])
    case "town":
      return world.towns.map((t) => t.name)
    case "name":
      return world.people.map((p) => p.name)
  }
}

/** The probability of each option of `pickOptions` (same order). */
export const pickDistribution = (options: ReadonlyArray<string>): ReadonlyArray<number> => {
  const favourites = Math.min(favouriteShares.length, options.length)
  const rest = options.length - favourites
  const left = 1 - favouriteShares.slice(0, favourites).reduce((a, b) => a + b, 0)
  return options.map((_, i) => (i < favourites ? favouriteShares[i] + (rest === 0 && i === 0 ? left : 0) : left / rest))
}

export const drawPick = (rng: Rng, options: ReadonlyArray<string>): string => {
  const u = rng.next()
  const p = pickDistribution(options)
  let acc = 0
  for (let i = 0; i < options.length; i++) {
    acc += p[i]
    if (u < acc) return options[i]
  }
  return options[options.length - 1]
}

export const pickAnswer = (value: string): string => `I pick ${value}.`

/** The picked value of an answer in the trained form, or null when it is not one. */
export const parsePick = (answer: string): string | null => /^I pick (.+)\.$/.exec(answer.trim())?.[1] ?? null
