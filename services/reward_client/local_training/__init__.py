"""A reward client's local GRPO training for parameter-exchange runs (docs/fedmoa.md)."""
