"""Evaluation (SPEC §7): summaries, the alignment-tax benchmark, generation patterns, the report."""
