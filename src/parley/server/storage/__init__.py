"""Storage: SQLAlchemy engines, migrations, one store per record kind. The only place with SQL."""
