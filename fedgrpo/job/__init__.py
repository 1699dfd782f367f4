"""The main job (`fedgrpo run`): a whole federation on this machine, driven
through the orchestrator's public API like any other system would."""
