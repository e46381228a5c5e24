// The plain-text pretraining corpus of the synthetic world (issue 14): the same people, pets,
// gadgets and towns as the chat corpus (the world is rebuilt from the chat corpus's seed and
// sizes), written as documents without any chat template, in five genres:
//   bio           facts about one person, pet or gadget, one sentence per attribute;
//   town          a town, its region, what it is famous for, what is made there, who lives there;
//   encyclopedia  a compact reference entry about one entity, in a fixed register;
//   story         a short story about a person, their town, food, colour, job, pets and neighbours;
//   arithmetic    sums, differences and products written out (over all of 0..20 and 1..10).
// All of it is a pure function of `PlainCorpusOptions` (same options, same bytes).
//
// Held out (`heldOut`, never in `train`):
//   new_document     whole generated documents (one story per person, some arithmetic pages);
//   new_combination  one bio per entity whose every sentence uses the phrasing reserved for that
//                    fact: each fact has four sentence phrasings, one of which is never used for
//                    it in training (the other facts use it), so the fact and the wording are
//                    both known and only their combination is new.
import { Schema } from "effect"
import { deriveRng, type Rng } from "./random.ts"
import { fill } from "./templates.ts"
import { allEntities, type Entity, generateWorld, kindAttributes, type World } from "./world.ts"

const Count = Schema.Int.check(Schema.isGreaterThanOrEqualTo(0))

export const PlainCorpusOptions = Schema.Struct({
  /** The world: the chat corpus's seed and sizes, so both corpora talk about the same world. */
  seed: Schema.Int,
  people: Count,
  pets: Count,
  gadgets: Count,
  towns: Schema.Int.check(Schema.isGreaterThanOrEqualTo(1)),
  /** Training bios per person, pet and gadget (each with freshly drawn phrasings and order). */
  biosPerEntity: Count,
  townDocsPerTown: Count,
  encyclopediaPerEntity: Count,
  storiesPerPerson: Count,
  /** Pages of arithmetic (8 sentences each); one in ten more is held out. */
  arithmeticPages: Count,
})
export type PlainCorpusOptions = typeof PlainCorpusOptions.Type

export const plainGenres = ["bio", "town", "encyclopedia", "story", "arithmetic"] as const
export type PlainGenre = (typeof plainGenres)[number]
export type PlainHeldOutKind = "new_document" | "new_combination"

export interface PlainDocument {
  readonly id: string
  readonly genre: PlainGenre
  readonly text: string
}

export interface HeldOutDocument extends PlainDocument {
  readonly heldout_kind: PlainHeldOutKind
}

export interface PlainCorpus {
  readonly world: World
  readonly train: ReadonlyArray<PlainDocument>
  readonly heldOut: ReadonlyArray<HeldOutDocument>
}

