"""Open-ended task families: prompts whose valid responses are many.

Each family is a small probabilistic grammar. The prompt fixes the content slots (who, what,
where); the response's sentence order, wording and optional detail are sampled, with unequal
weights that depend on the slots (a shy pet's details are not a playful one's, a vegetable is
chopped where rice is rinsed). A prompt therefore has a distribution over responses rather than one
answer, which is what distillation transfers: a teacher that has seen several responses per prompt
knows that distribution, while a student's distillation set holds one sample of it. Responses are
40 to 120 tokens long, so a student's own early mistakes have room to compound when it samples.

A family is a pair of functions: ``prompt(rng, shifted) -> OpenPrompt`` and
``respond(slots, rng) -> str``; drawing ``respond`` again with another random stream gives another
valid response to the same prompt. The ``shifted`` split uses held-out instruction phrasings,
entities from the other half of each pool (seen in training, in other roles) and longer instances.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable

OPEN_FAMILIES = ("describe", "story", "recipe")


@dataclass(frozen=True)
class OpenPrompt:
    """A prompt of an open-ended family: its instruction, input and the slots a response must carry."""

    instruction: str
    input: str
    slots: dict[str, Any]


def _pick(rng: random.Random, weighted: list[tuple[float, str]]) -> str:
    """One of ``weighted``'s strings, with probability proportional to its weight."""
    return rng.choices([s for _, s in weighted], weights=[w for w, _ in weighted])[0]


# Instruction phrasings per family: (train's, the shifted split's held-out ones), as the exact families'.
_PHRASINGS: dict[str, tuple[list[str], list[str]]] = {
    "describe": (["Write a short description of this pet.", "Describe the pet below.",
                  "Write a few sentences about this pet."], ["Introduce this animal to a new neighbor."]),
    "story": (["Write a short story.", "Tell a short story based on this outline.",
               "Turn this outline into a short story."], ["Narrate what happens, as a little tale."]),
    "recipe": (["Explain how to make a {dish}.", "Give the steps for a {dish}.", "How do I cook a {dish}?"],
               ["Walk a beginner through preparing a {dish}."]),
}


def _instruction(family: str, rng: random.Random, shifted: bool, **slots: str) -> str:
    """One of ``family``'s phrasings for the split, its slots filled in."""
    return rng.choice(_PHRASINGS[family][1 if shifted else 0]).format(**slots)


