"""The synthetic demo: a small catalogue and interaction log with known structure.

What ``make serve`` builds when nothing is configured, and what end-to-end tests can
check answers against. Everything follows from ``seed`` (same seed → byte-identical
files), and the structure is planted on purpose:

* **Topics.** Items are spread evenly (±1) over eight topics (cooking, football, space,
  jazz, gardening, programming, travel, finance), each with four sub-tags. An item's
  title and 1–3 sentence description are built from its topic's templates and its
  sub-tag's vocabulary: real English that a sentence encoder clusters by topic.
  ``categories`` is ``(topic, sub_tag)``.
* **Users** have one (60%) or two favourite topics: 85% of their sessions are about
  one of them. Each session (3–10 items, minutes apart) mostly stays on one topic.
  Activity per user is log-normal (about 50 interactions on average, at least 5).
* **Popularity** is Zipf-like (1/rank) within each topic.
* **Co-consumed pairs** (``co_pairs``, about one per 25 items of a topic): when a user
  consumes item A (a popular one) she consumes its partner B (a tail item that is
  otherwise almost never chosen) right after it, 90% of the time, in the same session.
  So B's occurrences follow A's nearly always: item-to-item CF can learn A → B.
* **Cold items** (``cold_items``, 5% of each topic, never a pair member) get no
  interactions at all: only content and LLM channels can reach them.
* **Time**: 120 days up to 2024-01-01T00:00Z; session start times lean towards the
  end (Beta(2, 1)), a user's sessions never overlap, and events are ``view`` (weight 1)
  or ``like`` (weight 3, 12%).

Files (:func:`write_demo`): ``interactions.csv`` (``user_id,item_id,timestamp,weight,
event``, in time order) and ``items.csv`` (``item_id,title,text,categories``) in the
formats ``load_interactions``/``load_items`` read, plus ``demo_meta.json`` (topics,
user topics, pairs, cold items) for checks.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recall_engine.offline.data.interactions import Interactions
from recall_engine.sdk.types import ItemRecord

__all__ = ["DemoData", "TOPICS", "make_demo", "write_demo"]

N_ITEMS = 2000
N_USERS = 1000
PER_USER = 50
END_TIME = 1_704_067_200  # 2024-01-01T00:00:00Z
SPAN = 120 * 86_400
ZIPF_EXPONENT = 1.0
FAVOURITE_SHARE = 0.85
SESSION_FOCUS = 0.85
PAIR_FOLLOW = 0.9
COLD_SHARE = 0.05
LIKE_SHARE = 0.12
LIKE_WEIGHT = 3.0


@dataclass(slots=True, frozen=True)
class Topic:
    """One topic's vocabulary: ``subtags`` maps each sub-tag to its key phrases; the
    templates use ``{thing}``/``{other}`` (key phrases of one sub-tag), ``{adj}``,
    ``{a_adj}`` (with "a"/"an"), ``{who}``, ``{where}``; capitalised slot names
    (``{thing}``) get title case."""

    subtags: dict[str, tuple[str, ...]]
    adjectives: tuple[str, ...]
    people: tuple[str, ...]
    places: tuple[str, ...]
    titles: tuple[str, ...]
    sentences: tuple[str, ...]


TOPICS: dict[str, Topic] = {
    "cooking": Topic(
        subtags={
            "baking": (
                "sourdough bread",
                "cinnamon rolls",
                "chocolate cake",
                "butter croissants",
                "apple pie",
                "banana bread",
                "lemon tart",
                "oatmeal cookies",
            ),
            "grilling": (
                "barbecue ribs",
                "grilled salmon",
                "smoked brisket",
                "chicken skewers",
                "charred sweetcorn",
                "beef burgers",
                "grilled vegetables",
                "pork chops",
            ),
            "pasta": (
                "fresh tagliatelle",
                "spaghetti carbonara",
                "beef lasagne",
                "pesto gnocchi",
                "spinach ravioli",
                "slow-simmered tomato sauce",
                "baked ziti",
                "penne arrabbiata",
            ),
            "vegetarian": (
                "lentil curry",
                "chickpea stew",
                "roasted cauliflower",
                "vegetable soup",
                "tofu stir-fry",
                "stuffed peppers",
                "black bean chili",
                "halloumi salad",
            ),
        },
        adjectives=(
            "crispy",
            "homemade",
            "slow-cooked",
            "golden",
            "rustic",
            "seasonal",
            "savory",
            "fragrant",
            "hearty",
            "tender",
        ),
        people=(
            "home cooks",
            "pastry chefs",
            "beginners in the kitchen",
            "busy parents",
            "celebrated chefs",
            "food lovers",
        ),
        places=(
            "on a weeknight",
            "for a family dinner",
            "at a summer barbecue",
            "in a small apartment kitchen",
            "for the holidays",
            "on a lazy Sunday",
        ),
        titles=(
            "The {adj} Guide to {thing}",
            "{thing} in Thirty Minutes",
            "How to Make {thing} Like a Chef",
            "A Beginner's Recipe for {thing}",
            "{thing} and {other}: A Weeknight Menu",
            "Secrets of {adj} {thing}",
        ),
        sentences=(
            "Learn how to prepare {adj} {thing} with simple ingredients from your pantry.",
            "{Who} share their favourite recipe for {thing}, step by step.",
            "This recipe pairs {thing} with {other} {where}.",
            "Season generously, watch the heat, and your {thing} will come out {adj}.",
            "A practical cooking lesson on {thing}, from chopping to plating.",
            "Perfect {where}: {adj} {thing} that the whole table will love.",
        ),
    ),
    "football": Topic(
        subtags={
            "tactics": (
                "high pressing",
                "a back three",
                "counter-attacks",
                "zonal marking",
                "the midfield pivot",
                "set pieces",
                "the false nine",
                "attacking full-backs",
            ),
            "transfers": (
                "the transfer window",
                "a record signing",
                "contract negotiations",
                "loan deals",
                "release clauses",
                "the January market",
                "free agents",
                "scouting reports",
            ),
            "world-cup": (
                "the World Cup final",
                "group-stage matches",
                "penalty shootouts",
                "the national team",
                "qualifying campaigns",
                "the Golden Boot race",
                "host cities",
                "tournament favourites",
            ),
            "youth-academy": (
                "academy prospects",
                "youth coaches",
                "under-18 leagues",
                "first-team debuts",
                "talent scouts",
                "training-ground drills",
                "reserve matches",
                "teenage strikers",
            ),
        },
        adjectives=(
            "dramatic",
            "tactical",
            "attacking",
            "defensive",
            "legendary",
            "relentless",
            "decisive",
            "thrilling",
        ),
        people=(
            "head coaches",
            "veteran midfielders",
            "club captains",
            "football pundits",
            "passionate supporters",
            "former goalkeepers",
        ),
        places=(
            "in the Premier League",
            "at a packed stadium",
            "in the Champions League",
            "during a local derby",
            "on a cold night at Anfield",
            "in stoppage time",
        ),
        titles=(
            "{thing} Explained",
            "Lessons from {thing}",
            "Inside the Dressing Room: {thing}",
            "The {adj} Story of {thing}",
            "A Season of {thing}",
            "{thing} and {other}: Match Analysis",
        ),
        sentences=(
            "{Who} break down {thing} and what it means for the league table.",
            "A {adj} look at {thing} {where}.",
            "The match turned on {thing}, with {other} deciding the final score.",
            "Coaches explain how {thing} shapes every goal, tackle and pass.",
            "From kick-off to the final whistle, {thing} set the tempo {where}.",
            "Fans debate {thing} after {a_adj} weekend of football.",
        ),
    ),
    "space": Topic(
        subtags={
            "mars-missions": (
                "the Mars rover",
                "Martian dust storms",
                "the red planet",
                "Jezero crater",
                "ancient riverbeds on Mars",
                "the Mars helicopter",
                "sample return missions",
                "Martian soil",
            ),
            "telescopes": (
                "the James Webb Space Telescope",
                "the Hubble telescope",
                "distant galaxies",
                "infrared images",
                "exoplanet atmospheres",
                "radio telescopes",
                "glowing nebulae",
                "the cosmic microwave background",
            ),
            "rockets": (
                "reusable rockets",
                "the launch pad",
                "rocket engines",
                "orbital launches",
                "booster landings",
                "heavy-lift vehicles",
                "the final countdown",
                "liquid-fuelled stages",
            ),
            "space-stations": (
                "the International Space Station",
                "astronauts in orbit",
                "spacewalks",
                "microgravity experiments",
                "docking spacecraft",
                "life support systems",
                "orbital laboratories",
                "crew rotations",
            ),
        },
        adjectives=(
            "cosmic",
            "orbital",
            "distant",
            "interplanetary",
            "stellar",
            "historic",
            "uncrewed",
            "deep-space",
        ),
        people=(
            "NASA engineers",
            "astronomers",
            "astronauts",
            "planetary scientists",
            "mission controllers",
            "astrophysicists",
        ),
        places=(
            "in low Earth orbit",
            "across the solar system",
            "billions of light-years away",
            "at the launch site in Florida",
            "beyond the Moon",
            "on the surface of Mars",
        ),
        titles=(
            "Exploring {thing}",
            "The {adj} Frontier: {thing}",
            "{thing}: A New Era of Discovery",
            "What We Learned from {thing}",
            "{thing} and {other}: Mission Report",
            "Inside the Mission: {thing}",
        ),
        sentences=(
            "{Who} describe how {thing} could change our picture of the universe.",
            "New data on {thing} were gathered {where}.",
            "{A_adj} mission studies {thing} alongside {other}.",
            "Scientists explain gravity, orbits and light through the story of {thing}.",
            "Images of {thing} reveal details never seen before.",
            "The launch schedule, the science goals and the risks of {thing}, explained.",
        ),
    ),
    "jazz": Topic(
        subtags={
            "bebop": (
                "bebop solos",
                "Charlie Parker records",
                "fast chord changes",
                "saxophone improvisation",
                "the Blue Note sound",
                "Dizzy Gillespie",
                "late-night jam sessions",
                "trumpet lines",
            ),
            "swing": (
                "big band swing",
                "Duke Ellington",
                "swing dancing",
                "the horn section",
                "Count Basie",
                "ballroom orchestras",
                "brass arrangements",
                "the rhythm section",
            ),
            "jazz-piano": (
                "jazz piano trios",
                "Bill Evans",
                "modal harmony",
                "stride piano",
                "piano voicings",
                "Thelonious Monk",
                "piano ballads",
                "the walking bass line",
            ),
            "vocal-jazz": (
                "jazz standards",
                "Ella Fitzgerald",
                "scat singing",
                "torch songs",
                "Billie Holiday",
                "smoky club vocals",
                "the Great American Songbook",
                "vocal phrasing",
            ),
        },
        adjectives=(
            "smoky",
            "swinging",
            "soulful",
            "improvised",
            "late-night",
            "classic",
            "mellow",
            "virtuosic",
        ),
        people=(
            "jazz musicians",
            "veteran saxophonists",
            "critics and collectors",
            "young players",
            "bandleaders",
            "late-night listeners",
        ),
        places=(
            "in a New York club",
            "at the Newport Jazz Festival",
            "on a vinyl record",
            "in a Harlem ballroom",
            "after midnight",
            "in a small basement venue",
        ),
        titles=(
            "The Sound of {thing}",
            "{adj} Nights: {thing}",
            "Listening to {thing}",
            "A Guide to {thing}",
            "{thing} and {other}: Essential Recordings",
            "The History of {thing}",
        ),
        sentences=(
            "{Who} revisit {thing} and the records that defined an era.",
            "{A_adj} listening guide to {thing}, recorded {where}.",
            "The rhythm, harmony and improvisation of {thing} meet {other}.",
            "Put on a record and hear how {thing} changed jazz forever.",
            "Musicians trade choruses over {thing} {where}.",
            "An introduction to {thing} for anyone curious about jazz.",
        ),
    ),
    "gardening": Topic(
        subtags={
            "vegetables": (
                "tomato plants",
                "raised vegetable beds",
                "seed potatoes",
                "climbing beans",
                "courgettes",
                "garlic bulbs",
                "lettuce seedlings",
                "crop rotation",
            ),
            "roses": (
                "climbing roses",
                "rose pruning",
                "bare-root roses",
                "rose beds",
                "aphids on roses",
                "fragrant shrub roses",
                "deadheading roses",
                "rose hips",
            ),
            "composting": (
                "the compost heap",
                "garden compost",
                "worm bins",
                "leaf mould",
                "kitchen scraps",
                "rich garden soil",
                "mulching",
                "organic fertiliser",
            ),
            "houseplants": (
                "indoor houseplants",
                "monstera plants",
                "succulents",
                "a watering schedule",
                "potting mix",
                "Boston ferns",
                "repotting",
                "bright indirect light",
            ),
        },
        adjectives=(
            "blooming",
            "organic",
            "green",
            "sunny",
            "fertile",
            "seasonal",
            "lush",
            "hardy",
        ),
        people=(
            "gardeners",
            "head gardeners",
            "allotment growers",
            "beginners with a balcony",
            "horticulture experts",
            "green-fingered readers",
        ),
        places=(
            "in early spring",
            "on a sunny windowsill",
            "in a cottage garden",
            "on a city balcony",
            "before the first frost",
            "in the vegetable patch",
        ),
        titles=(
            "Growing {thing}",
            "The {adj} Garden: {thing}",
            "A Gardener's Guide to {thing}",
            "{thing} Through the Seasons",
            "{thing} and {other}: A Planting Plan",
            "Secrets of {adj} {thing}",
        ),
        sentences=(
            "{Who} share tips on soil, sunlight and watering for {thing}.",
            "Start with {thing} {where} and enjoy {a_adj} garden all summer.",
            "A practical guide to {thing}, with advice on pruning, feeding and pests.",
            "Combine {thing} with {other} for healthier beds and borders.",
            "Dig, sow and water, and give {thing} a little patience.",
            "Learn when to plant, prune and feed, with {thing} {where}.",
        ),
    ),
    "programming": Topic(
        subtags={
            "python": (
                "Python scripts",
                "type hints",
                "async functions",
                "the standard library",
                "virtual environments",
                "list comprehensions",
                "pytest fixtures",
                "Python packaging",
            ),
            "rust": (
                "the Rust borrow checker",
                "ownership and lifetimes",
                "Cargo crates",
                "memory safety",
                "zero-cost abstractions",
                "Rust traits",
                "async Rust",
                "compiler error messages",
            ),
            "web-development": (
                "REST APIs",
                "JavaScript frameworks",
                "CSS layouts",
                "web servers",
                "HTTP caching",
                "front-end components",
                "browser performance",
                "login and authentication flows",
            ),
            "databases": (
                "SQL queries",
                "database indexes",
                "query planners",
                "transactions",
                "schema migrations",
                "PostgreSQL",
                "database replication",
                "connection pools",
            ),
        },
        adjectives=(
            "fast",
            "clean",
            "scalable",
            "concurrent",
            "maintainable",
            "modern",
            "robust",
            "efficient",
        ),
        people=(
            "software engineers",
            "open-source maintainers",
            "junior developers",
            "senior architects",
            "backend programmers",
            "core contributors",
        ),
        places=(
            "in production",
            "on a large codebase",
            "in a weekend side project",
            "during a code review",
            "in the cloud",
            "on a tight deadline",
        ),
        titles=(
            "Mastering {thing}",
            "{adj} Code with {thing}",
            "A Practical Guide to {thing}",
            "{thing} in Practice",
            "{thing} and {other}: Patterns That Scale",
            "Debugging {thing}",
        ),
        sentences=(
            "{Who} explain how to write {adj} code with {thing}.",
            "A hands-on tutorial on {thing}, with examples you can run {where}.",
            "Learn how {thing} and {other} fit together in a real application.",
            "Refactor, test and profile your code to get the most out of {thing}.",
            "Common bugs with {thing} and how to fix them {where}.",
            "A clear walkthrough of {thing} for developers who ship software.",
        ),
    ),
    "travel": Topic(
        subtags={
            "backpacking": (
                "youth hostels",
                "backpacking routes",
                "overnight buses",
                "budget travel",
                "mountain hiking trails",
                "street food markets",
                "travel insurance",
                "packing light",
            ),
            "city-breaks": (
                "weekend city breaks",
                "museums and galleries",
                "boutique hotels",
                "old town walks",
                "rooftop bars",
                "Lisbon",
                "Prague",
                "Barcelona",
            ),
            "beaches": (
                "sandy beaches",
                "island hopping",
                "snorkelling reefs",
                "beach resorts",
                "turquoise lagoons",
                "the Greek islands",
                "coastal villages",
                "sunset cruises",
            ),
            "rail-journeys": (
                "scenic train journeys",
                "sleeper trains",
                "rail passes",
                "mountain railways",
                "the Trans-Siberian railway",
                "station cafés",
                "high-speed trains",
                "alpine rail routes",
            ),
        },
        adjectives=(
            "unforgettable",
            "affordable",
            "scenic",
            "relaxing",
            "adventurous",
            "sunny",
            "hidden",
            "charming",
        ),
        people=(
            "seasoned travellers",
            "travel writers",
            "families on holiday",
            "solo backpackers",
            "local guides",
            "first-time visitors",
        ),
        places=(
            "in Southeast Asia",
            "across Europe",
            "on a long weekend",
            "in the off-season",
            "along the Mediterranean coast",
            "on a tight budget",
        ),
        titles=(
            "The {adj} Guide to {thing}",
            "Discovering {thing}",
            "{thing} on a Budget",
            "Seven Days of {thing}",
            "{thing} and {other}: An Itinerary",
            "Postcards from {thing}",
        ),
        sentences=(
            "{Who} share an itinerary built around {thing}.",
            "Plan {a_adj} trip with {thing} {where}.",
            "Where to stay, what to eat and how to get around: {thing} and {other}.",
            "Pack your bags for {thing}, with tips on tickets, timing and local customs.",
            "Discover {adj} places and {thing} {where}.",
            "A travel diary about {thing}, passports, maps and all.",
        ),
    ),
    "finance": Topic(
        subtags={
            "investing": (
                "index funds",
                "stock portfolios",
                "dividend shares",
                "asset allocation",
                "market volatility",
                "exchange-traded funds",
                "long-term returns",
                "diversification",
            ),
            "retirement": (
                "retirement savings",
                "pension plans",
                "compound interest",
                "early retirement",
                "annuities",
                "retirement income",
                "employer pension matching",
                "a retirement nest egg",
            ),
            "budgeting": (
                "a monthly budget",
                "an emergency fund",
                "household expenses",
                "saving money",
                "credit card debt",
                "spending habits",
                "grocery bills",
                "a zero-based budget",
            ),
            "cryptocurrency": (
                "Bitcoin",
                "crypto wallets",
                "blockchain technology",
                "stablecoins",
                "crypto exchanges",
                "Ethereum",
                "token prices",
                "decentralized finance",
            ),
        },
        adjectives=(
            "smart",
            "steady",
            "long-term",
            "risky",
            "practical",
            "tax-efficient",
            "disciplined",
            "volatile",
        ),
        people=(
            "financial advisers",
            "personal finance experts",
            "young savers",
            "economists",
            "portfolio managers",
            "first-time investors",
        ),
        places=(
            "in a bear market",
            "before tax season",
            "on a modest salary",
            "during high inflation",
            "over the next decade",
            "after a market crash",
        ),
        titles=(
            "A {adj} Approach to {thing}",
            "Understanding {thing}",
            "{thing} Made Simple",
            "The Truth About {thing}",
            "{thing} and {other}: Building Wealth",
            "Your Guide to {thing}",
        ),
        sentences=(
            "{Who} explain {thing} and what it all means for your savings.",
            "{A_adj} plan for {thing} {where}.",
            "Compare {thing} with {other} before you invest your money.",
            "Interest rates, inflation and risk: what {thing} could mean for your money.",
            "Build wealth slowly with {thing} and {a_adj} mindset.",
            "Money lessons on {thing} for anyone managing a household budget.",
        ),
    ),
}

_SMALL_WORDS = frozenset("a an the and or of on in to for with at by from".split())


def _title_case(text: str) -> str:
    """Capitalise words (and hyphenated parts) except small words that neither start
    the title nor follow a colon; words already holding a capital ("PostgreSQL") stay."""
    out: list[str] = []
    for word in text.split(" "):
        starts = not out or out[-1].endswith(":")
        if any(c.isupper() for c in word) or (not starts and word in _SMALL_WORDS):
            out.append(word)
        else:
            out.append("-".join(p[:1].upper() + p[1:] for p in word.split("-")))
    return " ".join(out)


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def _with_article(word: str) -> str:
    return ("an " if word[:1].lower() in "aeiou" else "a ") + word


@dataclass(slots=True, frozen=True, eq=False)
class DemoData:
    """The demo catalogue and log, with the structure planted in them.

    ``topics`` maps item id → topic, ``user_topics`` user id → favourite topics,
    ``co_pairs`` lists ``(A, B)`` with B consumed right after A, ``cold_items`` the ids
    with no interactions.
    """

    interactions: Interactions
    items: list[ItemRecord]
    topics: dict[str, str]
    user_topics: dict[str, tuple[str, ...]]
    co_pairs: list[tuple[str, str]]
    cold_items: tuple[str, ...]


def make_demo(
    n_items: int = N_ITEMS, n_users: int = N_USERS, seed: int = 0, *, per_user: int = PER_USER
) -> DemoData:
    """Build the demo (see the module docstring). ``per_user`` is the mean number of
    interactions drawn per user (a few are dropped as repeats)."""
    if n_items < 8 * len(TOPICS) or n_users < 1:
        raise ValueError(
            f"the demo needs at least {8 * len(TOPICS)} items and 1 user, "
            f"got n_items={n_items}, n_users={n_users}"
        )
    rng = np.random.default_rng(seed)
    names = list(TOPICS)
    topic_of = np.arange(n_items) % len(names)
    rng.shuffle(topic_of)
    width = max(4, len(str(n_items)))
    item_ids = [f"item-{i + 1:0{width}d}" for i in range(n_items)]
    items = _make_items(item_ids, [names[t] for t in topic_of], rng)
    members = [np.flatnonzero(topic_of == t) for t in range(len(names))]
    plan = [_plan_topic(m, rng) for m in members]
    user_ids = [f"user-{u + 1:0{max(4, len(str(n_users)))}d}" for u in range(n_users)]
    favourites = [
        tuple(sorted(rng.choice(len(names), 1 + int(rng.random() < 0.4), replace=False).tolist()))
        for _ in user_ids
    ]
    rows = _make_log(members, plan, favourites, per_user, rng)
    interactions = Interactions(
        np.asarray(user_ids)[rows["user"]] if len(rows["user"]) else np.zeros(0, "<U1"),
        np.asarray(item_ids)[rows["item"]] if len(rows["item"]) else np.zeros(0, "<U1"),
        rows["time"],
        rows["weight"],
        rows["event"],
    )
    pairs = sorted((item_ids[a], item_ids[b]) for p in plan for a, b in p.pairs.items())
    cold = tuple(sorted(item_ids[i] for p in plan for i in p.cold))
    return DemoData(
        interactions=interactions,
        items=items,
        topics={item_ids[i]: names[t] for i, t in enumerate(topic_of)},
        user_topics={
            u: tuple(names[t] for t in fav) for u, fav in zip(user_ids, favourites, strict=True)
        },
        co_pairs=pairs,
        cold_items=cold,
    )


def _make_items(
    item_ids: list[str],
    topics: list[str],
    rng: np.random.Generator,
) -> list[ItemRecord]:
    seen: set[str] = set()
    out = []
    for item_id, name in zip(item_ids, topics, strict=True):
        topic = TOPICS[name]
        subtag = list(topic.subtags)[rng.integers(len(topic.subtags))]
        phrases = topic.subtags[subtag]
        title = ""
        for _ in range(20):  # prefer a title not used yet
            slots = _slots(topic, phrases, rng)
            title = _title_case(topic.titles[rng.integers(len(topic.titles))].format(**slots))
            if title not in seen:
                break
        if title in seen:
            title = f"{title}, Part {sum(t.startswith(title) for t in seen) + 1}"
        seen.add(title)
        picks = rng.choice(len(topic.sentences), 1 + rng.integers(3), replace=False)
        text = " ".join(topic.sentences[k].format(**slots) for k in sorted(picks.tolist()))
        out.append(ItemRecord(item_id, title, text, (name, subtag)))
    return out


def _slots(topic: Topic, phrases: tuple[str, ...], rng: np.random.Generator) -> dict[str, str]:
    a, b = rng.choice(len(phrases), 2, replace=False).tolist()
    adj = topic.adjectives[rng.integers(len(topic.adjectives))]
    who = topic.people[rng.integers(len(topic.people))]
    where = topic.places[rng.integers(len(topic.places))]
    return {
        "thing": phrases[a],
        "other": phrases[b],
        "adj": adj,
        "who": who,
        "where": where,
        "a_adj": _with_article(adj),
        "A_adj": _capitalise(_with_article(adj)),
        "Who": _capitalise(who),
    }


@dataclass(slots=True)
class _TopicPlan:
    cdf: np.ndarray  # cumulative popularity over the topic's members
    pairs: dict[int, int]  # item index A → item index B
    cold: list[int]


def _plan_topic(members: np.ndarray, rng: np.random.Generator) -> _TopicPlan:
    """Zipf popularity by a random rank, co-consumed pairs (A from the head, B from the
    tail, B almost never chosen on its own) and cold items (weight 0)."""
    m = len(members)
    rank = np.empty(m, dtype=np.int64)
    rank[rng.permutation(m)] = np.arange(m)
    weight = 1.0 / (rank + 1.0) ** ZIPF_EXPONENT
    n_pairs = max(1, m // 25)
    by_rank = np.argsort(rank)
    heads = rng.choice(by_rank[: 4 * n_pairs], n_pairs, replace=False)
    tails = rng.choice(by_rank[m // 2 :], n_pairs, replace=False)
    weight[tails] *= 0.02
    taken = set(heads.tolist()) | set(tails.tolist())
    free = np.asarray([i for i in range(m) if i not in taken])
    n_cold = max(1, round(COLD_SHARE * m))
    cold = rng.choice(free, n_cold, replace=False)
    weight[cold] = 0.0
    cdf = np.cumsum(weight) / weight.sum()
    return _TopicPlan(
        cdf=cdf,
        pairs={int(members[a]): int(members[b]) for a, b in zip(heads, tails, strict=True)},
        cold=sorted(int(members[i]) for i in cold),
    )


def _make_log(
    members: list[np.ndarray],
    plan: list[_TopicPlan],
    favourites: list[tuple[int, ...]],
    per_user: int,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    n_topics = len(members)
    partner = {a: b for p in plan for a, b in p.pairs.items()}
    sigma = 0.6
    counts = np.clip(
        np.round(rng.lognormal(np.log(per_user) - sigma**2 / 2, sigma, len(favourites))),
        5,
        6 * per_user,
    ).astype(int)
    users: list[int] = []
    items: list[int] = []
    times: list[int] = []
    for u, (fav, count) in enumerate(zip(favourites, counts.tolist(), strict=True)):
        mix = np.full(n_topics, (1 - FAVOURITE_SHARE) / (n_topics - len(fav)))
        mix[list(fav)] = FAVOURITE_SHARE / len(fav)
        sessions = _user_sessions(count, mix, members, plan, partner, rng)
        for item, t in _session_times(sessions, rng):
            users.append(u)
            items.append(item)
            times.append(t)
    order = np.lexsort((np.arange(len(times)), np.asarray(users), np.asarray(times)))
    likes = rng.random(len(order)) < LIKE_SHARE
    return {
        "user": np.asarray(users, dtype=np.int64)[order],
        "item": np.asarray(items, dtype=np.int64)[order],
        "time": np.asarray(times, dtype=np.int64)[order],
        "weight": np.where(likes, LIKE_WEIGHT, 1.0).astype(np.float32),
        "event": np.where(likes, "like", "view"),
    }


def _user_sessions(
    count: int,
    mix: np.ndarray,
    members: list[np.ndarray],
    plan: list[_TopicPlan],
    partner: dict[int, int],
    rng: np.random.Generator,
) -> list[list[tuple[int, bool]]]:
    """One user's sessions: lists of ``(item, follows_partner)``, ``count`` items in
    all (fewer if repeats keep coming up: a user never consumes an item twice)."""
    seen: set[int] = set()
    sessions = []
    remaining = count
    for _ in range(4 * count):  # enough rounds even when the favourites' heads are used up
        if remaining <= 0:
            break
        length = min(remaining, int(rng.integers(3, 11)))
        focus = rng.choice(len(mix), p=mix)
        topics = np.where(
            rng.random(length) < SESSION_FOCUS, focus, rng.choice(len(mix), length, p=mix)
        )
        session: list[tuple[int, bool]] = []
        for t, x in zip(topics.tolist(), rng.random(length).tolist(), strict=True):
            item = int(
                members[t][min(np.searchsorted(plan[t].cdf, x, side="right"), len(members[t]) - 1)]
            )
            if item in seen:
                continue
            seen.add(item)
            session.append((item, False))
            b = partner.get(item)
            if b is not None and b not in seen and rng.random() < PAIR_FOLLOW:
                seen.add(b)
                session.append((b, True))
        if session:
            sessions.append(session)
            remaining -= len(session)
    return sessions


def _session_times(
    sessions: list[list[tuple[int, bool]]],
    rng: np.random.Generator,
) -> list[tuple[int, int]]:
    """Timestamps: session starts lean recent (Beta(2, 1) over the span) and never
    overlap; items in a session are 20 s–10 min apart, a pair's B 10–120 s after A."""
    starts = np.sort(END_TIME - SPAN + SPAN * rng.beta(2.0, 1.0, len(sessions)))
    out = []
    clock = 0
    for start, session in zip(starts.astype(np.int64).tolist(), sessions, strict=True):
        t = max(start, clock + 1800)
        for i, (item, follows) in enumerate(session):
            if i:
                t += int(rng.integers(10, 121) if follows else rng.integers(20, 601))
            out.append((item, t))
        clock = t
    return out


