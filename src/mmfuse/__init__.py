"""mmfuse: reproducible multimodal (image + audio + text) fusion pipelines."""

import os

# Telemetry stays off wherever mmfuse is imported, before any tool reads these.
for _name, _value in {
    "DVC_NO_ANALYTICS": "1",
    "BENTOML_DO_NOT_TRACK": "true",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}.items():
    os.environ.setdefault(_name, _value)

__version__ = "0.1.0"
