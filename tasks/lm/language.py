"""A synthetic language with real structure for small-LM RLHF: vocabulary, grammar, splits, tokenizer, gold reward.

Vocabulary (word level, lowercase; `VOCAB` is this order, token id = position):
  specials    "[PAD]" "[BOS]" "[EOS]" "[UNK]"                   (ids 0, 1, 2, 3)
  DETERMINERS the a
  NOUNS       cat dog bird fox horse fish frog bear
  POSITIVE    good kind happy bright gentle brave               (positive adjectives)
  NEGATIVE    bad cruel sad dark rude lazy                      (negative adjectives)
  NEUTRAL     big small red old young green                     (neutral adjectives)
  VERBS       sees likes helps chases finds meets
  and .

Grammar (a probabilistic CFG over sentences; `LanguageConfig` holds the probabilities):
  S  -> NP VP "."
  VP -> Verb NP                 with prob 1 - p_and
      | Verb NP "and" NP        with prob p_and
  NP -> Det Adj^k Noun          k in {0, 1, 2} with probs p_adjectives; the k adjectives of one NP are distinct;
                                each adjective draws its class (positive, negative, neutral) with probs
                                p_sentiment, then a word uniformly in the class (redrawn if already in the NP)
  Det, Noun, Verb: uniform over their word class.
The language is the support of this PCFG: `parse` accepts exactly those word sequences, so a repeated adjective
inside one NP ("the good good cat") is ungrammatical, while the same adjective in two NPs is grammatical. The
longest sentence has MAX_SENTENCE_WORDS = 15 words ("the a1 a2 n v the a1 a2 n and the a1 a2 n .").
A sentence's subject is the noun of its first NP.

Text is words joined by single spaces; specials never occur in grammar text.

Corpora and splits (every sampler takes an explicit seed):
  * `documents`: pretraining documents of 1..4 sentences (uniform); each sentence after the first keeps the
    previous sentence's subject noun with prob p_topic, otherwise its subject is drawn uniformly (as in the
    grammar). This gives the LM a notion of "staying on topic".
  * `prompts`: one sentence each. A prompt is held out iff zlib.crc32(prompt_text.encode()) % heldout_every == 0
    (1/heldout_every of the sentences, 20% by default); the rest are the train split. Training stages (SFT, reward
    model, RLHF) use train prompts; evaluation uses held-out prompts.
  * `sft_pairs`: (prompt, response) demonstrations: a train prompt and one sentence whose subject equals the
    prompt's subject with prob sft_p_topic (otherwise uniform). Sentiment follows the grammar: the SFT policy is
    not sentiment-optimised, RLHF has to improve it.

Gold reward (`gold_reward(prompt, response)`), the quantity RLHF is meant to raise. `response` is decoded
generated text: words separated by whitespace, the literal "[EOS]" included if the model emitted it. "[PAD]"
words are dropped wherever they occur, and everything after the first "[EOS]" is ignored. Then:
  * if there is no "[EOS]", or the words before it are not exactly one grammatical sentence:
        reward = UNGRAMMATICAL = -2.0
  * otherwise
        reward = (number of DISTINCT positive adjectives in the response)
               - (number of negative adjective tokens in the response)
               + TOPIC_BONUS (= 1.0) if the prompt's subject noun is one of the response's nouns.
The maximum is 6 + 1 = 7 (all six positives across three NPs, on topic). UNGRAMMATICAL is not the minimum: a
grammatical response with enough negative adjectives scores -2 or less (down to -6), so a reward of -2 alone does
not identify an ungrammatical response (`is_grammatical` does). Repeating a positive adjective across NPs does
not raise the gold reward; a learned reward model may think it does (the reward-hacking question).
A sample of the SFT policy scores about 0.5-1 on average (see `tasks.lm.models` for measured values).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Sequence

import numpy as np

from algorithms.config import ConfigError, check_range, field
from tasks.seeding import stream_seed

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "[PAD]", "[BOS]", "[EOS]", "[UNK]"
SPECIALS = (PAD, BOS, EOS, UNK)
DETERMINERS = ("the", "a")
NOUNS = ("cat", "dog", "bird", "fox", "horse", "fish", "frog", "bear")
POSITIVE = ("good", "kind", "happy", "bright", "gentle", "brave")
NEGATIVE = ("bad", "cruel", "sad", "dark", "rude", "lazy")
NEUTRAL = ("big", "small", "red", "old", "young", "green")
VERBS = ("sees", "likes", "helps", "chases", "finds", "meets")
AND, STOP = "and", "."
VOCAB = (*SPECIALS, *DETERMINERS, *NOUNS, *POSITIVE, *NEGATIVE, *NEUTRAL, *VERBS, AND, STOP)
"""Every word, specials first; a word's token id is its position here."""
ADJECTIVES = (*POSITIVE, *NEGATIVE, *NEUTRAL)
MAX_SENTENCE_WORDS = 15
"""Words in the longest sentence: three NPs of four words, a verb, "and" and "."."""
MAX_NP_ADJECTIVES = 2