def _an(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _names(family_index: int, shifted: bool) -> list[str]:
    """Half of the shared name pool: families alternate halves, and a family's ``shifted`` split takes
    the other half, so its names were seen in training only in another family's role."""
    half = len(_NAMES) // 2
    first = (family_index % 2 == 0) != shifted
    return _NAMES[:half] if first else _NAMES[half:]


_NAMES = ["Milo", "Luna", "Rex", "Bella", "Coco", "Max", "Daisy", "Oscar", "Ruby", "Toby", "Nala", "Leo",
          "Pepper", "Ziggy", "Hazel", "Bruno", "Olive", "Felix", "Mochi", "Biscuit",
          "Anna", "Ben", "Carla", "David", "Ella", "Frank", "Gina", "Henry", "Ines", "Jack", "Kim", "Lucas",
          "Mia", "Noah", "Olga", "Pedro", "Rita", "Sam", "Tina", "Victor"]


# --- describe: a pet, its looks, home, food and character -------------------------------------------------

_ANIMALS = ["cat", "dog", "rabbit", "parrot", "hamster", "turtle", "goat", "pony", "duck", "ferret"]
_FUR = ["gray", "brown", "black", "white", "golden", "spotted", "striped", "orange"]
_HOMES = ["the attic", "the garden", "a small barn", "the kitchen", "a wooden box", "the barn", "the shed",
          "a basket by the window"]
_FOODS = ["fish", "carrots", "apples", "seeds", "cheese", "berries", "rice", "lettuce"]
# Each character brings its own pool of details: which details follow is conditioned on the prompt.
_TRAITS: dict[str, list[str]] = {
    "shy": ["{P} hides under the bed when guests arrive.", "{P} rarely makes a sound.",
            "{P} only comes out when the house is quiet.", "{P} watches strangers from a safe corner.",
            "It takes {o} a long time to trust new people."],
    "playful": ["{P} chases anything that moves.", "{P} loves to play with a red ball.",
                "{P} runs in circles when {p} is happy.", "{P} never gets tired of games.",
                "{P} jumps on everyone who comes home."],
    "lazy": ["{P} sleeps for most of the day.", "{P} rarely moves from {q} favorite spot.",
             "{P} yawns whenever someone talks to {o}.", "{P} only gets up when it is time to eat.",
             "{P} likes to nap in the sun."],
    "curious": ["{P} explores every corner of the house.", "{P} sniffs every new thing {p} finds.",
                "{P} always wants to know what is inside a bag.", "{P} follows people from room to room.",
                "{P} once got stuck in a drawer."],
    "brave": ["{P} is not afraid of thunder.", "{P} guards the door every night.",
              "{P} once chased a fox away from the yard.", "{P} walks up to every new visitor.",
              "{P} is never scared of the dark."],
    "gentle": ["{P} lets small children pet {o}.", "{P} is always calm and quiet.",
               "{P} never bites or scratches.", "{P} likes to sit close to people.",
               "{P} moves slowly and carefully."],
}
_PRONOUNS = {"he": ("He", "he", "his", "him"), "she": ("She", "she", "her", "her")}


def _describe_prompt(rng: random.Random, shifted: bool) -> OpenPrompt:
    traits = list(_TRAITS)
    slots = {"name": rng.choice(_names(0, shifted)), "animal": rng.choice(_ANIMALS),
             "fur": rng.choice(_FUR), "home": rng.choice(_HOMES), "food": rng.choice(_FOODS),
             "pronoun": rng.choice(["he", "she"]),
             "traits": rng.sample(traits, 2 if shifted else 1)}
    s = slots
    text = (f"{s['name']} is {_an(s['fur'])} {s['animal']} ({s['pronoun']}). Home: {s['home']}. "
            f"Favorite food: {s['food']}. Character: {' and '.join(s['traits'])}.")
    return OpenPrompt(_instruction("describe", rng, shifted), text, slots)


def _describe_response(s: dict[str, Any], rng: random.Random) -> str:
    P, p, poss, o = _PRONOUNS[s["pronoun"]]
    name, animal, fur, trait = s["name"], s["animal"], s["fur"], s["traits"][0]
    opening = _pick(rng, [(5, f"{name} is {_an(fur)} {animal}."), (3, f"Meet {name}, {_an(fur)} {animal}."),
                          (2, f"{name} is {_an(trait)} {animal} with {fur} fur.")])
    facts = [
        _pick(rng, [(4, f"{P} lives in {s['home']}."), (2, f"{name}'s home is {s['home']}."),
                    (2, f"{P} spends most days in {s['home']}.")]),
        _pick(rng, [(4, f"{P} loves {s['food']}."), (3, f"{poss.capitalize()} favorite food is {s['food']}."),
                    (2, f"{P} likes to eat {s['food']} every day."),
                    (1, f"Nothing makes {o} happier than {s['food']}.")]),
    ]
    for t in s["traits"]:
        facts.append(_pick(rng, [(4, f"{P} is very {t}."), (3, f"Everyone knows that {name} is {t}."),
                                 (2, f"{P} can be quite {t}.")]))
    rng.shuffle(facts)
    details = rng.sample([d for t in s["traits"] for d in _TRAITS[t]], rng.choice([1, 2, 2, 3]))
    closing = _pick(rng, [(3, ""), (3, f"{name} is a wonderful friend."),
                          (2, f"Everyone in the house loves {name}."), (2, f"{name} makes every day better.")])
    return " ".join(x.format(P=P, p=p, q=poss, o=o) for x in [opening, *facts, *details, closing] if x)


# --- story: someone loses something, someone helps -------------------------------------------------------

_STORY_JOBS = ["baker", "fisher", "teacher", "farmer", "painter", "doctor", "pilot", "gardener"]
_LOST = ["hat", "key", "wallet", "scarf", "book", "ring", "umbrella", "bag"]
_STORY_PLACES = ["the market", "the park", "the beach", "the station", "the library", "the fair",
                 "the harbor", "the forest"]
_SPOTS = ["under a bench", "behind a big box", "near the door", "in the grass", "next to a tree",
          "on a high shelf", "inside an old basket"]
_TIMES = ["morning", "afternoon", "evening"]


def _story_prompt(rng: random.Random, shifted: bool) -> OpenPrompt:
    hero, *helpers = rng.sample(_names(1, shifted), 3 if shifted else 2)
    slots = {"hero": hero, "helpers": helpers, "job": rng.choice(_STORY_JOBS), "item": rng.choice(_LOST),
             "place": rng.choice(_STORY_PLACES), "pronoun": rng.choice(["he", "she"])}
    s = slots
    text = (f"{hero} ({s['pronoun']}), a {s['job']}, loses {_PRONOUNS[s['pronoun']][2]} {s['item']} at "
            f"{s['place']}. {' and '.join(helpers)} help{'s' if len(helpers) == 1 else ''} find it.")
    return OpenPrompt(_instruction("story", rng, shifted), text, slots)


def _story_response(s: dict[str, Any], rng: random.Random) -> str:
    P, p, poss, o = _PRONOUNS[s["pronoun"]]
    hero, job, item, place = s["hero"], s["job"], s["item"], s["place"]
    helpers = " and ".join(s["helpers"])
    intro = _pick(rng, [(4, f"Once upon a time, there was a {job} named {hero}."),
                        (3, f"{hero} was a {job} who lived near {place}."),
                        (3, f"One {rng.choice(_TIMES)}, {hero} the {job} went to {place}.")])
    loss = _pick(rng, [(4, f"While {p} was at {place}, {p} lost {poss} {item}."),
                       (3, f"Suddenly, {hero} noticed that {poss} {item} was missing."),
                       (2, f"{P} put down {poss} {item} for a moment, and then it was gone.")])
    pool = [f"{P} felt very sad.", f"{P} searched everywhere.", f"{P} looked under every table.",
            f"{P} asked the people around {o}, but nobody had seen it.", f"{P} did not know what to do."]
    reaction = rng.sample(pool, rng.choice([0, 1, 1, 2]))
    helped = _pick(rng, [(4, f"Then {helpers} came by and offered to help."),
                         (3, f"Luckily, {helpers} saw {o} and asked what was wrong."),
                         (2, f"{helpers} heard the news and came to help.")])
    spot = rng.choice(_SPOTS)
    found = _pick(rng, [(4, f"Together they found the {item} {spot}."),
                        (3, f"After a while, {s['helpers'][0]} found the {item} {spot}."),
                        (2, f"At last, they saw the {item} lying {spot}.")])
    ending = _pick(rng, [(4, f"{hero} thanked {helpers} and went home happy."),
                         (3, f"From that day on, {hero} always kept {poss} {item} close."),
                         (2, f"{hero} was so happy that {p} gave {helpers} a big hug.")])
    return " ".join([intro, loss, *reaction, helped, found, ending])


# --- recipe: steps that partly commute ---------------------------------------------------------------------

_DISHES = {"soup": ("pot", "hot"), "salad": ("bowl", "cold"), "stew": ("pot", "hot"), "pie": ("dish", "warm"),
           "omelet": ("pan", "hot"), "sandwich": ("plate", "fresh"), "curry": ("pan", "hot"),
           "smoothie": ("blender", "cold")}
# How an ingredient is prepared depends on what it is.
_INGREDIENTS: dict[str, list[tuple[float, str]]] = {
    "carrots": [(4, "peel the carrots"), (3, "chop the carrots"), (2, "slice the carrots")],
    "onions": [(5, "chop the onions"), (3, "peel and slice the onions")],
    "tomatoes": [(4, "wash the tomatoes"), (4, "cut the tomatoes into pieces")],
    "potatoes": [(4, "peel the potatoes"), (3, "boil the potatoes"), (2, "cut the potatoes into cubes")],
    "rice": [(5, "rinse the rice"), (3, "cook the rice")],
    "eggs": [(5, "beat the eggs"), (3, "crack the eggs into a cup")],
    "cheese": [(5, "grate the cheese"), (3, "cut the cheese into small pieces")],
    "spinach": [(5, "wash the spinach"), (3, "chop the spinach")],
    "beans": [(4, "soak the beans"), (4, "rinse the beans")],
    "apples": [(4, "peel the apples"), (4, "slice the apples")],
    "bananas": [(5, "peel the bananas"), (3, "mash the bananas")],
    "mushrooms": [(4, "clean the mushrooms"), (4, "slice the mushrooms")],
}
_FIRST = [(4, "First, {x}."), (3, "To begin, {x}."), (2, "The first step is to {x}.")]
_NEXT = [(4, "Then {x}."), (3, "Next, {x}."), (2, "After that, {x}.")]


def _recipe_prompt(rng: random.Random, shifted: bool) -> OpenPrompt:
    slots = {"dish": rng.choice(list(_DISHES)), "ingredients": rng.sample(list(_INGREDIENTS), 4 if shifted else 3)}
    items = slots["ingredients"]
    listed = ", ".join(items[:-1]) + " and " + items[-1]
    instruction = _instruction("recipe", rng, shifted, dish=slots["dish"])
    return OpenPrompt(instruction, f"Ingredients: {listed}.", slots)


def _recipe_response(s: dict[str, Any], rng: random.Random) -> str:
    dish, (vessel, serve) = s["dish"], _DISHES[s["dish"]]
    intro = _pick(rng, [(3, ""), (3, f"Making a {dish} is easy."), (2, f"Here is a simple way to make a {dish}.")])
    order = rng.sample(s["ingredients"], len(s["ingredients"]))  # preparing the ingredients commutes
    steps = []
    for i, name in enumerate(order):
        action = _pick(rng, _INGREDIENTS[name])
        template = _pick(rng, _FIRST if i == 0 else _NEXT)
        steps.append(template.format(x=action))
    combine = _pick(rng, [(4, f"Put everything in a {vessel} and stir."), (3, f"Mix it all together in a {vessel}."),
                          (2, f"Add all the ingredients to a {vessel}.")])
    cook = _pick(rng, [(3, f"Let it cook for {rng.choice([10, 15, 20, 30])} minutes."),
                       (2, "Season it with salt and pepper."), (2, "Taste it and add a little salt.")])
    end = _pick(rng, [(4, f"Serve the {dish} {serve}."), (3, f"Enjoy your {dish} while it is {serve}!"),
                      (2, f"Your {dish} is ready to serve {serve}.")])
    return " ".join(x for x in [intro, *steps, combine, cook, end] if x)


_FAMILIES: dict[str, tuple[Callable[[random.Random, bool], OpenPrompt], Callable[[dict[str, Any], random.Random], str]]] = {
    "describe": (_describe_prompt, _describe_response),
    "story": (_story_prompt, _story_response),
    "recipe": (_recipe_prompt, _recipe_response),
}


def open_prompt(family: str, rng: random.Random, shifted: bool = False) -> OpenPrompt:
    """A prompt of ``family`` (its slots drawn from ``rng``)."""
    return _FAMILIES[family][0](rng, shifted)


def open_responses(family: str, prompt: OpenPrompt, rng: random.Random, n: int) -> list[str]:
    """``n`` different responses to ``prompt``, each an independent draw of the family's grammar
    (redrawn where one repeats an earlier one, so references are distinct)."""
    respond = _FAMILIES[family][1]
    out: list[str] = []
    for _ in range(50 * n):
        r = respond(prompt.slots, rng)
        if r not in out:
            out.append(r)
        if len(out) == n:
            return out
    raise ValueError(f"family {family!r} gave fewer than {n} distinct responses to one prompt")
