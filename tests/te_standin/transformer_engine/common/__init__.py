"""transformer_engine.common: only the `recipe` module, which megatron-core subclasses at import."""

from . import recipe  # noqa: F401
