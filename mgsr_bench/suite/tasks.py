"""Procedurally generated instruction-following tasks: the tiny suite's data.

Nine task families: the three open-ended ones of :mod:`mgsr_bench.suite.open_ended` (many valid
responses per prompt) and six exact-answer families with free-text answers, each built to need
capacity rather than a template:
multi-hop closed QA over a generated context, information extraction, list sorting, multi-step
arithmetic with an exact numeric answer, classification with a one-sentence reason, and rewriting
(past tense with irregular verbs). A wrong digit or a wrong entity keeps most of the template, so
ROUGE-L alone flatters a model; the records therefore also carry per-family exact match.

The ``shifted`` split plays the role of the out-of-domain sets. It differs from train in three ways:
instruction phrasings that train never uses; entities held out per family (names, cities and items
are split in halves, and a family's shifted examples use the half that train only shows in other
families, so every token is learned but never in that role); and longer instances (five people in
the QA context, four extracted fields, nine or ten items to sort, three arithmetic steps, four-digit
numbers to classify). Entities are not new words: a model trained from scratch cannot emit a token
it never saw.

Everything is a pure function of a seed: the same seed gives byte-identical files.
"""

from __future__ import annotations

import random
from typing import Any, Callable

from mgsr_bench.data.template import build_prompt
from mgsr_bench.suite.open_ended import OPEN_FAMILIES, open_prompt, open_responses

EXACT_FAMILIES = ("qa", "extract", "sort", "arith", "classify", "rewrite")
FAMILIES = EXACT_FAMILIES + OPEN_FAMILIES

_NAMES = [
    "Alice", "Bruno", "Clara", "Diego", "Emma", "Felix", "Grace", "Hugo", "Iris", "Jonas", "Karla",
    "Liam", "Maya", "Nadia", "Oscar", "Paula", "Quinn", "Rosa", "Samir", "Tara", "Umar", "Vera",
    "Walter", "Xenia", "Yusuf", "Zoe", "Aaron", "Bianca", "Carlos", "Dana", "Elias", "Fiona",
]
_CITIES = [
    "Paris", "Rome", "Lima", "Oslo", "Cairo", "Delhi", "Tokyo", "Dublin", "Madrid", "Berlin",
    "Quito", "Seoul", "Vienna", "Prague", "Athens", "Lisbon", "Nairobi", "Havana", "Bogota", "Sydney",
]
_JOBS = ["baker", "pilot", "doctor", "farmer", "teacher", "painter", "lawyer", "nurse", "chef", "driver",
         "singer", "tailor", "miner", "sailor", "writer", "judge"]
_OBJECTS = ["apples", "books", "pencils", "stamps", "marbles", "cookies", "shells", "coins", "cards",
            "buttons", "candles", "flowers", "tickets", "stickers", "lemons", "ribbons"]
_ITEMS = ["lamp", "chair", "bicycle", "kettle", "guitar", "camera", "jacket", "clock", "table",
          "mirror", "radio", "blanket", "helmet", "basket", "printer", "teapot"]
_COLORS = ["red", "blue", "green", "black", "white", "yellow", "brown", "gray", "pink", "orange"]
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
           "October", "November", "December"]
_WORDS = ["river", "garden", "window", "candle", "planet", "forest", "bridge", "castle", "pillow",
          "rocket", "dragon", "island", "ladder", "meadow", "violet", "anchor", "bottle", "cactus",
          "dinner", "engine", "falcon", "harbor", "jungle", "kitten", "magnet", "nectar", "orchid",
          "pepper", "quartz", "saddle", "tunnel", "walnut"]
# (present, past) pairs; irregular forms make the rewrite family more than a suffix rule.
_MOTION_VERBS = [("walks", "walked"), ("goes", "went"), ("drives", "drove"), ("runs", "ran"),
                 ("rides", "rode"), ("comes", "came"), ("hurries", "hurried"), ("travels", "traveled")]
_OBJECT_VERBS = [("buys", "bought"), ("sees", "saw"), ("finds", "found"), ("brings", "brought"),
                 ("paints", "painted"), ("sells", "sold"), ("carries", "carried"), ("opens", "opened"),
                 ("cleans", "cleaned"), ("draws", "drew"), ("catches", "caught"), ("fixes", "fixed"),
                 ("takes", "took"), ("builds", "built"), ("hides", "hid"), ("keeps", "kept")]
