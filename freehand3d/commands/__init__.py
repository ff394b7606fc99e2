"""CLI command modules. Each defines ``register(app)`` and imports heavy modules inside commands."""
