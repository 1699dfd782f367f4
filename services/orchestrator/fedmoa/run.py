"""One parameter-exchange run (fedmoa, fedavg_lora): rounds of local training, combined on the server.

Each step is a round. The server offers the global LoRA adapter (version
``step - 1``) to the live joined clients that train locally (among the run's
``reward_clients`` when it names them); they start from it, run local GRPO
on their own questions and send their adapters back (``exchange.py``). The
round closes when all answered or at its deadline: with at least its quorum
of accepted adapters it is applied, otherwise it is tried again (at most
``round_attempts`` times) and nothing is applied. Applying: fedmoa scores
each accepted adapter on the server's validation questions (the auxiliary
set, greedy, with the run's engine) and weights it by task coverage x
accuracy; fedavg_lora weights by rollouts trained. The combination
(``aggregation.aggregate``, each client's update clipped to
``CLIP_FACTOR`` x the other clients' median) becomes version ``step``: an adapter
folder the engine serves and the run's metrics record (``RoundMetrics``).

Versions live in ``<run dir>/adapters/v<N>`` (adapter_config.json and
adapter_model.safetensors, written whole or not at all); a resumed run goes
on from the last recorded version.
"""

from __future__ import annotations

import logging
import math
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from fedgrpo.adapter_transfer import sha256
from fedgrpo.fedmoa_objectives import OBJECTIVES
from fedgrpo.models._atomic import discard, publish_replace, staging_dir
from fedgrpo.models.adapters import ADAPTER_CONFIG, LoraSettings, lora_model
from fedgrpo.tasks import INSTRUCTION, LabelledQuestion, PromptFormat
from fedgrpo.tasks.scoring import is_correct
from fedgrpo.v1 import common_pb2
from fedgrpo.v1 import federation_pb2 as fpb
from fedgrpo.v1 import orchestrator_pb2 as pb

from ..rollout.engine import SamplingSettings
from ..runs import RunCancelled
from ..spec import RunConfig
from .aggregation import aggregate, fedavg_weights, task_accuracy_weights, task_coverage
from .exchange import AdapterExchange, Submission
from .rounds import Rounds

log = logging.getLogger(__name__)

WEIGHTS_FILE = "adapter_model.safetensors"
CLIP_FACTOR = 3.0  # no client's update may exceed 3x the median norm of the others'


class RoundsFailed(RuntimeError):
    """A round stayed below its quorum in every attempt."""


def version_dir(run_dir: Path, version: int) -> Path:
    return run_dir / "adapters" / f"v{version}"


def publish_adapter(folder: Path, tensors: dict[str, torch.Tensor], config_from: Path) -> Path:
    """Write an adapter version (the config of ``config_from``, these weights), whole or not at all."""
    staged = staging_dir(folder)
    try:
        staged.mkdir(parents=True, exist_ok=True)
        shutil.copy(config_from / ADAPTER_CONFIG, staged / ADAPTER_CONFIG)
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(staged / WEIGHTS_FILE))
        return publish_replace(staged, folder)
    except BaseException:
        discard(staged)
        raise


def initial_adapter(base_dir: Path, folder: Path, cfg: RunConfig) -> Path:
    """Version 0: a fresh LoRA adapter on the base (B = 0, so it starts equal to the base), seeded by the run."""
    from transformers import AutoModelForCausalLM

    from fedgrpo.models.adapters import save_adapter

    torch.manual_seed(cfg.seed)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = lora_model(base, LoraSettings(cfg.exchange.lora_rank, cfg.exchange.lora_alpha))
    folder.parent.mkdir(parents=True, exist_ok=True)
    return save_adapter(model, folder)


def correct(item: LabelledQuestion, completion: str) -> bool:
    """Whether a validation answer is right: the domain's own check, else the label's exact final answer."""
    try:
        return is_correct(item.domain, item.entry, completion)
    except KeyError:
        from fedgrpo.data.checkers import exact

        return exact(completion, item.answer)