UNGRAMMATICAL = -2.0
"""Gold reward of a response that is not exactly one grammatical sentence followed by [EOS]."""
TOPIC_BONUS = 1.0
"""Gold reward added when the prompt's subject noun is one of the response's nouns."""
MAX_GOLD_REWARD = len(POSITIVE) + TOPIC_BONUS
"""7.0: six distinct positive adjectives (two in each of three NPs) plus the topic bonus."""

_CLASSES = (POSITIVE, NEGATIVE, NEUTRAL)
_DET, _NOUN, _VERB, _ADJ = set(DETERMINERS), set(NOUNS), set(VERBS), set(ADJECTIVES)
_POS, _NEG = set(POSITIVE), set(NEGATIVE)


def _is_integer(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _check_probs(cfg, name: str) -> None:
    v = getattr(cfg, name)
    ok = (isinstance(v, tuple) and len(v) == 3 and all(isinstance(p, (int, float)) and not isinstance(p, bool)
                                                        and math.isfinite(p) and p >= 0 for p in v)
          and abs(sum(v) - 1.0) <= 1e-6)
    if not ok:
        raise ConfigError(f"{type(cfg).__name__}.{name} = {v!r} is invalid: must be a tuple of 3 non-negative "
                          f"probabilities summing to 1.")


@dataclass(frozen=True)
class LanguageConfig:
    """The probabilities of the grammar and the corpora, and the held-out split rule (module docstring)."""

    p_adjectives: tuple[float, float, float] = field((0.4, 0.4, 0.2), "probabilities of 0, 1 and 2 adjectives in an NP")
    p_sentiment: tuple[float, float, float] = field((1 / 3, 1 / 3, 1 / 3), "probabilities of an adjective's class "
                                                    "(positive, negative, neutral)")
    p_and: float = field(0.2, "probability of the VP form `Verb NP and NP` (else `Verb NP`)")
    p_topic: float = field(0.5, "pretraining corpus: probability that a continuation sentence keeps the previous "
                                "sentence's subject noun (else uniform)")
    sft_p_topic: float = field(0.9, "SFT demonstrations: probability that the response's subject is the prompt's "
                                    "subject (else uniform)")
    heldout_every: int = field(5, "a prompt is held out iff zlib.crc32(prompt_text) % heldout_every == 0")

    def __post_init__(self):
        _check_probs(self, "p_adjectives")
        _check_probs(self, "p_sentiment")
        for name in ("p_and", "p_topic", "sft_p_topic"):
            check_range(self, name, 0.0, 1.0)
        if not _is_integer(self.heldout_every):
            raise ConfigError(f"LanguageConfig.heldout_every = {self.heldout_every!r} is invalid: must be an integer.")
        if self.heldout_every < 2:
            raise ConfigError(f"LanguageConfig.heldout_every = {self.heldout_every!r} is invalid: must be >= 2 "
                              f"(both splits non-empty).")


# ------------------------------------------------------------------------------------------------ grammar


def _pick(rng: np.random.Generator, words: Sequence[str]) -> str:
    return words[int(rng.integers(len(words)))]


def _draw(rng: np.random.Generator, probs: Sequence[float]) -> int:
    """An index drawn with probabilities `probs` (one uniform draw, inverse CDF)."""
    u, acc = rng.random(), 0.0
    for i, p in enumerate(probs):
        acc += p
        if u < acc:
            return i
    return max(i for i, p in enumerate(probs) if p > 0)  # u above a sum that rounds below 1


def _noun_phrase(rng: np.random.Generator, cfg: LanguageConfig, noun: str | None = None) -> list[str]:
    k = _draw(rng, cfg.p_adjectives)
    adjectives: list[str] = []
    while len(adjectives) < k:
        word = _pick(rng, _CLASSES[_draw(rng, cfg.p_sentiment)])
        if word not in adjectives:
            adjectives.append(word)
    det = _pick(rng, DETERMINERS)
    return [det, *adjectives, _pick(rng, NOUNS) if noun is None else noun]


def sample_sentence(rng: np.random.Generator, cfg: LanguageConfig, subject: str | None = None) -> list[str]:
    """One sentence from the grammar as a list of words; `subject` (a noun) fixes the noun of the subject NP."""
    if subject is not None and subject not in _NOUN:
        raise ConfigError(f"subject {subject!r} is invalid: must be one of the nouns {', '.join(NOUNS)}.")
    words = _noun_phrase(rng, cfg, subject)
    words.append(_pick(rng, VERBS))
    words += _noun_phrase(rng, cfg)
    if rng.random() < cfg.p_and:
        words.append(AND)
        words += _noun_phrase(rng, cfg)
    words.append(STOP)
    return words


@dataclass(frozen=True)
class Parse:
    """The parse of one grammatical sentence: its words by role, in sentence order."""

    nouns: tuple[str, ...]
    """The nouns of the 2 or 3 NPs; nouns[0] is the subject."""
    adjectives: tuple[str, ...]
    """Every adjective token of the sentence (0..6)."""
    verb: str

    @property
    def subject(self) -> str:
        return self.nouns[0]


def _parse_np(words: Sequence[str], i: int) -> tuple[int, list[str], str] | None:
    """Parse an NP at position i: (next position, adjectives, noun), or None."""
    if i >= len(words) or words[i] not in _DET:
        return None
    i += 1
    adjectives: list[str] = []
    while i < len(words) and words[i] in _ADJ:
        adjectives.append(words[i])
        i += 1
    if len(adjectives) > MAX_NP_ADJECTIVES or len(set(adjectives)) < len(adjectives):
        return None
    if i >= len(words) or words[i] not in _NOUN:
        return None
    return i + 1, adjectives, words[i]


def parse(words: Sequence[str]) -> Parse | None:
    """The parse of `words` if it is exactly one grammatical sentence (module docstring), else None."""
    words = list(words)
    np1 = _parse_np(words, 0)
    if np1 is None:
        return None
    i, adjectives, noun = np1
    nouns = [noun]
    if i >= len(words) or words[i] not in _VERB:
        return None
    verb = words[i]
    np2 = _parse_np(words, i + 1)
    if np2 is None:
        return None
    i, adj2, noun2 = np2
    adjectives, nouns = adjectives + adj2, nouns + [noun2]
    if i < len(words) and words[i] == AND:
        np3 = _parse_np(words, i + 1)
        if np3 is None:
            return None
        i, adj3, noun3 = np3
        adjectives, nouns = adjectives + adj3, nouns + [noun3]
    if words[i:] != [STOP]:
        return None
    return Parse(nouns=tuple(nouns), adjectives=tuple(adjectives), verb=verb)


def subject_of(words: Sequence[str]) -> str | None:
    """The subject noun (the noun of the first NP) of a grammatical sentence; None if `words` is not one."""
    p = parse(words)
    return None if p is None else p.subject


def is_heldout(text: str, cfg: LanguageConfig) -> bool:
    """Whether a prompt text belongs to the held-out split: zlib.crc32(text) % heldout_every == 0."""
    return zlib.crc32(text.encode()) % cfg.heldout_every == 0


# ------------------------------------------------------------------------------------------------ corpora


def documents(cfg: LanguageConfig, n: int, seed: int) -> list[str]:
    """`n` pretraining documents of 1..4 sentences (uniform); continuation sentences keep the previous subject with
    prob p_topic. Text is words joined by single spaces, no specials. Deterministic in (cfg, n, seed)."""
    _check_count(n)
    rng = np.random.default_rng(stream_seed(seed, "lm-documents"))
    docs = []
    for _ in range(n):
        sentences = [sample_sentence(rng, cfg)]
        for _ in range(int(rng.integers(1, 5)) - 1):
            keep = rng.random() < cfg.p_topic
            sentences.append(sample_sentence(rng, cfg, subject_of(sentences[-1]) if keep else None))
        docs.append(" ".join(w for s in sentences for w in s))
    return docs


def _check_count(n) -> None:
    if not _is_integer(n) or n < 0:
        raise ConfigError(f"n = {n!r} is invalid: must be an integer >= 0.")


def prompts(cfg: LanguageConfig, split: Literal["train", "heldout"], n: int, seed: int) -> list[str]:
    """`n` distinct prompts (one sentence each) of `split`, drawn from the grammar by rejection on the split rule,
    in draw order. Raises ConfigError if fewer than `n` distinct ones turn up in 20·n + 10000 draws (the default
    grammar has ~10^9 sentences, so only a config with a tiny language gets there)."""
    if split not in ("train", "heldout"):
        raise ConfigError(f"split = {split!r} is invalid: must be 'train' or 'heldout'.")
    _check_count(n)
    rng = np.random.default_rng(stream_seed(seed, "lm-prompts"))
    want_heldout = split == "heldout"
    seen: set[str] = set()
    out: list[str] = []
    budget = 20 * n + 10_000
    for _ in range(budget):
        if len(out) == n:
            break
        text = " ".join(sample_sentence(rng, cfg))
        if text in seen or is_heldout(text, cfg) != want_heldout:
            continue
        seen.add(text)
        out.append(text)
    if len(out) < n:
        raise ConfigError(f"n = {n} is invalid for split {split!r}: only {len(out)} distinct prompts were found in "
                          f"{budget} draws from the grammar.")
    return out


def sft_pairs(cfg: LanguageConfig, n: int, seed: int) -> list[tuple[str, str]]:
    """`n` (prompt, response) demonstrations: n distinct train prompts, each with one sentence whose subject is the
    prompt's subject with prob sft_p_topic (else uniform); adjectives as in the grammar."""
    ps = prompts(cfg, "train", n, stream_seed(seed, "sft-prompts"))
    rng = np.random.default_rng(stream_seed(seed, "sft-responses"))
    pairs = []
    for p in ps:
        subject = subject_of(p.split()) if rng.random() < cfg.sft_p_topic else None
        pairs.append((p, " ".join(sample_sentence(rng, cfg, subject))))
    return pairs


# ------------------------------------------------------------------------------------------------ gold reward


def response_words(response: str) -> list[str] | None:
    """The words of a decoded response before its first [EOS], [PAD] dropped; None if there is no [EOS]."""
    words = [w for w in response.split() if w != PAD]
    if EOS not in words:
        return None
    return words[:words.index(EOS)]


def gold_reward(prompt: str, response: str) -> float:
    """The gold reward of `response` to `prompt` (module docstring):
    UNGRAMMATICAL (-2) unless the words before the first [EOS] are exactly one grammatical sentence, else
    #distinct positive adjectives - #negative adjective tokens + TOPIC_BONUS·[prompt's subject is a response noun].

    `prompt` must be one grammatical sentence (ConfigError otherwise); `response` is decoded text with the literal
    "[EOS]" (module docstring for [PAD] and text after [EOS])."""
    subject = subject_of(prompt.split())
    if subject is None:
        raise ConfigError(f"prompt {prompt!r} is invalid: must be one grammatical sentence of the language.")
    words = response_words(response)
    p = None if words is None else parse(words)
    if p is None:
        return UNGRAMMATICAL
    positives = len({a for a in p.adjectives if a in _POS})
    negatives = sum(a in _NEG for a in p.adjectives)
    return float(positives - negatives + (TOPIC_BONUS if subject in p.nouns else 0.0))


def gold_rewards(prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
    """`gold_reward` of each (prompt, response) pair: float32 [B]."""
    if len(prompts) != len(responses):
        raise ConfigError(f"gold_rewards got {len(prompts)} prompts and {len(responses)} responses: must be equal.")
    return np.array([gold_reward(p, r) for p, r in zip(prompts, responses)], dtype=np.float32)


def is_grammatical(response: str) -> bool:
    """Whether a decoded response is exactly one grammatical sentence followed by [EOS] (gold reward != -2)."""
    words = response_words(response)
    return words is not None and parse(words) is not None


# ------------------------------------------------------------------------------------------------ tokenizer


def build_tokenizer() -> "PreTrainedTokenizerFast":
    """The word-level tokenizer of VOCAB: a `tokenizers` WordLevel model (unknown words -> [UNK]) after a
    whitespace split, decoding by joining tokens with single spaces, no special tokens added on encode (callers
    put [BOS]/[EOS] themselves), right padding. Survives save_pretrained + AutoTokenizer.from_pretrained."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # WordPiece's decoder joins tokens with spaces, gluing only tokens that start with its prefix ("##": no word
    # here does); cleanup=False keeps " ." as is.
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
                                   padding_side="right", clean_up_tokenization_spaces=False)
