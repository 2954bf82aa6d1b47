"""The payment service: tokenizes cards, charges orders and refunds or voids cancelled ones."""
