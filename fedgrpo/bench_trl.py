"""`fedgrpo bench`'s side-by-side: the main job's workload through TRL's ``GRPOTrainer``, in this process.

The tool most users would pick instead, on the same machine and workload as
the bench's fedgrpo run (``examples/reasoning/federation.toml``): the same
base model, questions of the same domains (the main job's organisations'
labelled questions, pooled: TRL has one reward function where fedgrpo has
experts), the same reward (the ``reasoning-gym`` checker on the label), 4
questions x G = 8 completions per step, the same completion length, learning
rate (constant), loss type, clipping (0.2/0.3), temperature, top-p, gradient
clip, no KL term and one update per batch, float32 on the CPU, no gradient
checkpointing (fedgrpo's default), generation with transformers
(TRL's default; its vLLM mode needs a GPU server or colocated CUDA). Both
start from the base policy and run the same number of steps (completions
shorten as a policy learns). Each step is timed from TRL's step-begin to
step-end callbacks, generation included.

``trl_step_seconds(model_dir, steps, settings)`` returns each step's seconds.
TRL is already a dependency (its RewardTrainer trains reward models).
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
import time
from pathlib import Path

QUESTIONS_PER_STEP = 4
GENERATIONS = 8


def labelled_rows(federation_file: Path) -> tuple[list[dict], str]:
    """The main job's organisations' labelled rows (made by `fedgrpo datasets make` if missing) and the
    server's instruction for the dataset."""
    from fedgrpo.job.federation_file import load_federation, make_files

    federation = load_federation(federation_file)
    make_files(federation, say=lambda _: None)
    rows: dict[str, dict] = {}
    for client in federation.clients:
        if client.labels is None:
            continue
        for line in Path(client.labels).read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                rows.setdefault(row["question"], row)
    instruction = next(iter(federation.server.dataset_instruction.values()), "")
    return list(rows.values()), instruction


def trl_step_seconds(model_dir: Path, steps: int, max_tokens: int, learning_rate: float, seed: int = 0) -> list[float]:
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from fedgrpo.data.checkers import load_checker
    from fedgrpo.job.federation_file import DEFAULT_FEDERATION

    rows, instruction = labelled_rows(DEFAULT_FEDERATION)
    random.Random(seed).shuffle(rows)
    rows = rows[: QUESTIONS_PER_STEP * steps]
    checker = load_checker("reasoning-gym")
    table = datasets.Dataset.from_list([
        {"prompt": [{"role": "user", "content": f"{r['question']} {instruction}".strip()}], "answer": r["answer"],
         "domain": r.get("domain") or "", "metadata": r.get("metadata") or "{}", "question": r["question"]}
        for r in rows
    ])

    def reward(completions, answer, domain, metadata, question, **_):  # noqa: ANN001, ANN003
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        scores = [checker(t, a, question=q, domain=d, metadata=json.loads(m) if isinstance(m, str) else m)
                  for t, a, q, d, m in zip(texts, answer, question, domain, metadata)]
        return [0.0 if s != s else s for s in scores]  # NaN (cannot judge) counts as wrong

    seconds: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):  # noqa: ANN001, ANN003
            self.started = time.monotonic()

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN003
            seconds.append(time.monotonic() - self.started)

    scratch = Path(tempfile.mkdtemp(prefix="fedgrpo-bench-trl-"))
    try:
        config = GRPOConfig(
            output_dir=str(scratch), max_steps=steps, learning_rate=learning_rate, lr_scheduler_type="constant",
            per_device_train_batch_size=QUESTIONS_PER_STEP * GENERATIONS, num_generations=GENERATIONS,
            gradient_accumulation_steps=1, num_iterations=1, max_completion_length=max_tokens,
            loss_type="bnpo", epsilon=0.2, epsilon_high=0.3, beta=0.0, temperature=1.0, top_p=0.95,
            max_grad_norm=1.0, scale_rewards="group", use_cpu=True, bf16=False, gradient_checkpointing=False,
            logging_strategy="no", report_to="none", save_strategy="no", seed=seed, dataloader_num_workers=0,
            disable_tqdm=True,
        )
        torch.manual_seed(seed)
        trainer = GRPOTrainer(
            model=AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32),
            processing_class=AutoTokenizer.from_pretrained(model_dir, padding_side="left"),
            reward_funcs=reward, args=config, train_dataset=table, callbacks=[StepTimer()],
        )
        trainer.train()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return seconds
