"""The LM family: online RLHF of small `transformers` causal LMs (`rlhf`), on the suite's synthetic grammar
(`language`, the fast task of the tests) or on real English (`english`: Shakespeare's speeches, a VADER gold reward).

- `tokens`: prompts, sampling with a KV cache, per-token log-probs and closed-form KLs computed in chunks;
- `models`: the cached artifacts (tokenizer, a GPT-2 pretrained and SFT'd by the suite, a Bradley–Terry reward model);
- `rlhf`: the loop every L question runs, and the family's registered tasks;
- `sft_check`: L8's check that SFT is the EM M-step.

Importing the package registers the family's tasks (`tasks.load_all` imports it like any task module).
"""

from tasks.lm import rlhf  # noqa: F401  registers the lm-* tasks