// Four sentence phrasings per attribute; `{Ref}` starts a sentence.
const factSentences: Readonly<Record<string, ReadonlyArray<string>>> = {
  age: ["{Ref} is {age} years old.", "{Ref} is {age}.", "The age of {ref} is {age}.", "{Ref} turned {age} this year."],
  home: ["{Ref} lives in {home}.", "{Ref}'s home town is {home}.", "{Ref} is from {home}.", "The home of {ref} is in {home}."],
  food: ["{Ref}'s favourite food is {food}.", "{Ref} likes {food} best.", "{Ref} loves to eat {food}.", "Of all foods, {ref} likes {food} most."],
  favouriteColour: ["{Ref}'s favourite colour is {favouriteColour}.", "{Ref} likes {favouriteColour} best.", "{Ref} loves the colour {favouriteColour}.", "Of all colours, {ref} likes {favouriteColour} most."],
  job: ["{Ref} is {a:job}.", "{Ref} works as {a:job}.", "{Ref}'s job is {a:job}.", "By trade, {ref} is {a:job}."],
  species: ["{Ref} is {a:species}.", "{Ref} is a pet {species}.", "The animal {ref} is {a:species}.", "{Ref} was born {a:species}."],
  colour: ["{Ref} is {colour}.", "The colour of {ref} is {colour}.", "{Ref} is all {colour}.", "{Ref} looks {colour}."],
  owner: ["{owner} owns {ref}.", "{Ref} belongs to {owner}.", "{Ref}'s owner is {owner}.", "{owner} takes care of {ref}."],
  material: ["{Ref} is made of {material}.", "{Ref} is built from {material}.", "The material of {ref} is {material}.", "{Ref} is cut from {material}."],
  purpose: ["{Ref} is used for {purpose}.", "People use {ref} for {purpose}.", "The purpose of {ref} is {purpose}.", "{Ref} helps with {purpose}."],
  madeIn: ["{Ref} is made in {madeIn}.", "{madeIn} makes {ref}.", "The makers of {ref} work in {madeIn}.", "{Ref} comes from {madeIn}."],
  region: ["{Ref} is in the {region}.", "{Ref} lies in the {region}.", "The town of {ref} is in the {region}.", "{Ref} sits in the {region} of the land."],
  famousFor: ["{Ref} is famous for its {famousFor}.", "{Ref} is known for its {famousFor}.", "People know {ref} for its {famousFor}.", "The {famousFor} of {ref} are famous."],
}

const bioOpenings: Readonly<Record<"person" | "pet" | "gadget", ReadonlyArray<string>>> = {
  person: ["This is {ref}.", "Here is what people say about {ref}.", "{Ref} is a person of the land."],
  pet: ["This is {ref}, a pet.", "Here is {ref}.", "{Ref} is a well known pet."],
  gadget: ["This is {ref}, a tool.", "Here is {ref}.", "{Ref} is a useful tool."],
}

const encyclopediaEntry: Readonly<Record<Entity["kind"], string>> = {
  person: "{Name}. Person. Age: {age}. Home: {home}. Job: {job}. Favourite food: {food}. Favourite colour: {favouriteColour}.",
  pet: "{Name}. Pet. Animal: {species}. Colour: {colour}. Home: {home}. Owner: {owner}.",
  gadget: "{Name}. Tool. Colour: {colour}. Material: {material}. Use: {purpose}. Made in: {madeIn}.",
  town: "{Name}. Town. Region: {region}. Famous for: {famousFor}.",
}

const storyOpenings = [
  "One morning {ref} woke up early in {home}.",
  "It was a quiet day in {home}, and {ref} was at home.",
  "Once upon a time, {ref} the {job} lived in {home}.",
  "On a cold evening in {home}, {ref} sat by the window.",
]
const storyJobs = [
  "{Ref} went to work as {a:job}, as always.",
  "{Ref} had a lot of work to do, being {a:job}.",
  "Like every {job}, {ref} was busy all day.",
]
const storyFood = [
  "At noon {ref} was hungry and ate some {food}, because {food} is {ref}'s favourite food.",
  "For dinner {ref} cooked {food}, the food {ref} loves most.",
  "{Ref} went to the market to buy {food}.",
]
const storyColour = [
  "{Ref} put on a {favouriteColour} coat, since {favouriteColour} is {ref}'s favourite colour.",
  "{Ref} painted the door {favouriteColour}, the colour {ref} likes best.",
  "Everything {ref} owns is {favouriteColour}.",
]
const storyPet = ["{Ref} played with {pet}, {a:petColour} {petSpecies}.", "{pet}, the {petSpecies} of {ref}, followed {ref} everywhere.", "{Ref} fed {pet} the {petSpecies}."]
const storyFriend = [
  "Later {ref} met {friend}, who is {a:friendJob} from {friendHome}.",
  "{friend} came to visit; {friend} is {friendAge} years old.",
  "{Ref} wrote a letter to {friend} in {friendHome}.",
]
const storyGadget = ["{Ref} used {gadget}, a {gadgetMaterial} tool for {gadgetPurpose}.", "{Ref} bought {gadget} in {gadgetTown}, where it is made."]
const storyEndings = ["In the end, {ref} went to sleep happy.", "It was a good day for {ref}.", "And that is the story of {ref}.", "{Ref} smiled and went home."]

