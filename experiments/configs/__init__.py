"""Hydra config package: lets `portraitlab-*` console scripts find these configs as pkg://experiments.configs."""
