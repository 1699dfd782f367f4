"""A client's own reward model (MoR): preference rows, and a reward model trained on them.

``preferences``: reading (question, chosen, rejected) files, and building them
from a client's private labels by sampling candidates with a local model.
``training``: `fedgrpo reward-model train`, a Bradley-Terry reward model
trained with TRL's ``RewardTrainer`` and written as a Hugging Face folder that
the reward client's ``--reward-model`` serves. ``cli``: the command.
"""
