"""Contrastive fine-tuning (SPEC §3-§5): model, loss, batching, the Ray Train loop and trainer."""
