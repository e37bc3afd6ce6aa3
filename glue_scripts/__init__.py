"""GLUE fine-tuning with `KSAMTrainer`: data loading, metrics and the `run_glue.py` runner."""
