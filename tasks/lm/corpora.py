"""One interface over the LM family's two corpora, chosen by the type of the language config.

- `LanguageConfig` (`tasks.lm.language`): the suite's synthetic grammar, a word-level tokenizer and a gold reward
  that counts sentiment adjectives in one grammatical sentence; the fast task of the tests.
- `EnglishConfig` (`tasks.lm.english`): Shakespeare's speeches, a byte-level BPE tokenizer and VADER's compound
  score of the continuation; the main task of the L claims.

The artifacts (`tasks.lm.models`) and the loop (`tasks.lm.rlhf`) call only these functions, never a corpus module
directly, so a third corpus is one more branch here.
"""

from __future__ import annotations

from typing import Literal, Sequence, Union

import numpy as np

from algorithms.config import ConfigError
from tasks.lm import english, language
from tasks.lm.english import EnglishConfig
from tasks.lm.language import LanguageConfig

Corpus = Union[LanguageConfig, EnglishConfig]
Split = Literal["train", "heldout"]
GOLD_MODES = ("sentiment", "match")


def check(cfg) -> None:
    if not isinstance(cfg, (LanguageConfig, EnglishConfig)):
        raise ConfigError(f"language = {cfg!r} is invalid: must be a LanguageConfig (the grammar) or an EnglishConfig.")


def name(cfg: Corpus) -> str:
    return "english" if isinstance(cfg, EnglishConfig) else "grammar"


def tokenizer(cfg: Corpus):
    """The corpus's tokenizer (specials [PAD], [BOS], [EOS], [UNK] at ids 0–3 in both)."""
    return english.build_tokenizer(cfg) if isinstance(cfg, EnglishConfig) else language.build_tokenizer()


def limits(cfg: Corpus) -> tuple[int, int]:
    """(longest prompt in tokens with [BOS], default cap on generated tokens)."""
    if isinstance(cfg, EnglishConfig):
        return cfg.prompt_tokens, 16
    return language.MAX_SENTENCE_WORDS + 1, language.MAX_SENTENCE_WORDS + 1


def floor(cfg: Corpus) -> float:
    """The lowest gold reward: what a diverged run scores."""
    return english.FLOOR if isinstance(cfg, EnglishConfig) else language.UNGRAMMATICAL


def documents(cfg: Corpus, n: int, seed: int, split: Split = "train") -> list[str]:
    """Pretraining documents of the split (the grammar has no works to hold out: its held-out documents are a
    different draw of the same grammar)."""
    if isinstance(cfg, EnglishConfig):
        return english.documents(cfg, n, seed, split)
    from tasks.seeding import stream_seed

    return language.documents(cfg, n, seed if split == "train" else stream_seed(seed, "heldout-documents"))


def prompts(cfg: Corpus, split: Split, n: int, seed: int, *, gold: str = "sentiment") -> list[str]:
    """`n` distinct prompts of the split; the `match` reward draws from prompts with a clear sentiment only."""
    check_gold(cfg, gold)
    if isinstance(cfg, EnglishConfig):
        return english.prompts(cfg, split, n, seed, polar=gold == "match")
    return language.prompts(cfg, split, n, seed)


def sft_pairs(cfg: Corpus, n: int, seed: int) -> list[tuple[str, str]]:
    return english.sft_pairs(cfg, n, seed) if isinstance(cfg, EnglishConfig) else language.sft_pairs(cfg, n, seed)


def check_gold(cfg: Corpus, gold: str) -> None:
    allowed = GOLD_MODES if isinstance(cfg, EnglishConfig) else ("sentiment",)
    if gold not in allowed:
        raise ConfigError(f"gold = {gold!r} is invalid for the {name(cfg)} corpus: must be one of "
                          f"{', '.join(allowed)}.")


def gold_rewards(cfg: Corpus, prompts: Sequence[str], responses: Sequence[str], gold: str = "sentiment") -> np.ndarray:
    """The gold reward of each (prompt, decoded response), float32 [B]."""
    check_gold(cfg, gold)
    if isinstance(cfg, EnglishConfig):
        return english.gold_rewards(prompts, responses, gold)
    return language.gold_rewards(prompts, responses)


def well_formed(cfg: Corpus, response: str) -> bool:
    """The grammar: one grammatical sentence and [EOS]; English: at least one word, then [EOS]."""
    return english.well_formed(response) if isinstance(cfg, EnglishConfig) else language.is_grammatical(response)


def words(cfg: Corpus, response: str) -> list[str]:
    """The words of a decoded response before its first [EOS] (specials removed)."""
    if isinstance(cfg, EnglishConfig):
        return english.response_text(response)[0].split()
    ws = language.response_words(response)
    return ws if ws is not None else [w for w in response.split() if w not in language.SPECIALS]


def _ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def diversity(cfg: Corpus, responses: Sequence[str], k: int = 1) -> dict[str, float]:
    """Embedding-free sample diversity of responses given prompt-major, `k` consecutive samples per prompt:
    `distinct_1`, `distinct_2` — distinct n-grams over all n-grams of every response (Li et al. 2016, "A
    Diversity-Promoting Objective Function for Neural Conversation Models", arXiv:1510.03055) — and, with k ≥ 2,
    `prompt_distinct_2`: the same ratio among one prompt's k samples, averaged over prompts (1 when a prompt's samples
    share no bigram, 1/k when all k are the same text: the collapse of a policy onto one answer per prompt)."""
    toks = [words(cfg, r) for r in responses]
    out = {}
    for n in (1, 2):
        grams = [g for t in toks for g in _ngrams(t, n)]
        out[f"distinct_{n}"] = len(set(grams)) / len(grams) if grams else 0.0
    if k >= 2:
        per = []
        for i in range(0, len(toks) - k + 1, k):
            grams = [g for t in toks[i:i + k] for g in _ngrams(t, 2)]
            if grams:
                per.append(len(set(grams)) / len(grams))
        out["prompt_distinct_2"] = float(np.mean(per)) if per else 0.0
    return out


def quality(cfg: Corpus, prompts: Sequence[str], responses: Sequence[str]) -> dict[str, float]:
    """Sample quality of an artifact: eval/well_formed, eval/eos, eval/gold_mean and the corpus's own extras (the
    grammar: eval/topic; English: eval/words, the mean words before [EOS], and eval/neutral, the share scored 0)."""
    gold = gold_rewards(cfg, prompts, responses)
    well = np.array([well_formed(cfg, r) for r in responses])
    out = {"eval/well_formed": float(well.mean()), "eval/gold_mean": float(gold.mean()), "eval/n": float(len(prompts))}
    if isinstance(cfg, EnglishConfig):
        texts = [english.response_text(r) for r in responses]
        out.update({"eval/eos": float(np.mean([eos for _, eos in texts])),
                    "eval/words": float(np.mean([len(t.split()) for t, _ in texts])),
                    "eval/neutral": float(np.mean(gold == 0))})
        return out
    out["eval/eos"] = float(np.mean([language.response_words(r) is not None for r in responses]))
    topic = [language.subject_of(p.split()) in language.parse(language.response_words(r)).nouns
             for p, r, g in zip(prompts, responses, well) if g]
    out["eval/grammatical"] = out["eval/well_formed"]
    out["eval/gold_grammatical_mean"] = float(gold[well].mean()) if well.any() else float("nan")
    out["eval/topic"] = float(np.mean(topic)) if topic else float("nan")
    return out
