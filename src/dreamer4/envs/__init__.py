"""Real environments used to record gameplay and to evaluate agents."""
