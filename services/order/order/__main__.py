"""``python -m order``: the order service's one entry point (native and compose mode alike)."""

from order.settings import OrderSettings
from sagakit.runtime import serve

serve("order.app:build", OrderSettings(), "order")
