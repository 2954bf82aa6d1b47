"""How saga-shop is started: `native` runs it as local processes (compose is docker-compose.yml)."""
