"""The ACT policy: model, its own config and normalisation, checkpoint files.

``from tune_app.policy import load_policy`` loads a checkpoint for inference (no Ray needed).
"""


def __getattr__(name: str):
    if name == "load_policy":
        # deferred: torch, and tune_app.config imports this package (for ModelConfig)
        from tune_app.policy.checkpoint import load_policy

        return load_policy
    raise AttributeError(f"module 'tune_app.policy' has no attribute {name!r}")