class ParameterExchangeRun:
    """Runs the rounds of one parameter-exchange run (module docstring)."""

    def __init__(
        self, store, clients, policy, exchange: AdapterExchange, validation: Sequence[LabelledQuestion],  # noqa: ANN001
        client_wait_seconds: float, cancelled: Callable[[], bool],
        prompt: Callable[[str], PromptFormat],
    ) -> None:
        self.store, self.clients, self.policy, self.exchange = store, clients, policy, exchange
        self.validation, self.client_wait_seconds = list(validation), client_wait_seconds
        self.cancelled, self.prompt = cancelled, prompt
        self.stop = threading.Event()

    # ---- the run -----------------------------------------------------------
    def execute(self, run_id: str, cfg: RunConfig, resume: bool) -> common_pb2.PolicyVersion:
        self.run_id = run_id
        run_dir = self.store.run_dir(run_id)
        done = self.store.completed_steps(run_id)
        version = done[-1] if done and resume else 0
        if version == 0:
            initial_adapter(self.policy.base_dir, version_dir(run_dir, 0), cfg)
        current = self._version(run_id, run_dir, version)
        self._serve(current)
        rounds = Rounds(run_id)
        try:
            for step in range(version + 1, cfg.steps + 1):
                if self.cancelled():
                    raise RunCancelled()
                current = self._round(run_id, run_dir, cfg, step, current, rounds)
        finally:
            self.exchange.withdraw()
        return current

    def _serve(self, version: common_pb2.PolicyVersion) -> float:
        """The engine serves ``version`` (an adapter on this orchestrator's disk, whatever --weights-transfer)."""
        started = time.monotonic()
        with self.policy.lock:
            self.policy.engine.load_weights(Path(version.weights_path))
            self.policy.loaded.CopyFrom(version)
        return time.monotonic() - started

    def _version(self, run_id: str, run_dir: Path, version: int) -> common_pb2.PolicyVersion:
        return common_pb2.PolicyVersion(run_id=run_id, version=version, last_step=version,
                                        weights_path=str(version_dir(run_dir, version)))

    def _participants(self, cfg: RunConfig) -> list:
        """The live joined clients that train locally (among the run's), waiting a while for some."""
        end = time.monotonic() + self.client_wait_seconds
        while True:
            usable = [
                c for c in self.clients.clients
                if c.joined and c.healthy and c.transport.description.local_training
                and (not cfg.reward_clients or c.name in cfg.reward_clients)
            ]
            needed = cfg.exchange.round_quorum or 1
            if len(usable) >= needed or time.monotonic() >= end:
                break
            time.sleep(0.5)
        if len(usable) < needed:
            raise RoundsFailed(
                f"{len(usable)} live reward client(s) train locally"
                + (" among reward_clients" if cfg.reward_clients else "")
                + f", the round needs {needed}: start clients with --local-training (waited "
                f"{self.client_wait_seconds:.0f}s)"
            )
        return sorted(usable, key=lambda c: c.name)

    def _message(self, cfg: RunConfig, step: int, round_id: str, attempt: int, payload: bytes,
                 digest: str) -> fpb.TrainingRound:
        fmt = self.prompt(cfg.dataset)
        return fpb.TrainingRound(
            round_id=round_id, round=step, attempt=attempt, deadline_seconds=cfg.exchange.round_deadline_seconds,
            base_model=cfg.model, adapter_bytes=len(payload), adapter_sha256=digest,
            lora_rank=cfg.exchange.lora_rank, lora_alpha=cfg.exchange.lora_alpha,
            local_steps=cfg.exchange.local_steps, questions_per_step=cfg.questions_per_step,
            candidates_per_question=cfg.candidates_per_question, max_tokens=cfg.max_tokens,
            temperature=cfg.temperature, top_p=cfg.top_p, learning_rate=cfg.learning_rate,
            epsilon_low=cfg.epsilon_low, epsilon_high=cfg.epsilon_high, objectives=OBJECTIVES,
            objective_weights=cfg.exchange.objective_weights,
            objective_learning_rate=cfg.exchange.objective_learning_rate if cfg.algorithm == "fedmoa" else 0.0,
            instruction=fmt.instruction, system_prompt=fmt.system or "",
            tasks=cfg.tasks, run_id=self.run_id,
        )

    def _round(self, run_id: str, run_dir: Path, cfg: RunConfig, step: int, current: common_pb2.PolicyVersion,
               rounds: Rounds) -> common_pb2.PolicyVersion:
        started = time.monotonic()
        folder = Path(current.weights_path)
        payload = (folder / WEIGHTS_FILE).read_bytes()
        digest = sha256(payload)
        for attempt in range(1, cfg.exchange.round_attempts + 1):
            participants = self._participants(cfg)
            names = [c.name for c in participants]
            quorum = cfg.exchange.round_quorum or math.ceil(len(names) / 2)
            quorum = min(quorum, len(names))
            opened = rounds.open(step, names, cfg.exchange.round_deadline_seconds, quorum)
            message = self._message(cfg, step, opened.round_id, opened.attempt, payload, digest)
            self.exchange.offer(rounds, message, payload, names, opened.deadline)
            log.info("run %s round %d attempt %d: offered to %s (quorum %d, %d adapter bytes)", run_id, step,
                     attempt, ",".join(names), quorum, len(payload))
            live = self.clients.by_name()
            rounds.wait(opened.round_id, stop=lambda: self.stop.is_set() or self.cancelled(),
                        gone=lambda: {n for n in names if n not in live or not live[n].healthy})
            outcome = rounds.close(opened.round_id)
            if self.cancelled():  # at once, not at the round's deadline: nothing of this round is applied
                raise RunCancelled()
            if outcome.complete:
                break
            log.warning("run %s round %d attempt %d: %d adapter(s) accepted, quorum %d; missing %s, rejected %s: "
                        "trying the round again, nothing applied", run_id, step, attempt, len(outcome.accepted),
                        quorum, sorted(outcome.missing) or "none", outcome.rejected or "none")
        else:
            raise RoundsFailed(
                f"round {step}: below its quorum in all {cfg.exchange.round_attempts} attempts (last: "
                f"{len(outcome.accepted)} accepted of {len(names)}, quorum {quorum}; missing "
                f"{sorted(outcome.missing) or 'none'}, rejected {outcome.rejected or 'none'})"
            )
        accepted: dict[str, Submission] = dict(sorted(outcome.accepted.items()))
        global_adapter = load_file(str(folder / WEIGHTS_FILE))
        m = pb.StepMetrics(step=step, policy_version=current.version)
        r = m.round
        r.attempts = attempt
        r.participants.extend(names)
        r.missing.extend(sorted(outcome.missing))
        for name, why in outcome.rejected.items():
            r.rejected_by_client[name] = why[:500]
        for name, sub in accepted.items():
            r.local_reward_by_client[name] = sub.header.mean_reward
            r.objective_weights_by_client[name].weights.update(dict(sub.header.objective_weights))
        for name, count in self.exchange.bytes_down.get(opened.round_id, {}).items():
            r.adapter_bytes_down_by_client[name] = count
        for name, count in self.exchange.bytes_up.get(opened.round_id, {}).items():
            r.adapter_bytes_up_by_client[name] = count
        by_name = {c.name: c for c in participants}
        if cfg.algorithm == "fedmoa":
            accuracy = self._validate(run_dir, folder, cfg, accepted, current)
            for name, value in accuracy.items():
                r.validation_accuracy_by_client[name] = value
            domains = [item.domain for item in self.validation] or list(cfg.tasks)
            coverage = [task_coverage(by_name[n].domains, domains) for n in accepted]
            weights = task_accuracy_weights(coverage, [accuracy.get(n, 0.0) for n in accepted],
                                            cfg.exchange.accuracy_temperature)
        else:
            asked = cfg.exchange.local_steps * cfg.questions_per_step * cfg.candidates_per_question
            weights = fedavg_weights([s.header.rollouts for s in accepted.values()], asked)
        for name, w in zip(accepted, weights):
            r.aggregation_weight_by_client[name] = w
        combined = aggregate(global_adapter, [s.tensors for s in accepted.values()], weights, CLIP_FACTOR)
        publish_adapter(version_dir(run_dir, step), combined, folder)
        new = self._version(run_id, run_dir, step)
        m.sync_seconds = self._serve(new)
        rewards = [s.header.mean_reward for s in accepted.values()]
        m.reward_mean = sum(rewards) / len(rewards)
        m.completions = sum(min(s.header.rollouts, 10**6) for s in accepted.values())
        m.step_seconds = time.monotonic() - started
        self.store.add_step(run_id, m, new)
        self.store.update(run_id, policy=new)
        log.info("run %s round %d: applied %d adapter(s) with weights %s", run_id, step, len(accepted),
                 {n: round(w, 3) for n, w in zip(accepted, weights)})
        return new

    # ---- fedmoa: accuracy on the validation questions ----------------------------------------------------------
    def _validate(self, run_dir: Path, global_folder: Path, cfg: RunConfig, accepted: dict[str, Submission],
                  current: common_pb2.PolicyVersion) -> dict[str, float]:
        if not self.validation:
            log.warning("fedmoa: this orchestrator has no validation questions (start it with --confidence-graph "
                        "and an auxiliary set): adapters are weighted by task coverage alone")
            return {}
        items = spread(self.validation, cfg.exchange.validation_questions)
        fmt = self.prompt(cfg.dataset)
        prompts = [self.policy.prompt_ids(fmt.user_text(item.text), fmt.system) for item in items]
        greedy = SamplingSettings(n=1, temperature=0.0, top_p=1.0, max_tokens=cfg.max_tokens, seed=cfg.seed)
        scratch = run_dir / "adapters" / "validation"
        accuracy = {}
        try:
            for name, sub in accepted.items():
                publish_adapter(scratch, sub.tensors, global_folder)
                with self.policy.lock:
                    self.policy.engine.load_weights(scratch)
                    groups = self.policy.engine.generate(prompts, greedy)
                right = sum(correct(item, g[0].text) for item, g in zip(items, groups))
                accuracy[name] = right / len(items)
        finally:
            with self.policy.lock:  # the engine serves the global version again
                self.policy.engine.load_weights(Path(current.weights_path))
            shutil.rmtree(scratch, ignore_errors=True)
        return accuracy


def spread(items: Sequence[LabelledQuestion], count: int) -> list[LabelledQuestion]:
    """``count`` items taken from every domain in turn (the auxiliary set lists its domains one after another)."""
    by_domain: dict[str, list[LabelledQuestion]] = {}
    for item in items:
        by_domain.setdefault(item.domain, []).append(item)
    queues = list(by_domain.values())
    out: list[LabelledQuestion] = []
    while len(out) < count and any(queues):
        for queue in queues:
            if queue and len(out) < count:
                out.append(queue.pop(0))
    return out


def dataset_prompt(bank) -> Callable[[str], PromptFormat]:  # noqa: ANN001
    """How a run's dataset puts questions to the policy (the built-in instruction without a dataset)."""
    def prompt(dataset: str) -> PromptFormat:
        return bank.datasets[dataset].prompt_format if dataset else PromptFormat(INSTRUCTION)
    return prompt

