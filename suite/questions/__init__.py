"""The static registry of questions and their claims. IDs are stable; grep finds every claim here."""

from __future__ import annotations

from algorithms.config import unknown
from suite.claims import Claim
from suite.profiles import PROFILES, check_profile
from suite.questions.atari import AtariDivergence, AtariMemory, AtariTrXLFails, AtariVMPOvsPPO
from suite.questions.bandits import BanditsKL, BanditsPMPO, BanditsTemperature
from suite.questions.base import Question
from suite.questions.control_ac import ControlDPO, ControlOffline, ControlPMPO, ControlPMPOKL, ControlVIREL
from suite.questions.control_onpolicy import ControlGEMPIVariants, ControlTemperature, ControlVMPOvsPPO
from suite.questions.lm import LMDAR, LMPMPO, LMSFT, LMDropout, LMDropoutCompatible, LMRewardHacking, LMTemperature
from suite.questions.lm_gro import LMGRO
from suite.questions.lm_groups import LMMaxMin
from suite.questions.theory import Theory

QUESTIONS: dict[str, Question] = {q.name: q for q in (BanditsPMPO(), BanditsKL(), BanditsTemperature(), Theory(),
                                                         ControlVMPOvsPPO(), ControlTemperature(), ControlGEMPIVariants(),
                                                         ControlPMPO(), ControlDPO(), ControlPMPOKL(), ControlOffline(), ControlVIREL(),
                                                         AtariVMPOvsPPO(), AtariDivergence(), AtariTrXLFails(), AtariMemory(),
                                                         LMTemperature(), LMDropout(), LMDropoutCompatible(), LMPMPO(),
                                                         LMRewardHacking(), LMDAR(), LMMaxMin(), LMGRO(), LMSFT())}
CLAIMS: dict[str, tuple[Question, Claim]] = {c.id: (q, c) for q in QUESTIONS.values() for c in q.claims}


def get_question(name: str) -> Question:
    """A question by its name, or by the ID of one of its claims (`B3` -> `bandits-kl`)."""
    if name in QUESTIONS:
        return QUESTIONS[name]
    if name.upper() in CLAIMS:
        return CLAIMS[name.upper()][0]
    raise unknown("question", name, [*QUESTIONS, *CLAIMS])


__all__ = ["CLAIMS", "PROFILES", "QUESTIONS", "Question", "check_profile", "get_question"]
