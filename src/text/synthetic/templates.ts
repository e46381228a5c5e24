// Question, answer and description templates of the synthetic corpus.
//
// Placeholders: `{ref}` the entity as referred to mid-sentence ("Mira", "the zorpel"), `{Ref}` the
// same at the start of a sentence, `{<attribute>}` an attribute's value, `{a:<attribute>}` the value
// with its indefinite article ("an owl"), `{a}` `{b}` `{c}` the numbers of an arithmetic fact.
//
// Every question kind has four `train` phrasings and two `heldOut` phrasings. Held-out phrasings
// never appear in the training corpus; the held-out set also asks facts with a train phrasing that
// was not used for that fact in training (a new question/entity combination). Held-out phrasings
// are new combinations of words that training questions use ("Tell me what animal X is."), not
// synonyms the corpus never shows ("creature"): a model trained from scratch on this corpus alone
// cannot know that a word it never saw means "animal".
import type { EntityKind } from "./world.ts"

export interface QuestionTemplates {
  readonly train: ReadonlyArray<string>
  readonly heldOut: ReadonlyArray<string>
}

export interface FactTemplates extends QuestionTemplates {
  /** The plain answer; it contains the answer value exactly once. */
  readonly answer: string
}

const home: FactTemplates = {
  train: ["Where does {ref} live?", "In which town does {ref} live?", "What is {ref}'s home town?", "Which town is {ref} from?"],
  heldOut: ["Which town is home to {ref}?", "Do you know which town {ref} is from?"],
  answer: "{Ref} lives in {home}.",
}

const colour: FactTemplates = {
  train: ["What colour is {ref}?", "What is the colour of {ref}?", "Which colour is {ref}?", "Tell me the colour of {ref}."],
  heldOut: ["Do you know what colour {ref} is?", "Tell me what colour {ref} is."],
  answer: "{Ref} is {colour}.",
}

export const factTemplates: { readonly [K in EntityKind]: Readonly<Record<string, FactTemplates>> } = {
  person: {
    age: {
      train: ["How old is {ref}?", "What is {ref}'s age?", "What age is {ref}?", "Tell me {ref}'s age."],
      heldOut: ["Do you know how old {ref} is?", "Tell me how old {ref} is."],
      answer: "{Ref} is {age} years old.",
    },
    home,
    food: {
      train: ["What is {ref}'s favourite food?", "What food does {ref} like best?", "Which food does {ref} love most?", "What does {ref} like to eat?"],
      heldOut: ["What is the favourite food of {ref}?", "Tell me {ref}'s favourite food."],
      answer: "{Ref}'s favourite food is {food}.",
    },
    favouriteColour: {
      train: ["What is {ref}'s favourite colour?", "Which colour does {ref} like best?", "What colour does {ref} love most?", "Tell me {ref}'s favourite colour."],
      heldOut: ["What is the favourite colour of {ref}?", "Which colour does {ref} love best?"],
      answer: "{Ref}'s favourite colour is {favouriteColour}.",
    },
    job: {
      train: ["What does {ref} do for a living?", "What is {ref}'s job?", "What work does {ref} do?", "Which job does {ref} have?"],
      heldOut: ["What is the job of {ref}?", "Tell me {ref}'s job."],
      answer: "{Ref} is {a:job}.",
    },
  },
  pet: {
    species: {
      train: ["What kind of animal is {ref}?", "What animal is {ref}?", "Which animal is {ref}?", "What sort of animal is {ref}?"],
      heldOut: ["Do you know what animal {ref} is?", "Tell me what animal {ref} is."],
      answer: "{Ref} is {a:species}.",
    },
    colour,
    home,
    owner: {
      train: ["Who owns {ref}?", "Who is {ref}'s owner?", "Whose pet is {ref}?", "Who takes care of {ref}?"],
      heldOut: ["Tell me who owns {ref}.", "Do you know whose pet {ref} is?"],
      answer: "{owner} owns {ref}.",
    },
  },
  gadget: {
    colour,
    material: {
      train: ["What is {ref} made of?", "What material is {ref} made from?", "Which material is used for {ref}?", "What is {ref} built from?"],
      heldOut: ["Which material is {ref} made from?", "Tell me what {ref} is made of."],
      answer: "{Ref} is made of {material}.",
    },
    purpose: {
      train: ["What is {ref} used for?", "What does {ref} do?", "What is the purpose of {ref}?", "Why would someone use {ref}?"],
      heldOut: ["What job does {ref} do?", "Tell me what {ref} is used for."],
      answer: "{Ref} is used for {purpose}.",
    },
    madeIn: {
      train: ["Where is {ref} made?", "In which town is {ref} made?", "Which town makes {ref}?", "Where does {ref} come from?"],
      heldOut: ["Tell me where {ref} is made.", "Do you know which town makes {ref}?"],
      answer: "{Ref} is made in {madeIn}.",
    },
  },
  town: {
    region: {
      train: ["In which part of the land is {ref}?", "Where is {ref}?", "Which region is {ref} in?", "Is {ref} in the north, south, east or west?"],
      heldOut: ["In what part of the land is {ref}?", "Do you know where {ref} is?"],
      answer: "{Ref} is in the {region}.",
    },
    famousFor: {
      train: ["What is {ref} known for?", "What is {ref} famous for?", "Why is {ref} famous?", "What is special about {ref}?"],
      heldOut: ["For what is {ref} best known?", "What makes {ref} famous?"],
      answer: "{Ref} is famous for its {famousFor}.",
    },
  },
}

