# Marks sql/ as the package trr_assets.sql (see pyproject.toml) so that the
# migrations and named queries ship inside an installed wheel.
