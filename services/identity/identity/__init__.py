"""The identity service: customers sign up and log in, operators and machine clients hold
credentials of their own, and every access token it issues is a signed JWT the other services
verify by themselves (sagakit.auth). A bounded context of its own, like eShop's Identity.API:
its own database (customers, clients), its own keys, and nothing it owns read by anyone else."""
