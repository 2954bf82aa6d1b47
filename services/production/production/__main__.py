"""``python -m production``: the production service's one entry point (native and compose mode)."""

from production.app import settings
from sagakit.runtime import serve

serve("production.app:app", settings, "production")
