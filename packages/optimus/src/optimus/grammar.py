"""The embedded corpus: sentences from a small probabilistic grammar whose attributes are known.

Every sentence carries three attributes — ``sentiment`` (positive/negative), ``topic``
(food/sports/travel/music) and ``tense`` (past/present/future) — expressed through disjoint
word lists, so :func:`read_attributes` can read them back from the words alone. That checker
is what measures guided generation and interpolations offline.

Sentences vary in length (about 4 to 25 words) and structure (simple clauses, fronted
prepositional phrases, evaluative tails, coordinated clauses). Generation is deterministic
given a seed.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

SENTIMENTS = ("positive", "negative")
TOPICS = ("food", "sports", "travel", "music")
TENSES = ("past", "present", "future")
ATTRIBUTES = {"sentiment": SENTIMENTS, "topic": TOPICS, "tense": TENSES}

# Per topic: agents, objects, places and verbs as (base, past, third-person present).
_LEXICON: dict[str, dict[str, tuple]] = {
    "food": {
        "agent": ("chef", "baker", "waiter", "cook"),
        "object": ("soup", "pizza", "bread", "cake", "salad", "pasta"),
        "place": ("kitchen", "restaurant", "bakery", "cafe"),
        "verb": (
            ("cook", "cooked", "cooks"),
            ("bake", "baked", "bakes"),
            ("serve", "served", "serves"),
            ("taste", "tasted", "tastes"),
        ),
    },
    "sports": {
        "agent": ("player", "coach", "team", "runner"),
        "object": ("match", "race", "game", "ball", "season", "goal"),
        "place": ("stadium", "field", "arena", "gym"),
        "verb": (
            ("win", "won", "wins"),
            ("play", "played", "plays"),
            ("train", "trained", "trains"),
            ("kick", "kicked", "kicks"),
        ),
    },
    "travel": {
        "agent": ("tourist", "pilot", "guide", "traveler"),
        "object": ("trip", "flight", "hotel", "tour", "train", "journey"),
        "place": ("airport", "station", "city", "island"),
        "verb": (
            ("book", "booked", "books"),
            ("visit", "visited", "visits"),
            ("explore", "explored", "explores"),
            ("pack", "packed", "packs"),
        ),
    },
    "music": {
        "agent": ("singer", "band", "pianist", "drummer"),
        "object": ("song", "album", "concert", "melody", "guitar", "show"),
        "place": ("studio", "theater", "club", "hall"),
        "verb": (
            ("sing", "sang", "sings"),
            ("record", "recorded", "records"),
            ("perform", "performed", "performs"),
            ("write", "wrote", "writes"),
        ),
    },
}

_SENTIMENT_WORDS: dict[str, dict[str, tuple]] = {
    "positive": {
        "adjective": ("great", "wonderful", "delightful", "excellent", "lovely", "brilliant"),
        "adverb": ("happily", "proudly", "gladly", "warmly"),
        "feeling": (
            ("love", "loved", "loves"),
            ("enjoy", "enjoyed", "enjoys"),
            ("praise", "praised", "praises"),
            ("admire", "admired", "admires"),
        ),
    },
    "negative": {
        "adjective": ("terrible", "awful", "boring", "dreadful", "poor", "disappointing"),
        "adverb": ("sadly", "angrily", "badly", "reluctantly"),
        "feeling": (
            ("hate", "hated", "hates"),
            ("dislike", "disliked", "dislikes"),
            ("criticize", "criticized", "criticizes"),
            ("regret", "regretted", "regrets"),
        ),
    },
}

_NEUTRAL_ADJECTIVES = ("old", "new", "small", "big", "local", "famous", "young", "quiet")
_CONNECTIVES = ("and", "but", "while")
_BE = {"past": "was", "present": "is", "future": "will be"}

# Reverse indices for the checker.
_TOPIC_OF_WORD = {
    word: topic
    for topic, entries in _LEXICON.items()
    for kind in ("agent", "object", "place")
    for word in entries[kind]
}
_VERB_TENSE: dict[str, tuple[str, str]] = {}  # word -> (topic, tense) for past/present forms
for _topic, _entries in _LEXICON.items():
    for _base, _past, _present in _entries["verb"]:
        _TOPIC_OF_WORD.setdefault(_base, _topic)
        _VERB_TENSE[_past] = (_topic, "past")
        _VERB_TENSE[_present] = (_topic, "present")
        _TOPIC_OF_WORD.setdefault(_past, _topic)
        _TOPIC_OF_WORD.setdefault(_present, _topic)
_SENTIMENT_OF_WORD: dict[str, str] = {}
for _sentiment, _kinds in _SENTIMENT_WORDS.items():
    for _kind, _words in _kinds.items():
        for _word in _words:
            if _kind == "feeling":
                _base, _past, _present = _word
                _SENTIMENT_OF_WORD.update({_base: _sentiment, _past: _sentiment, _present: _sentiment})
                _VERB_TENSE[_past] = ("", "past")
                _VERB_TENSE[_present] = ("", "present")
            else:
                _SENTIMENT_OF_WORD[_word] = _sentiment
# "train" is both a sports verb and a travel noun: the noun reading wins in the checker.
_TOPIC_OF_WORD["train"] = "travel"


@dataclass(frozen=True)
class GrammarSentence:
    """One generated sentence with the attributes it was generated with."""

    text: str
    sentiment: str
    topic: str
    tense: str

    def attributes(self) -> dict[str, str]:
        return {k: v for k, v in asdict(self).items() if k != "text"}


def _verb(rng: random.Random, topic: str, tense: str) -> list[str]:
    base, past, present = rng.choice(_LEXICON[topic]["verb"])
    if tense == "past":
        return [past]
    if tense == "present":
        return [present]
    return ["will", base]


def _noun_phrase(rng: random.Random, topic: str, kind: str, sentiment: str, p_sentiment: float) -> list[str]:
    words = ["the"]
    if rng.random() < p_sentiment:
        words.append(rng.choice(_SENTIMENT_WORDS[sentiment]["adjective"]))
    elif rng.random() < 0.3:
        words.append(rng.choice(_NEUTRAL_ADJECTIVES))
    words.append(rng.choice(_LEXICON[topic][kind]))
    return words


def _clause(rng: random.Random, topic: str, sentiment: str, tense: str) -> list[str]:
    """One clause; always carries at least one sentiment word so the attribute is readable."""
    form = rng.random()
    if form < 0.5:  # the [adj] agent [adv] verb the [adj] object [in the place]
        words = _noun_phrase(rng, topic, "agent", sentiment, 0.3)
        verb = _verb(rng, topic, tense)
        if rng.random() < 0.4:  # the adverb goes after "will": "will gladly bake"
            verb.insert(len(verb) - 1, rng.choice(_SENTIMENT_WORDS[sentiment]["adverb"]))
        words += verb
        words += _noun_phrase(rng, topic, "object", sentiment, 0.5)
        if rng.random() < 0.4:
            words += ["in", "the", rng.choice(_LEXICON[topic]["place"])]
        if not any(w in _SENTIMENT_OF_WORD for w in words):
            words += ["and", "it", *_BE[tense].split(), rng.choice(_SENTIMENT_WORDS[sentiment]["adjective"])]
        return words
    if form < 0.8:  # the object at the place was/is/will be adjective
        words = _noun_phrase(rng, topic, "object", sentiment, 0.0)
        if rng.random() < 0.5:
            words += ["at", "the", rng.choice(_LEXICON[topic]["place"])]
        words += [*_BE[tense].split(), rng.choice(_SENTIMENT_WORDS[sentiment]["adjective"])]
        return words
    # the agent loved/hated the object (feeling verbs carry sentiment; tense via auxiliaries)
    words = _noun_phrase(rng, topic, "agent", sentiment, 0.0)
    base, past, present = rng.choice(_SENTIMENT_WORDS[sentiment]["feeling"])
    words += {"past": [past], "present": [present], "future": ["will", base]}[tense]
    words += _noun_phrase(rng, topic, "object", sentiment, 0.2)
    return words


def generate_sentence(rng: random.Random, sentiment: str, topic: str, tense: str) -> GrammarSentence:
    """One sentence with the given attributes."""
    words = _clause(rng, topic, sentiment, tense)
    shape = rng.random()
    if shape < 0.2:
        words = [("yesterday", "today", "tomorrow")[TENSES.index(tense)], ",", *words]
    elif shape < 0.4:
        words += [rng.choice(_CONNECTIVES), *_clause(rng, topic, sentiment, tense)]
    words.append(".")
    return GrammarSentence(" ".join(words), sentiment, topic, tense)


def generate_corpus(num_sentences: int, seed: int = 0) -> list[GrammarSentence]:
    """``num_sentences`` sentences with uniformly drawn attributes, deterministic given ``seed``."""
    rng = random.Random(seed)
    return [
        generate_sentence(rng, rng.choice(SENTIMENTS), rng.choice(TOPICS), rng.choice(TENSES))
        for _ in range(num_sentences)
    ]


def read_attributes(text: str) -> dict[str, str | None]:
    """Read sentiment, topic and tense back from a sentence's words (``None`` where undecidable).

    Majority vote over the attribute-bearing words of each attribute; ties give ``None``.
    Tense markers: ``will``/``tomorrow`` (future), past-form verbs/``was``/``yesterday`` (past),
    present-form verbs/``is``/``today`` (present).
    """
    words = text.lower().replace(".", " ").replace(",", " ").split()

    def vote(labels: list[str]) -> str | None:
        if not labels:
            return None
        counts = {label: labels.count(label) for label in set(labels)}
        best = max(counts.values())
        winners = [label for label, n in counts.items() if n == best]
        return winners[0] if len(winners) == 1 else None

    sentiment = vote([_SENTIMENT_OF_WORD[w] for w in words if w in _SENTIMENT_OF_WORD])
    topic = vote([_TOPIC_OF_WORD[w] for w in words if w in _TOPIC_OF_WORD])
    tense_votes = []
    for w in words:
        if w in ("will", "tomorrow"):
            tense_votes.append("future")
        elif w in ("was", "yesterday") or (w in _VERB_TENSE and _VERB_TENSE[w][1] == "past"):
            tense_votes.append("past")
        elif w in ("is", "today") or (w in _VERB_TENSE and _VERB_TENSE[w][1] == "present"):
            tense_votes.append("present")
    tense = vote(tense_votes)
    return {"sentiment": sentiment, "topic": topic, "tense": tense}