_PLACES = ["the market", "the school", "the park", "the station", "the museum", "the library",
           "the harbor", "the bakery", "the office", "the farm"]
_POSITIVE = ["delicious", "friendly", "wonderful", "cheerful", "excellent", "cozy", "fresh", "lovely"]
_NEGATIVE = ["cold", "rude", "noisy", "bland", "dirty", "slow", "stale", "awful"]
_THINGS_REVIEWED = ["the soup", "the staff", "the room", "the bread", "the service", "the coffee",
                    "the music", "the garden"]


def _halves(values: list, family_index: int, shifted: bool) -> list:
    """One half of an entity pool for a family, the other half for its shifted split.

    Families alternate which half they train on, so every entity is seen in training (its tokens
    are learned) but never in the family where the shifted split uses it.
    """
    half = len(values) // 2
    first = (family_index % 2 == 0) != shifted
    return values[:half] if first else values[half:]


def _an(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


# Instruction phrasings: index 0.. are in-domain; the shifted split uses the second list only.
_TEMPLATES: dict[str, tuple[list[str], list[str]]] = {
    "qa": (["Answer the question using the facts below. {q}", "Read the facts and answer: {q}",
            "Use the context to answer the question. {q}"],
           ["Based only on the passage, respond to this question. {q}"]),
    "extract": (["Extract the {fields} from the sentence.", "List the {fields} mentioned in the text.",
                 "Find the {fields} in the sentence below."],
                ["Pull out the {fields} from this record."]),
    "sort": (["Sort the following {kind} in {order} order.", "Arrange these {kind} in {order} order.",
              "Put the {kind} below in {order} order."],
             ["Reorder the {kind} so that they are in {order} order."]),
    "arith": (["Solve the word problem.", "Answer the math question.", "Work out the answer to this problem."],
              ["Compute the result of the story problem."]),
    "classify": (["{task} Give a one-sentence reason.", "{task} Explain briefly.",
                  "{task} Answer with a short justification."],
                 ["{task} Justify the label in one sentence."]),
    "rewrite": (["Rewrite the sentence in the past tense.", "Change the sentence to the past tense.",
                 "Put the sentence into the past tense."],
                ["Convert this sentence so that it describes the past."]),
}


def _qa(rng: random.Random, shifted: bool) -> tuple[str, str, str]:
    # Shifted QA asks only two-hop questions instead of adding a fifth person: fifteen facts would not
    # fit the protocol's 256 prompt tokens.
    n = 4
    people = rng.sample(_halves(_NAMES, 0, shifted), n)
    cities = rng.sample(_halves(_CITIES, 0, shifted), n)
    jobs = rng.sample(_JOBS, n)
    friend = {p: people[(i + rng.randint(1, n - 1)) % n] for i, p in enumerate(people)}
    facts = []
    for p, c, j in zip(people, cities, jobs):
        facts += [f"{p} has a home in {c}.", f"{p} is employed as a {j}.", f"{p} is friends with {friend[p]}."]
    rng.shuffle(facts)
    who = rng.randrange(n)
    p, f = people[who], friend[people[who]]
    fi = people.index(f)
    kind = rng.choice(["friend_city", "friend_job"] if shifted else ["city", "job", "friend_city", "friend_job"])
    if kind == "city":
        q, a = f"Where does {p} live?", f"{p} lives in {cities[who]}."
    elif kind == "job":
        q, a = f"What does {p} do for a living?", f"{p} works as a {jobs[who]}."
    elif kind == "friend_city":
        q, a = f"In which city does {p}'s friend live?", f"{p}'s friend {f} lives in {cities[fi]}."
    else:
        q, a = f"What is the job of {p}'s friend?", f"{p}'s friend {f} works as a {jobs[fi]}."
    return q, " ".join(facts), a


def _extract(rng: random.Random, shifted: bool) -> tuple[str, str, str]:
    name, city = rng.choice(_halves(_NAMES, 1, shifted)), rng.choice(_halves(_CITIES, 1, shifted))
    item, color = rng.choice(_halves(_ITEMS, 1, shifted)), rng.choice(_COLORS)
    day, month, price = rng.randint(1, 28), rng.choice(_MONTHS), rng.randint(10, 999)
    sentence = rng.choice([
        f"On {day} {month}, {name} bought {_an(color)} {item} in {city} for {price} dollars.",
        f"{name} paid {price} dollars for {_an(color)} {item} in {city} on {day} {month}.",
        f"In {city}, {_an(color)} {item} was sold to {name} for {price} dollars on {day} {month}.",
    ])
    values = {"buyer": name, "item": f"{color} {item}", "price": f"{price} dollars", "city": city,
              "date": f"{day} {month}"}
    fields = rng.sample(list(values), 4 if shifted else rng.randint(2, 3))
    answer = "; ".join(f"{k.capitalize()}: {values[k]}" for k in fields) + "."
    return ", ".join(fields[:-1]) + " and " + fields[-1], sentence, answer


def _sort(rng: random.Random, shifted: bool) -> tuple[str, str, str]:
    n = rng.randint(9, 10) if shifted else rng.randint(5, 8)
    if rng.random() < 0.6:
        kind, values = "numbers", [str(v) for v in rng.sample(range(1, 100), n)]
        key: Callable[[str], object] = int
        order = rng.choice(["ascending", "descending"])
    else:
        kind, values, key = "words", rng.sample(_WORDS, n), str
        order = rng.choice(["alphabetical", "reverse alphabetical"])
    out = sorted(values, key=key, reverse=order in ("descending", "reverse alphabetical"))
    return f"{kind}|{order}", ", ".join(values), ", ".join(out) + "."


def _arith(rng: random.Random, shifted: bool) -> tuple[str, str, str]:
    name, other = rng.sample(_halves(_NAMES, 2, shifted), 2)
    obj = rng.choice(_OBJECTS)
    total = rng.randint(10, 60)
    text = [f"{name} has {total} {obj}."]
    for _ in range(3 if shifted else rng.randint(1, 2)):
        if rng.random() < 0.5 or total < 15:
            k = rng.randint(2, 40)
            text.append(rng.choice([f"{name} buys {k} more.", f"{other} gives {name} {k} more."]))
            total += k
        else:
            k = rng.randint(2, total - 1)
            text.append(rng.choice([f"{name} gives {k} to {other}.", f"{name} loses {k} of them."]))
            total -= k
    text.append(f"How many {obj} does {name} have now?")
    return "", " ".join(text), f"{name} has {total} {obj} now."


def _classify(rng: random.Random, shifted: bool) -> tuple[str, str, str]:
    kind = rng.choice(["parity", "compare", "sentiment"])
    low, high = (1000, 9999) if shifted else (10, 999)
    if kind == "parity":
        n = rng.randint(low, high)
        label = "Even" if n % 2 == 0 else "Odd"
        return "Is the number even or odd?", str(n), f"{label}, because {n} ends in {n % 10}."
    if kind == "compare":
        a, b = rng.sample(range(low, high + 1), 2)
        big, small = max(a, b), min(a, b)
        return "Which of the two numbers is larger?", f"{a} and {b}", f"{big} is larger, because {big} is greater than {small}."
    thing = rng.choice(_THINGS_REVIEWED)
    positive = rng.random() < 0.5
    adjective = rng.choice(_POSITIVE if positive else _NEGATIVE)
    review = f"{thing.capitalize()} was {adjective}, and I went home {'happy' if positive else 'upset'}."
    label = "Positive" if positive else "Negative"
    return "Is the review positive or negative?", review, f"{label}, because the review says {thing} was {adjective}."


def _rewrite(rng: random.Random, shifted: bool) -> tuple[str, str, str]:
    name = rng.choice(_halves(_NAMES, 3, shifted))
    (v1, p1) = rng.choice(_MOTION_VERBS)
    (v2, p2) = rng.choice(_OBJECT_VERBS)
    place, item = rng.choice(_PLACES), rng.choice(_halves(_ITEMS, 0, shifted))
    present = f"{name} {v1} to {place} and {v2} the {item}."
    past = f"{name} {p1} to {place} and {p2} the {item}."
    return "", present, past


_GENERATORS = {"qa": _qa, "extract": _extract, "sort": _sort, "arith": _arith, "classify": _classify,
               "rewrite": _rewrite}


def make_example(family: str, rng: random.Random, shifted: bool = False, responses: int = 1) -> dict[str, Any]:
    """One MiniLLM-format record (``instruction``, ``input``, ``output``, ``prompt``, ``family``).

    An exact-answer family has one right ``output``. An open-ended family draws ``responses``
    independent responses to the prompt: ``output`` is the response when there is one, else the list
    of them (an evaluation record's references). The responses come from a random stream of their own
    seeded by the prompt's, so the first response of a prompt is the same however many are drawn: the
    student's one-response training row is the teacher's first row of the same prompt.
    """
    if family in OPEN_FAMILIES:
        prompt = open_prompt(family, rng, shifted)
        outputs = open_responses(family, prompt, random.Random(rng.getrandbits(64)), responses)
        return {"instruction": prompt.instruction, "input": prompt.input,
                "output": outputs[0] if responses == 1 else outputs,
                "prompt": build_prompt(prompt.instruction, prompt.input), "family": family}
    slot, input_text, output = _GENERATORS[family](rng, shifted)
    phrasing = rng.choice(_TEMPLATES[family][1 if shifted else 0])
    if family == "qa":
        instruction = phrasing.format(q=slot)
    elif family == "extract":
        instruction = phrasing.format(fields=slot)
    elif family == "sort":
        kind, order = slot.split("|")
        instruction = phrasing.format(kind=kind, order=order)
    elif family == "classify":
        instruction = phrasing.format(task=slot)
    else:
        instruction = phrasing
    return {"instruction": instruction, "input": input_text, "output": output,
            "prompt": build_prompt(instruction, input_text), "family": family}


def generate_split(n: int, seed: int, shifted: bool = False, exclude: set[str] | None = None,
                   responses: int = 1) -> list[dict[str, Any]]:
    """``n`` records, families in round-robin order, none whose prompt is in ``exclude``; each
    open-ended record carries ``responses`` responses (see :func:`make_example`)."""
    rng = random.Random(seed)
    seen = set(exclude or ())
    rows: list[dict[str, Any]] = []
    while len(rows) < n:
        row = make_example(FAMILIES[len(rows) % len(FAMILIES)], rng, shifted, responses)
        if row["prompt"] in seen:
            continue
        seen.add(row["prompt"])
        rows.append(row)
    return rows


def one_row_per_response(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Training rows: a record whose ``output`` is a list becomes one row per response."""
    return [{**r, "output": o} for r in rows for o in ([r["output"]] if isinstance(r["output"], str) else r["output"])]


def generate_suite_data(n_train: int, n_valid: int, n_test: int, seed: int, references: int = 1,
                        teacher_responses: int = 1, n_teacher_extra: int = 0) -> dict[str, list[dict[str, Any]]]:
    """The splits; valid, test, shifted and the teacher's extra prompts never repeat a train prompt or
    each other.

    ``train`` is the distillation set: one response per prompt. ``teacher`` is what the teacher
    trains on: the train prompts and ``n_teacher_extra`` more, with ``teacher_responses`` responses
    per open-ended prompt (one row each), so the teacher knows more than the distillation set holds,
    as a pretrained teacher does. Open-ended records of ``valid``, ``test`` and ``shifted`` carry
    ``references`` references each (ROUGE-L takes the best of them).
    """
    test = generate_split(n_test, seed + 3, responses=references)
    valid = generate_split(n_valid, seed + 2, exclude={r["prompt"] for r in test}, responses=references)
    held_out = {r["prompt"] for r in test + valid}
    teacher = generate_split(n_train + n_teacher_extra, seed + 1, exclude=held_out, responses=teacher_responses)
    first = [{**r, "output": r["output"] if isinstance(r["output"], str) else r["output"][0]} for r in teacher]
    shifted = generate_split(n_test, seed + 4, shifted=True, responses=references)
    return {"train": first[:n_train], "teacher": one_row_per_response(teacher), "valid": valid, "test": test,
            "shifted": shifted}