/** "Tell me about X" requests. */
export const describeTemplates: QuestionTemplates = {
  train: ["Tell me about {ref}.", "What do you know about {ref}?", "Describe {ref}.", "Give me some facts about {ref}."],
  heldOut: ["Tell me what you know about {ref}.", "What facts do you know about {ref}?"],
}

/** Descriptions: every attribute of the kind appears exactly once in each variant. The first
 *  variant is also the context of the held-out SQuAD-style questions. */
export const descriptionTemplates: { readonly [K in EntityKind]: ReadonlyArray<string> } = {
  person: [
    "{Ref} is {age} years old and works as {a:job} in {home}. {Ref}'s favourite food is {food} and {Ref}'s favourite colour is {favouriteColour}.",
    "{Ref} is {a:job} who lives in {home}. {Ref} is {age} years old, loves {food} best, and likes {favouriteColour} more than any other colour.",
  ],
  pet: [
    "{Ref} is {a:colour} {species} that lives in {home}. {Ref} belongs to {owner}.",
    "{owner} owns {ref}, {a:species} from {home}. {Ref} is {colour}.",
  ],
  gadget: [
    "{Ref} is {a:colour} tool made of {material} in {madeIn}. It is used for {purpose}.",
    "People in {madeIn} make {ref} out of {material}. {Ref} is {colour} and is used for {purpose}.",
  ],
  town: ["{Ref} is a town in the {region}. {Ref} is famous for its {famousFor}.", "{Ref} lies in the {region} and is famous for its {famousFor}."],
}

export const arithmeticOps = ["plus", "minus", "times"] as const
export type ArithmeticOp = (typeof arithmeticOps)[number]

export const arithmeticTemplates: Readonly<Record<ArithmeticOp, FactTemplates>> = {
  plus: {
    train: ["What is {a} plus {b}?", "What is {a} + {b}?", "Add {a} and {b}.", "What do {a} and {b} add up to?"],
    heldOut: ["Tell me what {a} plus {b} is.", "Do you know what {a} + {b} is?"],
    answer: "{a} plus {b} is {c}.",
  },
  minus: {
    train: ["What is {a} minus {b}?", "What is {a} - {b}?", "Subtract {b} from {a}.", "Take {b} away from {a}."],
    heldOut: ["Tell me what {a} minus {b} is.", "Do you know what {a} - {b} is?"],
    answer: "{a} minus {b} is {c}.",
  },
  times: {
    train: ["What is {a} times {b}?", "What is {a} x {b}?", "Multiply {a} by {b}.", "What is {a} multiplied by {b}?"],
    heldOut: ["Tell me what {a} times {b} is.", "Do you know what {a} multiplied by {b} is?"],
    answer: "{a} times {b} is {c}.",
  },
}

const article = (word: string): string => (/^[aeiou]/i.test(word) ? "an" : "a")

/** A filled template and where each variable's value starts in it (first occurrence). */
export interface Filled {
  readonly text: string
  readonly starts: Readonly<Record<string, number>>
}

/** Substitutes the placeholders of `template`; an unknown placeholder is a bug in the templates. */
export const fill = (template: string, vars: Readonly<Record<string, string>>): Filled => {
  const starts: Record<string, number> = {}
  let text = ""
  let last = 0
  for (const m of template.matchAll(/\{(a:)?(\w+)\}/g)) {
    const [whole, withArticle, key] = m
    const value = key === "Ref" && vars.ref !== undefined ? vars.ref.charAt(0).toUpperCase() + vars.ref.slice(1) : vars[key]
    if (value === undefined) throw new Error(`template "${template}": no value for {${key}}`)
    text += template.slice(last, m.index)
    if (withArticle) text += `${article(value)} `
    if (!(key in starts)) starts[key] = text.length
    text += value
    last = m.index + whole.length
  }
  return { text: text + template.slice(last), starts }
}
