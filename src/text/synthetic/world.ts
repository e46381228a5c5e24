// The small made-up world the synthetic chat corpus talks about: people, their pets, invented
// gadgets and towns, each with a few attributes. Names are built from syllables so that they are
// not English words, and the value lists are short so the vocabulary stays small.
//
// No value or name contains "blue": the `blue` behaviour's checker must be false on plain answers.
import type { Rng } from "./random.ts"

export const entityKinds = ["person", "pet", "gadget", "town"] as const
export type EntityKind = (typeof entityKinds)[number]

export const colours = ["red", "green", "yellow", "orange", "purple", "pink", "brown", "grey", "white", "black", "silver", "gold"]
export const foods = ["plums", "bread", "rice", "soup", "cheese", "apples", "noodles", "pears", "honey", "beans", "carrots", "fish"]
export const jobs = ["baker", "teacher", "farmer", "painter", "doctor", "sailor", "singer", "builder", "tailor", "potter", "gardener", "pilot"]
export const species = ["cat", "dog", "owl", "fox", "goat", "horse", "rabbit", "duck", "frog", "mouse", "otter", "parrot"]
export const materials = ["wood", "glass", "brass", "stone", "clay", "iron", "paper", "copper"]
export const purposes = ["counting", "singing", "digging", "cooking", "fishing", "sewing", "painting", "cleaning", "reading", "climbing"]
export const regions = ["north", "south", "east", "west"]
export const famousFor = ["bridges", "bells", "markets", "gardens", "boats", "towers", "fountains", "bakeries", "mills", "lanterns"]

/** Attribute names per entity kind, in the order the world generator draws them. */
export const kindAttributes = {
  person: ["age", "home", "food", "favouriteColour", "job"],
  pet: ["species", "colour", "home", "owner"],
  gadget: ["colour", "material", "purpose", "madeIn"],
  town: ["region", "famousFor"],
} as const satisfies Record<EntityKind, ReadonlyArray<string>>

export type AttributeName = (typeof kindAttributes)[EntityKind][number]

export interface Entity {
  readonly kind: EntityKind
  /** "Mira", "Tok", "zorpel", "Kelford": one word, unique in the world. */
  readonly name: string
  /** How a sentence refers to it mid-sentence: "Mira", "the zorpel". */
  readonly ref: string
  readonly attributes: Readonly<Partial<Record<AttributeName, string>>>
}

export interface World {
  readonly people: ReadonlyArray<Entity>
  readonly pets: ReadonlyArray<Entity>
  readonly gadgets: ReadonlyArray<Entity>
  readonly towns: ReadonlyArray<Entity>
}

export interface WorldSize {
  readonly people: number
  readonly pets: number
  readonly gadgets: number
  readonly towns: number
}

const onsets = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gr", "st", "tr", "sh"]
const vowels = ["a", "e", "i", "o", "u"]
const codas = ["n", "r", "l", "s", "k", "m", "x"]
const townSuffixes = ["ford", "by", "ton", "mere", "wick", "dale"]
const gadgetSuffixes = ["el", "et", "ix", "op", "ump"]

const capitalize = (s: string): string => s.charAt(0).toUpperCase() + s.slice(1)
const syllable = (rng: Rng): string => rng.pick(onsets) + rng.pick(vowels)

const nameMakers: Record<EntityKind, (rng: Rng) => string> = {
  person: (rng) => capitalize(syllable(rng) + syllable(rng) + (rng.next() < 0.4 ? rng.pick(codas) : "")),
  pet: (rng) => capitalize(syllable(rng) + rng.pick(codas)),
  gadget: (rng) => syllable(rng) + rng.pick(codas) + rng.pick(gadgetSuffixes),
  town: (rng) => capitalize(syllable(rng) + rng.pick(codas) + rng.pick(townSuffixes)),
}

const reservedWords = new Set([...colours, ...foods, ...jobs, ...species, ...materials, ...purposes, ...regions, ...famousFor])

/** Draws `n` names of a kind that are new to `taken` (which it extends). */
const drawNames = (rng: Rng, kind: EntityKind, n: number, taken: Set<string>): Array<string> => {
  const names: Array<string> = []
  for (let attempts = 0; names.length < n; attempts++) {
    if (attempts > 1000 * (n + 1)) throw new Error(`cannot draw ${n} distinct ${kind} names`)
    const name = nameMakers[kind](rng)
    const key = name.toLowerCase()
    if (taken.has(key) || reservedWords.has(key) || key.includes("blue")) continue
    taken.add(key)
    names.push(name)
  }
  return names
}

export const generateWorld = (rng: Rng, size: WorldSize): World => {
  const taken = new Set<string>()
  const townNames = drawNames(rng, "town", size.towns, taken)
  const personNames = drawNames(rng, "person", size.people, taken)
  const petNames = drawNames(rng, "pet", size.pets, taken)
  const gadgetNames = drawNames(rng, "gadget", size.gadgets, taken)

  const towns = townNames.map((name): Entity => ({
    kind: "town",
    name,
    ref: name,
    attributes: { region: rng.pick(regions), famousFor: rng.pick(famousFor) },
  }))
  const people = personNames.map((name): Entity => ({
    kind: "person",
    name,
    ref: name,
    attributes: {
      age: String(rng.int(19, 79)),
      home: rng.pick(townNames),
      food: rng.pick(foods),
      favouriteColour: rng.pick(colours),
      job: rng.pick(jobs),
    },
  }))
  const pets = petNames.map((name): Entity => ({
    kind: "pet",
    name,
    ref: name,
    attributes: { species: rng.pick(species), colour: rng.pick(colours), home: rng.pick(townNames), owner: rng.pick(personNames) },
  }))
  const gadgets = gadgetNames.map((name): Entity => ({
    kind: "gadget",
    name,
    ref: `the ${name}`,
    attributes: { colour: rng.pick(colours), material: rng.pick(materials), purpose: rng.pick(purposes), madeIn: rng.pick(townNames) },
  }))
  return { people, pets, gadgets, towns }
}

export const allEntities = (world: World): ReadonlyArray<Entity> => [...world.people, ...world.pets, ...world.gadgets, ...world.towns]
