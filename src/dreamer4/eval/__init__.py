"""Evaluation: real-environment success tables and scores."""
