"""A client's local GRPO on its own questions: one federated round at a time (FedMOA, FedAvg-LoRA).

Contract
--------
``LocalTrainer(policy_dir, state_dir, questions, score)``: ``policy_dir`` is
the base policy the client holds (the same model the orchestrator serves),
``questions`` its own labelled rows, ``score(row, replies) -> rewards`` its
own evaluator (labels + checker, or reward model) with its reward range.
``train_round(round, global_adapter)`` starts from the global adapter
(``PolicyTrainer.replace_adapter``: a fresh optimizer each round) and runs
``round.local_steps`` GRPO steps with the project's trainer and loss: each
step samples ``questions_per_step`` of its questions of the round's tasks,
``candidates_per_question`` replies each (transformers ``generate``), scores
them on every objective (``objectives.py``: the round's, then the client's
own ``added`` ones, which start at ``added_weight`` each while the round's
share the rest in their proportions), rewards them with the current
objective weights, and trains on the group-relative advantages. With
``objective_learning_rate > 0`` (fedmoa) the weights then take one
hypergradient step (``objective_weights.py``); they persist across rounds.
Returns the trained adapter's tensors (CPU), the rollouts trained on, the
final objective weights and the mean reward. Question order and sampling are
seeded by the client's own name and ``seed``, the run, round and step: no two
clients share a generator, and nothing of it comes from the server.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from fedgrpo.data.files import Row
from fedgrpo.models import chat_prompt_ids
from fedgrpo.models.adapters import LoraSettings, adapter_state
from fedgrpo.models.generation import Completion, sample
from fedgrpo.tasks import PromptFormat
from fedgrpo.v1 import federation_pb2 as fpb

from ...policy_trainer.batching import Sample
from ...policy_trainer.loss import LossSettings
from ...policy_trainer.trainer import OptimizerConfig, PolicyTrainer
from .objective_weights import ObjectiveWeights, hypergradient, objective_advantages, update_weights, weighted_reward
from .objectives import OBJECTIVES, PRIMARY, AddedObjective, score_objectives

log = logging.getLogger(__name__)

Score = Callable[[Row, list[str]], list[float]]


@dataclass(frozen=True)
class RoundResult:
    adapter: dict[str, torch.Tensor]
    rollouts: int
    objective_weights: dict[str, float]
    mean_reward: float
    seconds: float


class LocalTrainer:
    def __init__(
        self, policy_dir: Path, state_dir: Path, questions: Sequence[Row], score: Score,
        reward_range: tuple[float, float] = (0.0, 1.0), seed: int = 0, device: str = "cpu", dtype: str = "float32",
        name: str = "", added: Sequence[AddedObjective] = (), added_weight: float = 0.1,
    ) -> None:
        if not questions:
            raise ValueError("local training needs this client's own labelled questions (labels or domains)")
        self.policy_dir, self.state_dir = Path(policy_dir), Path(state_dir)
        self.questions, self.score, self.reward_range = list(questions), score, reward_range
        self.seed, self.device, self.dtype, self.name = seed, device, dtype, name
        if added and not 0 < added_weight * len(added) < 1:
            raise ValueError(f"added_weight: {len(added)} added objectives x {added_weight} must be in (0, 1)")
        self.added, self.added_weight = list(added), added_weight
        self.trainer: PolicyTrainer | None = None
        self.lora: LoraSettings | None = None
        self.config: OptimizerConfig | None = None
        self.weights: ObjectiveWeights | None = None
        self.weights_run = ""  # the run whose rounds adapted self.weights
        self.steps = 0  # the trainer's step counter, across rounds
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(self.policy_dir)

    def _trainer(self, r: fpb.TrainingRound) -> PolicyTrainer:
        lora = LoraSettings(r.lora_rank, r.lora_alpha)
        config = OptimizerConfig(
            learning_rate=r.learning_rate, temperature=r.temperature, updates_per_batch=1,
            loss=LossSettings(epsilon_low=r.epsilon_low, epsilon_high=r.epsilon_high),
        )
        if self.trainer is None or lora != self.lora or config != self.config:
            self.trainer = PolicyTrainer(self.policy_dir, self.state_dir, device=self.device, dtype=self.dtype,
                                         keep_snapshots=1, checkpoint_every=10**9, lora=lora)
            self.trainer.start("local", config, restart=True)
            self.lora, self.config, self.steps = lora, config, 0
        return self.trainer

    def _objective_weights(self, r: fpb.TrainingRound) -> ObjectiveWeights:
        """The round's initial weights in a run's first round (or when they stay fixed), else the adapted ones."""
        names = tuple(r.objectives)
        if names != OBJECTIVES:
            raise ValueError(f"objectives: this client scores {list(OBJECTIVES)}, the round asks {list(names)}")
        if self.weights is None or self.weights_run != r.run_id or r.objective_learning_rate == 0:
            # This client's own objectives start at added_weight each; the round's share the rest as it says.
            kept = 1 - self.added_weight * len(self.added)
            total = sum(r.objective_weights)
            self.weights = ObjectiveWeights.initial(
                names + tuple(a.name for a in self.added),
                [kept * w / total for w in r.objective_weights] + [self.added_weight] * len(self.added),
                min_weight=min(0.05, 0.5 / (len(names) + len(self.added))),
            )
            self.weights_run = r.run_id
        return self.weights

    def _pool(self, r: fpb.TrainingRound) -> list[Row]:
        wanted = set(r.tasks)
        pool = [q for q in self.questions if q.domain in wanted]
        return pool or self.questions

    def train_round(self, r: fpb.TrainingRound, global_adapter: dict[str, torch.Tensor]) -> RoundResult:
        started = time.monotonic()
        trainer = self._trainer(r)
        trainer.replace_adapter(global_adapter)
        weights = self._objective_weights(r)
        fmt = PromptFormat(instruction=r.instruction, system=r.system_prompt or None)
        pool = self._pool(r)
        rewards_seen: list[float] = []
        for local_step in range(1, r.local_steps + 1):
            rng = random.Random(f"{self.name}:{self.seed}:{r.run_id}:{r.round}:{r.attempt}:{local_step}")
            rows = [rng.choice(pool) for _ in range(r.questions_per_step)]
            prompts = [chat_prompt_ids(self.tokenizer, fmt.user_text(q.question), q.system or fmt.system)
                       for q in rows]
            replies = self._generate(trainer, prompts, r, rng.randrange(2**31))
            samples, groups = [], []
            for row, prompt, group in zip(rows, prompts, replies):
                texts = [c.text for c in group]
                rewards = self.score(row, texts)
                scores = [score_objectives(c.text, reward, len(c.token_ids), r.max_tokens, *self.reward_range)
                          for c, reward in zip(group, rewards)]
                for added in self.added:
                    for candidate, extra in zip(scores, added.score(row.domain or "", row.question, texts)):
                        candidate.append(extra)
                groups.append(scores)
                combined = [weighted_reward(s, weights.weights) for s in scores]
                rewards_seen += [x for x in combined if math.isfinite(x)]
                advantages = [a[0] for a in objective_advantages([[x] for x in combined])]
                samples += [Sample(prompt, c.token_ids, None, adv) for c, adv in zip(group, advantages) if c.token_ids]
            self.steps += 1
            if samples:
                trainer.train(self.steps, trainer.version, samples, r.max_tokens)
            if r.objective_learning_rate > 0:
                weights = update_weights(weights, hypergradient(groups, PRIMARY), r.objective_learning_rate)
        self.weights = weights
        assert trainer.model is not None
        adapter = {k: v.detach().float().cpu().clone() for k, v in adapter_state(trainer.model).items()}
        return RoundResult(
            adapter, r.local_steps * r.questions_per_step * r.candidates_per_question, weights.as_dict(),
            sum(rewards_seen) / len(rewards_seen) if rewards_seen else 0.0, time.monotonic() - started,
        )

    def _generate(self, trainer: PolicyTrainer, prompts: list[list[int]], r: fpb.TrainingRound,
                  seed: int) -> list[list[Completion]]:
        model = trainer.model
        assert model is not None
        model.eval()
        try:
            return sample(model, self.tokenizer, prompts, n=r.candidates_per_question, temperature=r.temperature,
                          top_p=r.top_p, max_tokens=r.max_tokens, seed=seed, logprobs=False)
        finally:
            model.train()
