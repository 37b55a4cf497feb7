"""The comparison of the debiasing baselines (issue #15): report.py renders the paper's tables and plots."""
