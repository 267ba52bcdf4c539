"""GRPO vs MAPO over seeds (``mapo experiment compare``): run the arms, compare them, write the results document."""
