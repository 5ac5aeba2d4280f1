"""Pipeline stages, one module each, registered by type name in ``STAGES``."""

from compress.stages.base import (
    STAGES,
    StageConfig,
    StageContext,
    StageInput,
    StageResult,
    StageSpec,
    load_stages,
)

__all__ = [
    "STAGES",
    "StageConfig",
    "StageContext",
    "StageInput",
    "StageResult",
    "StageSpec",
    "load_stages",
]
