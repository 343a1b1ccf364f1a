"""The LM family's synthetic language (`tasks/lm/language.py`): the grammar's samples parse and non-sentences do not,
the gold reward's arithmetic on hand-written responses, the prompt splits, the corpora's determinism and topic
statistics, config validation and the tokenizer's round trips (incl. save_pretrained / from_pretrained)."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from algorithms.config import ConfigError
from tasks.lm import language as lang
from tasks.lm.language import (EOS, MAX_GOLD_REWARD, MAX_SENTENCE_WORDS, NOUNS, TOPIC_BONUS, UNGRAMMATICAL, VOCAB,
                               LanguageConfig, build_tokenizer, documents, gold_reward, gold_rewards, parse, prompts,
                               sample_sentence, sft_pairs, subject_of)

CFG = LanguageConfig()
PROMPT = "the cat sees a dog ."  # subject: cat


# ------------------------------------------------------------------------------------------------ grammar


def test_vocabulary_order_and_size():
    assert VOCAB[:4] == ("[PAD]", "[BOS]", "[EOS]", "[UNK]")
    assert len(VOCAB) == len(set(VOCAB)) == 4 + 2 + 8 + 6 * 3 + 6 + 2


def test_grammar_samples_always_parse():
    rng = np.random.default_rng(0)
    lengths = []
    for _ in range(3000):
        subject = NOUNS[int(rng.integers(len(NOUNS)))] if rng.random() < 0.5 else None
        words = sample_sentence(rng, CFG, subject)
        p = parse(words)
        assert p is not None, words
        assert subject is None or p.subject == subject == subject_of(words)
        assert len(p.nouns) in (2, 3) and len(p.adjectives) <= 6
        lengths.append(len(words))
    assert max(lengths) <= MAX_SENTENCE_WORDS and min(lengths) == 6  # "det noun verb det noun ."


def test_longest_sentence_parses_and_has_fifteen_words():
    words = "the good kind cat sees the bad sad dog and a big red fox .".split()
    assert len(words) == MAX_SENTENCE_WORDS == 15 and parse(words).nouns == ("cat", "dog", "fox")


@pytest.mark.parametrize("text", [
    "the cat sees a dog . the",                        # extra word
    "the cat sees a dog",                              # missing "."
    "the good kind happy cat sees a dog .",            # three adjectives in one NP
    "the cat sees a dog . a dog sees the cat .",       # two sentences
    "the good good cat sees a dog .",                  # repeated adjective inside one NP
    "cat sees a dog .",                                # no determiner
    "the cat sees a dog and .",                        # "and" without an NP
    "the cat a dog .",                                 # no verb
    "",                                                # nothing
    "the cat sees a zebra .",                          # unknown word
])
def test_parse_rejects_non_sentences(text):
    assert parse(text.split()) is None and subject_of(text.split()) is None


def test_parse_reads_roles():
    p = parse("a good cat likes the bad old dog and the good fish .".split())
    assert p.nouns == ("cat", "dog", "fish") and p.adjectives == ("good", "bad", "old", "good")
    assert p.verb == "likes" and p.subject == "cat"


def test_adjective_class_probabilities_are_followed():
    cfg = LanguageConfig(p_adjectives=(0.0, 0.0, 1.0), p_sentiment=(1.0, 0.0, 0.0), p_and=1.0)
    rng = np.random.default_rng(1)
    for _ in range(50):
        p = parse(sample_sentence(rng, cfg))
        assert len(p.adjectives) == 6 and set(p.adjectives) <= set(lang.POSITIVE) and len(p.nouns) == 3


# ------------------------------------------------------------------------------------------------ gold reward


@pytest.mark.parametrize("response, want", [
    # 1 distinct positive (good) - 0 negatives + topic (cat is a noun) = 2
    ("the good cat sees a dog . [EOS]", 2.0),
    # positives {good, kind} = 2, negatives 0, no cat: 2
    ("a good kind dog sees the fish . [EOS]", 2.0),
    # positives {good} = 1 (repeated in two NPs counts once), no topic: 1
    ("the good dog sees a good fish . [EOS]", 1.0),
    # positives 0, negatives: bad, sad, bad = 3 tokens (repeats count), topic (cat, object position): -3 + 1 = -2
    ("the bad sad dog sees a bad cat . [EOS]", -2.0),
    # positives {happy, brave} = 2, negative rude = 1, neutral big ignored, topic: 2 - 1 + 1 = 2
    ("a happy big dog meets the brave rude fox and the cat . [EOS]", 2.0),
    # the maximum: six distinct positives, topic: 6 + 1 = 7
    ("the good kind cat helps a happy bright dog and the gentle brave fox . [EOS]", MAX_GOLD_REWARD),
    # no [EOS]: ungrammatical
    ("the good cat sees a dog .", UNGRAMMATICAL),
    # words before [EOS] are not one sentence (two sentences)
    ("the cat sees a dog . the cat sees a dog . [EOS]", UNGRAMMATICAL),
    # not a sentence
    ("the good cat sees . [EOS]", UNGRAMMATICAL),
    # text after the first [EOS] is ignored: 0 positives, 0 negatives, topic = 1
    ("a cat sees a dog . [EOS] the bad bad rude dog [EOS] nonsense", 1.0),
    # [PAD] never counts, before or after [EOS]: 1 (kind) + topic 1 = 2
    ("a kind cat [PAD] sees a dog . [EOS] [PAD] [PAD]", 2.0),
    # [EOS] right away: nothing before it is not a sentence
    ("[EOS] the cat sees a dog .", UNGRAMMATICAL),
])
def test_gold_reward_by_hand(response, want):
    assert gold_reward(PROMPT, response) == want


def test_topic_bonus_reads_the_prompt_subject_only():
    # prompt subject is "dog"; "cat" (the prompt's object) in the response earns nothing: 0 - 0 + 0
    assert gold_reward("a dog sees the cat .", "the cat sees a fox . [EOS]") == 0.0
    assert gold_reward("a dog sees the cat .", "the fox sees a dog . [EOS]") == TOPIC_BONUS


def test_gold_rewards_is_vectorised_gold_reward():
    pairs = sft_pairs(CFG, 50, seed=3)
    ps, rs = [p for p, _ in pairs], [r + " " + EOS for _, r in pairs]
    got = gold_rewards(ps, rs)
    assert got.dtype == np.float32 and got.shape == (50,)
    assert got.tolist() == [gold_reward(p, r) for p, r in zip(ps, rs)]
    with pytest.raises(ConfigError):
        gold_rewards(ps, rs[:-1])
    with pytest.raises(ConfigError, match="prompt"):
        gold_reward("not a sentence", "the cat sees a dog . [EOS]")


def test_demonstrations_are_grammatical_on_topic_and_not_sentiment_optimised():
    pairs = sft_pairs(CFG, 2000, seed=0)
    ps, rs = [p for p, _ in pairs], [r + " " + EOS for _, r in pairs]
    gold = gold_rewards(ps, rs)
    assert all(lang.is_grammatical(r) for r in rs)
    on_topic = np.mean([subject_of(r.split()) == subject_of(p.split()) for p, r in pairs])
    # P(same subject) = sft_p_topic + (1 - sft_p_topic) / 8 = 0.9125; binomial sd ~ 0.006
    assert abs(on_topic - 0.9125) < 0.03
    # sentiment is symmetric: E[#distinct pos - #neg] is slightly below 0 and the topic bonus ~0.93: mean ~0.9
    assert 0.6 < gold.mean() < 1.1
    assert len({p for p in ps}) == 2000 and not any(lang.is_heldout(p, CFG) for p in ps)


# ------------------------------------------------------------------------------------------------ corpora and splits


def test_prompt_splits_are_disjoint_deterministic_and_follow_the_crc_rule():
    train = prompts(CFG, "train", 300, seed=5)
    heldout = prompts(CFG, "heldout", 100, seed=5)
    assert len(set(train)) == 300 and len(set(heldout)) == 100 and not set(train) & set(heldout)
    assert all(zlib.crc32(p.encode()) % CFG.heldout_every == 0 for p in heldout)
    assert all(zlib.crc32(p.encode()) % CFG.heldout_every != 0 for p in train)
    assert all(parse(p.split()) is not None for p in train + heldout)
    assert prompts(CFG, "train", 300, seed=5) == train
    assert prompts(CFG, "train", 300, seed=6) != train
    assert prompts(CFG, "train", 100, seed=5) == train[:100]  # draw order: a prefix


def test_prompts_refuses_the_unachievable():
    # with no adjectives and no "and" the language has 2·8·6·2·8 = 1536 sentences, ~1/5 of them held out
    tiny = LanguageConfig(p_adjectives=(1.0, 0.0, 0.0), p_and=0.0)
    assert len(prompts(tiny, "heldout", 200, seed=0)) == 200
    with pytest.raises(ConfigError, match="distinct"):
        prompts(tiny, "heldout", 400, seed=0)
    with pytest.raises(ConfigError, match="split"):
        prompts(CFG, "test", 3, seed=0)


def test_documents_are_deterministic_and_keep_their_topic():
    docs = documents(CFG, 1500, seed=2)
    assert docs == documents(CFG, 1500, seed=2) and docs != documents(CFG, 1500, seed=3)
    counts, kept, pairs = [], 0, 0
    for d in docs:
        words = d.split()
        assert "[" not in d and d == " ".join(words)
        sentences, start = [], 0
        for i, w in enumerate(words):
            if w == ".":
                sentences.append(words[start:i + 1])
                start = i + 1
        assert start == len(words) and all(parse(s) is not None for s in sentences)
        counts.append(len(sentences))
        for a, b in zip(sentences, sentences[1:]):
            kept += subject_of(a) == subject_of(b)
            pairs += 1
    assert set(counts) == {1, 2, 3, 4}
    # P(keep) = p_topic + (1 - p_topic) / 8 = 0.5625; ~2200 pairs, sd ~ 0.011
    assert abs(kept / pairs - 0.5625) < 0.05


@pytest.mark.parametrize("kwargs", [
    dict(p_adjectives=(0.5, 0.5, 0.5)), dict(p_adjectives=(0.5, 0.5)), dict(p_sentiment=(1.2, -0.1, -0.1)),
    dict(p_and=1.5), dict(p_topic=-0.1), dict(sft_p_topic=2.0), dict(heldout_every=1), dict(heldout_every=2.5),
])
def test_config_validation(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ConfigError, match=f"LanguageConfig.{name}"):
        LanguageConfig(**kwargs)


# ------------------------------------------------------------------------------------------------ tokenizer


def test_tokenizer_ids_follow_vocab_and_round_trip():
    tok = build_tokenizer()
    assert len(tok) == len(VOCAB) and tok.get_vocab() == {w: i for i, w in enumerate(VOCAB)}
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert tok.padding_side == "right"
    texts = [p for p, r in sft_pairs(CFG, 30, seed=1)] + documents(CFG, 30, seed=1)
    texts += [r + " [EOS]" for _, r in sft_pairs(CFG, 30, seed=1)] + ["the cat . [EOS] [PAD] [PAD]", "[BOS] a dog ."]
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert ids == [VOCAB.index(w) for w in text.split()]  # one token per word, nothing added
        assert tok.decode(ids) == text
    assert tok("the zebra .", add_special_tokens=False)["input_ids"] == [VOCAB.index("the"), 3, VOCAB.index(".")]
    assert tok.decode([VOCAB.index("cat"), 2, 0], skip_special_tokens=True) == "cat"


def test_tokenizer_survives_save_and_load(tmp_path):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tok = build_tokenizer()
    tok.save_pretrained(tmp_path)
    text = "the good cat sees a bad dog and the fox . [EOS] [PAD]"
    want = tok(text, add_special_tokens=False)["input_ids"]
    for loaded in (AutoTokenizer.from_pretrained(tmp_path), PreTrainedTokenizerFast.from_pretrained(tmp_path)):
        assert loaded(text, add_special_tokens=False)["input_ids"] == want
        assert loaded.get_vocab() == tok.get_vocab() and loaded.decode(want) == text
        assert (loaded.pad_token, loaded.bos_token, loaded.eos_token, loaded.unk_token) == lang.SPECIALS
        assert loaded.padding_side == "right"
        batch = loaded(["the cat .", "a good dog sees the fox ."], padding=True, add_special_tokens=False)
        assert batch["input_ids"][0][-1] == 0 and batch["attention_mask"][0] == [1, 1, 1, 0, 0, 0, 0]
