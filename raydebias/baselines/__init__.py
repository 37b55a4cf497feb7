"""The six debiasing baselines of the paper's comparison (SPEC §7 "Baselines"), one pure, Ray-free file per
method, and the variant/intervention contract they share (base.py)."""
