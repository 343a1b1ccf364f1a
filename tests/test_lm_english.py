"""The real-English sources of the LM family (`tasks/lm/english.py`): the Shakespeare corpus loads without network, and
the gold reward is VADER's own compound score."""

import numpy as np
import pytest

from tasks.lm import english as lm_english


def test_the_corpus_loads_without_network(no_network):
    modern, folio = lm_english.works(), lm_english.works(folio=True)
    assert len(modern) == 42 and len(folio) == 35 and not set(modern) & set(folio)
    assert sum(len(t.split()) for t in modern.values()) > 800_000
    assert modern["hamlet_gut"].lstrip().startswith("HAMLET") and "To be, or not to be" in modern["hamlet_gut"]
    assert "Project Gutenberg" not in modern["hamlet_gut"][:2000]  # no licence header
    assert lm_english.titles()["hamlet_gut"] == "Hamlet"


def test_the_gold_reward_is_vaders_compound_score(no_network):
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    sentences = ["What a lovely, happy day.", "A grim and wretched night.", "The table stands by the door.",
                 "I do not love thee.", "O happy dagger!"]
    own = [SentimentIntensityAnalyzer().polarity_scores(s)["compound"] for s in sentences]
    got = lm_english.gold_sentiment(sentences)
    assert got.dtype == np.float64 and got.tolist() == own
    assert got[0] > 0.5 and got[1] < -0.5 and got[2] == 0.0 and got[3] < 0  # the lexicon's negation rule


def test_the_bpe_tokenizer_round_trips_text_and_save_pretrained(tmp_path):
    from transformers import AutoTokenizer

    texts = list(lm_english.works().values())[:3]
    tok = lm_english.build_bpe_tokenizer(texts, vocab_size=600)
    assert len(tok) == 600 and [tok.convert_tokens_to_ids(s) for s in lm_english.SPECIALS] == [0, 1, 2, 3]
    line = "To be, or not to be: that is the question — naïve café?"  # bytes outside the corpus decode too
    ids = tok(line)["input_ids"]
    assert tok.decode(ids) == line and len(ids) < len(line.encode())  # merges compress
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded(line)["input_ids"] == ids and loaded.decode(ids) == line and loaded.pad_token_id == 0
    again = lm_english.build_bpe_tokenizer(texts, vocab_size=600)
    assert again.get_vocab() == tok.get_vocab()  # deterministic


def test_speeches_drop_speaker_tags_and_stage_directions():
    hamlet = lm_english.speeches(lm_english.works()["hamlet_gut"])
    soliloquy = next(s for s in hamlet if s.startswith("To be, or not to be"))
    assert "slings and arrows of outrageous fortune" in soliloquy and "\n" not in soliloquy
    assert not any("[" in s or "]" in s for s in hamlet)  # "[Aside.]", "[Exeunt King and Polonius.]" are gone
    assert not any(s.startswith(("Ham. ", "King. ", "Pol. ")) for s in hamlet)
    text = "Ham.\n[Aside.] A little more than kin,\nand less than kind.\n\n[Exit.]\n\n  12\n\nKING.\nO, my offence is rank."
    assert lm_english.speeches(text) == ["A little more than kin, and less than kind.", "O, my offence is rank."]
    sonnets = lm_english.speeches(lm_english.works()["sonnets_gut"])
    assert any(s.startswith("From fairest creatures we desire increase") and s.endswith("the grave and thee.")
               for s in sonnets)