const capitalized = (s: string) => s.charAt(0).toUpperCase() + s.slice(1)
const sentence = (template: string, vars: Readonly<Record<string, string>>) => fill(template, vars).text
const entityVars = (e: Entity): Record<string, string> => ({ ref: e.ref, Name: capitalized(e.ref), ...e.attributes })

/** The options of the shipped corpus (`datasets/tiny-world/`): the world of `datasets/tiny-chat/`. */
export const defaultPlainCorpusOptions: PlainCorpusOptions = {
  seed: 5,
  people: 24,
  pets: 12,
  gadgets: 12,
  towns: 8,
  biosPerEntity: 16,
  townDocsPerTown: 16,
  encyclopediaPerEntity: 4,
  storiesPerPerson: 100,
  arithmeticPages: 900,
}

/** The phrasing index reserved for held-out combinations, per fact id `Name.attribute`. */
const reservedPhrasings = (rng: Rng, world: World): ReadonlyMap<string, number> =>
  new Map(allEntities(world).flatMap((e) => kindAttributes[e.kind].map((a) => [`${e.name}.${a}`, rng.int(0, factSentences[a].length - 1)] as const)))

const arithmeticSentences = [
  ["{a} plus {b} is {c}.", "If you add {a} and {b} you get {c}.", "{a} and {b} add up to {c}."],
  ["{a} minus {b} is {c}.", "If you take {b} away from {a} you get {c}.", "{b} less than {a} is {c}."],
  ["{a} times {b} is {c}.", "{a} multiplied by {b} is {c}.", "{a} groups of {b} make {c}."],
] as const

const arithmeticPage = (rng: Rng): string =>
  Array.from({ length: 8 }, () => {
    const op = rng.int(0, 2)
    const [a, b] = op === 2 ? [rng.int(1, 10), rng.int(1, 10)] : [rng.int(0, 20), rng.int(0, 20)]
    const [x, y] = op === 1 && b > a ? [b, a] : [a, b]
    const c = op === 0 ? x + y : op === 1 ? x - y : x * y
    return sentence(rng.pick(arithmeticSentences[op]), { a: String(x), b: String(y), c: String(c) })
  }).join(" ")

