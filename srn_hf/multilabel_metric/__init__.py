"""The `evaluate` module of srn_hf's multi-label metrics: `evaluate.load(srn_hf.metrics.EVALUATE_MODULE_PATH)`."""
