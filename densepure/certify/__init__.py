"""Base classifiers, Cohen's CERTIFY/PREDICT, sequential certification and result files."""
