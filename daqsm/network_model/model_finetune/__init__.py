"""Step 5: per-dataset fine-tuning (train.py)."""
