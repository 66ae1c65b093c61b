"""Adapters for the libraries around a model (lm-eval, ...). Each imports its client lazily:
importing neox never imports them."""
