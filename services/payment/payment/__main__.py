"""``python -m payment``: the payment service's one entry point (native and compose mode alike)."""

from payment.app import settings
from sagakit.runtime import serve

serve("payment.app:app", settings, "payment")
