"""emotion: context-aware emotion recognition (head, body and scene) at scale.

Library code lives here and imports neither Ray nor Hydra; the Ray glue is in
``emotion.pipelines`` and the Hydra entry points in ``jobs/``.
"""

__version__ = "0.1.0"
