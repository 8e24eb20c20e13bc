"""Step 4: domain-adaptive pre-training (train.py)."""