def write_demo(
    out_dir: str | Path, *, n_items: int = N_ITEMS, n_users: int = N_USERS, seed: int = 0
) -> tuple[Path, Path]:
    """Write ``interactions.csv``, ``items.csv`` and ``demo_meta.json`` into ``out_dir``
    (created if needed); returns the two CSV paths. Same arguments → same bytes."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    demo = make_demo(n_items, n_users, seed)
    log = demo.interactions
    interactions_path = out / "interactions.csv"
    with open(interactions_path, "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["user_id", "item_id", "timestamp", "weight", "event"])
        events = log.events if log.events is not None else [""] * len(log)
        w.writerows(
            zip(
                log.user_ids.tolist(),
                log.item_ids.tolist(),
                log.timestamps.tolist(),
                (f"{x:g}" for x in log.weights.tolist()),
                list(events),
                strict=True,
            )
        )
    items_path = out / "items.csv"
    with open(items_path, "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["item_id", "title", "text", "categories"])
        w.writerows([it.item_id, it.title, it.text, "|".join(it.categories)] for it in demo.items)
    meta = {
        "seed": seed,
        "n_items": n_items,
        "n_users": n_users,
        "topics": demo.topics,
        "user_topics": demo.user_topics,
        "co_pairs": demo.co_pairs,
        "cold_items": list(demo.cold_items),
    }
    (out / "demo_meta.json").write_text(
        json.dumps(meta, indent=1, sort_keys=True) + "\n", encoding="utf-8"
    )
    return interactions_path, items_path
