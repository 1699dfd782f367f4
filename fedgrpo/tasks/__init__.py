"""Task domains, prompts and rewards for fedgrpo.

* :mod:`fedgrpo.tasks.domains` -- named reasoning-gym domains and deterministic question sets.
* :mod:`fedgrpo.tasks.prompts` -- the user message and answer extraction.
* :mod:`fedgrpo.tasks.scoring` -- the reward a client gives a candidate answer.

Everything here is pure Python over reasoning-gym; no models are loaded.
"""

from .domains import (
    DOMAINS,
    Domain,
    LabelledQuestion,
    Question,
    build_questions,
    dataset_seed,
    get_dataset,
    get_domain,
    index_by_id,
    known_domains,
    question_id,
    unlabelled,
)
from .prompts import INSTRUCTION, PromptFormat, canonical_number, extract_answer, is_concise, user_message
from .scoring import (
    CORRECT_THRESHOLD,
    CORRECT_WEIGHT,
    FORMAT_WEIGHT,
    REWARD_MAX,
    REWARD_MIN,
    answer_score,
    is_correct,
    score_completion,
)

__all__ = [
    "DOMAINS",
    "Domain",
    "LabelledQuestion",
    "Question",
    "build_questions",
    "dataset_seed",
    "get_dataset",
    "get_domain",
    "known_domains",
    "index_by_id",
    "question_id",
    "unlabelled",
    "INSTRUCTION",
    "PromptFormat",
    "canonical_number",
    "extract_answer",
    "is_concise",
    "user_message",
    "CORRECT_THRESHOLD",
    "CORRECT_WEIGHT",
    "FORMAT_WEIGHT",
    "REWARD_MAX",
    "REWARD_MIN",
    "answer_score",
    "is_correct",
    "score_completion",
]