export const generatePlainCorpus = (options: PlainCorpusOptions): PlainCorpus => {
  const rng = (label: string) => deriveRng(options.seed, label)
  // the chat corpus's world stream: the same options give the same world
  const world = generateWorld(rng("world"), options)
  const reserved = reservedPhrasings(rng("plain-reserved"), world)
  const docRng = rng("plain-docs")
  const train: Array<Omit<PlainDocument, "id">> = []
  const heldOut: Array<Omit<HeldOutDocument, "id">> = []

  const factSentence = (e: Entity, attribute: string, heldOutCombination: boolean) => {
    const phrasings = factSentences[attribute]
    const r = reserved.get(`${e.name}.${attribute}`)!
    const index = heldOutCombination ? r : docRng.pick(phrasings.map((_, i) => i).filter((i) => i !== r))
    return sentence(phrasings[index], entityVars(e))
  }
  const bio = (e: Entity & { kind: "person" | "pet" | "gadget" }, heldOutCombination: boolean) =>
    [sentence(docRng.pick(bioOpenings[e.kind]), entityVars(e)), ...docRng.shuffle(kindAttributes[e.kind]).map((a) => factSentence(e, a, heldOutCombination))].join(" ")

  const described = [...world.people, ...world.pets, ...world.gadgets] as ReadonlyArray<Entity & { kind: "person" | "pet" | "gadget" }>
  for (const e of described) {
    for (let i = 0; i < options.biosPerEntity; i++) train.push({ genre: "bio", text: bio(e, false) })
    heldOut.push({ genre: "bio", text: bio(e, true), heldout_kind: "new_combination" })
  }
  for (const town of world.towns) {
    const residents = world.people.filter((p) => p.attributes.home === town.name)
    const made = world.gadgets.filter((g) => g.attributes.madeIn === town.name)
    const pets = world.pets.filter((p) => p.attributes.home === town.name)
    for (let i = 0; i < options.townDocsPerTown; i++) {
      const parts = [factSentence(town, "region", false), factSentence(town, "famousFor", false)]
      for (const g of docRng.shuffle(made)) parts.push(`In ${town.name} people make ${g.ref}, ${fill("{a:colour}", g.attributes).text} tool of ${g.attributes.material} for ${g.attributes.purpose}.`)
      if (residents.length > 0) {
        const names = docRng.shuffle(residents).map((p) => p.name)
        parts.push(names.length === 1 ? `${names[0]} lives in ${town.name}.` : `${names.slice(0, -1).join(", ")} and ${names[names.length - 1]} live in ${town.name}.`)
      }
      for (const p of docRng.shuffle(pets)) parts.push(`${p.name} the ${p.attributes.species} lives there too.`)
      train.push({ genre: "town", text: [parts[0], ...docRng.shuffle(parts.slice(1))].join(" ") })
    }
  }
  for (const e of allEntities(world))
    for (let i = 0; i < options.encyclopediaPerEntity; i++) train.push({ genre: "encyclopedia", text: sentence(encyclopediaEntry[e.kind], entityVars(e)) })

  const story = (person: Entity): string => {
    const vars: Record<string, string> = { ...entityVars(person) }
    const pet = world.pets.filter((p) => p.attributes.owner === person.name)
    const friend = docRng.pick(world.people.filter((p) => p !== person))
    const gadget = world.gadgets.length > 0 ? docRng.pick(world.gadgets) : undefined
    Object.assign(vars, { friend: friend.name, friendJob: friend.attributes.job!, friendHome: friend.attributes.home!, friendAge: friend.attributes.age! })
    const middle = [storyJobs, storyFood, storyColour, storyFriend].map((ts) => docRng.pick(ts))
    if (pet.length > 0) {
      const p = docRng.pick(pet)
      Object.assign(vars, { pet: p.name, petSpecies: p.attributes.species!, petColour: p.attributes.colour! })
      middle.push(docRng.pick(storyPet))
    }
    if (gadget !== undefined) {
      Object.assign(vars, { gadget: gadget.ref, gadgetMaterial: gadget.attributes.material!, gadgetPurpose: gadget.attributes.purpose!, gadgetTown: gadget.attributes.madeIn! })
      middle.push(docRng.pick(storyGadget))
    }
    const picked = docRng.sample(middle, Math.min(middle.length, 4))
    return [docRng.pick(storyOpenings), ...picked, docRng.pick(storyEndings)].map((t) => capitalized(sentence(t, vars))).join(" ")
  }
  for (const person of world.people) {
    for (let i = 0; i < options.storiesPerPerson; i++) train.push({ genre: "story", text: story(person) })
    heldOut.push({ genre: "story", text: story(person), heldout_kind: "new_document" })
  }
  for (let i = 0; i < options.arithmeticPages; i++) train.push({ genre: "arithmetic", text: arithmeticPage(docRng) })
  for (let i = 0; i < Math.ceil(options.arithmeticPages / 10); i++) heldOut.push({ genre: "arithmetic", text: arithmeticPage(docRng), heldout_kind: "new_document" })

  // a held-out document that repeats a training one verbatim would measure memorisation
  const seen = new Set(train.map((d) => d.text))
  const fresh = heldOut.filter((d) => !seen.has(d.text))
  const width = (n: number) => String(n).length
  return {
    world,
    train: rng("plain-shuffle")
      .shuffle(train)
      .map((d, i) => ({ id: `doc-${String(i).padStart(width(train.length), "0")}`, ...d })),
    heldOut: fresh.map((d, i) => ({ id: `heldout-${String(i).padStart(width(fresh.length), "0")}`, ...d })),
  }
}
