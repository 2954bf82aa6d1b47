"""The order service: owns orders, the menu and the saga state machine."""
