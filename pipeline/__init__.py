"""Orchestration for the aae library: data, config, Ray Train/Tune runners, stages, tracking, CLI."""
