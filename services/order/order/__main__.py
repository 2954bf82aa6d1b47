"""``python -m order``: the order service's one entry point (native and compose mode alike)."""

from order.app import settings
from sagakit.runtime import serve

serve("order.app:app", settings, "order")
