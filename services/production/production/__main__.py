"""``python -m production``: the kitchen's one entry point (native and compose alike)."""

from production.settings import ProductionSettings
from sagakit.runtime import serve

serve("production.app:build", ProductionSettings(), "production")
