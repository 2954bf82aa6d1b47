"""The production service: the kitchen line. Owns stock and tickets, kept in Redis."""
