"""``python -m payment``: the payment service's one entry point (native and compose mode alike)."""

from payment.settings import PaymentSettings
from sagakit.runtime import serve

serve("payment.app:build", PaymentSettings(), "payment")
